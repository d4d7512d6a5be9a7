"""Beam search as one compiled `lax.while_loop`, after the Flax examples' design.

Each prompt is decoded once (`DecodeStep.init`), then its state is tiled to K beams. Every
step scores all K x V extensions, keeps the top 2K (enough that K of them do not end in EOS),
and splits them: candidates among the top K ending in EOS (or reaching the length limit)
compete for the K finished slots by the ranking score below, the rest for the K live slots by
their sum of scores. The decode state (KV cache, RNN carry, anything) is reordered by gathering
its leaves with the chosen beam indices, then stepped once with the new tokens. Leaves the step
never writes (an encoder's memory and cross-attention keys) are the same in every beam of a
prompt: they are held once per prompt and the step runs over the beams under `vmap`
(`lmfuse.decode.beam_state`). The loop runs in phases of growing cache size
(`lmfuse.decode.cache_phases`), so attention and the reordering read only about the written
prefix of a KV cache, not every slot up to the length limit.

With `no_repeat_ngram_size` n > 0, each live beam's extensions that would repeat an n-gram of
its own generated tokens get score -inf (`repeated_ngram_ban`, on the per-token scores after
log_softmax as in Hugging Face: the other tokens keep their log-probs). The beams' token
buffers are reordered with the state, so the ban always reads the hypothesis it extends.

Ranking score of a finished hypothesis, by `DecodeStep.monotone`:

* monotone (log-probs; shallow fusion with λ >= 0, β <= 0; every per-token score <= 0):
  sum / ((5 + length) / 6) ** alpha (GNMT; length counts EOS). The loop stops early once, for
  every prompt, the worst finished score beats the best score any live beam could still reach
  (its sum can only fall, so for alpha >= 0 the best case is at the length limit).
* non-monotone (density ratio, ILME, a negative weight or a positive length reward: per-token
  scores can be positive): the raw fused sum, which holds the fused step's per-token length
  reward β (`lmfuse.decode.fusion`), i.e. sum of weighted log-probs + β * length. `alpha` is
  ignored (`ranking_alpha`) and the loop runs to the length limit.

Why: the GNMT division is sign-dependent. Dividing a negative sum by a penalty that grows with
length raises it (longer hypotheses gain); dividing a positive sum lowers it (shorter ones
gain), so one alpha would lengthen some hypotheses and shorten others by the sign of their
fused scores. An additive reward is sign-invariant: adding c to every token's score is the
same as adding c to β, so the fusion terms' offset and the length preference are both set by
β, which the caller selects on validation (with 0 in its grid). It is also how density ratio
and ILME state their decoding score: the log-linear sum plus β|y|, unnormalised.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lmfuse.decode import beam_state, topk
from lmfuse.decode.cache_phases import FIRST_PHASE_TOKENS, grow_slots, init_in_phases
from lmfuse.decode.processors import (
    DecodeContext,
    Processor,
    SuppressTokens,
    apply_processors,
    repeated_ngram_ban,
)
from lmfuse.decode.step import Batch, DecodeStep
from lmfuse.tokens import EOS_ID, PAD_ID

# A large finite "minus infinity" (as in Flax): sums and ratios of it stay finite and ordered.
NEG_INF = -1.0e7


class BeamOutput(NamedTuple):
    """n-best list per prompt, best first: tokens [B, K, N] (PAD after EOS), scores [B, K]
    (the ranking score: GNMT-normalised for a monotone decoder, the raw fused sum otherwise; see
    the module docstring), logprobs [B, K] (sum of token scores), finished [B, K] bool."""

    tokens: jax.Array
    scores: jax.Array
    logprobs: jax.Array
    finished: jax.Array


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def ranking_alpha(decoder: DecodeStep, alpha: float) -> float:
    """The GNMT exponent beam search applies for `decoder`: `alpha` when its scores are
    monotone (all per-token scores <= 0), else 0, i.e. the raw fused sum (module docstring)."""
    return float(alpha) if decoder.monotone else 0.0


def tile_beams(tree: Any, beam_size: int) -> Any:
    """Repeats every leaf's rows K times in place ([B, ...] -> [B*K, ...]); 0-d leaves stay."""
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, beam_size, axis=0), tree)


def gather_beams(tree: Any, beam_indices: jax.Array, old_beams: int) -> Any:
    """Reorders prompt-major rows: leaf [B*old_K, ...] -> [B*K, ...] taking, for prompt b and
    new beam j, old beam `beam_indices[b, j]`. Works for any pytree (KV cache, RNN carry)."""
    batch, new_beams = beam_indices.shape
    flat = (jnp.arange(batch)[:, None] * old_beams + beam_indices).reshape(-1)
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, flat, axis=0), tree)


def _gather(x: jax.Array, indices: jax.Array) -> jax.Array:
    """x [B, K, ...] indexed along axis 1 by indices [B, J] -> [B, J, ...]."""
    return jnp.take_along_axis(x, indices.reshape(*indices.shape, *([1] * (x.ndim - 2))), axis=1)


def beam_search(
    decoder: DecodeStep,
    params: Any,
    batch: Batch,
    *,
    beam_size: int,
    max_new_tokens: int,
    alpha: float = 0.6,
    eos_id: int | None = EOS_ID,
    processors: Sequence[Processor] = (),
    suppress_pad: bool = True,
    no_repeat_ngram_size: int = 0,
    row_limits: jax.Array | None = None,
    first_phase_tokens: int = FIRST_PHASE_TOKENS,
) -> BeamOutput:
    """K-best continuations of each prompt in `batch` (see `DecodeStep`), best first.

    Sequences that reach `max_new_tokens` without EOS count as finished. `eos_id=None` makes
    every hypothesis exactly `max_new_tokens` long (exact search when K >= V ** N). `alpha`
    (the GNMT exponent) applies to monotone decoders only; a non-monotone one ranks by its raw
    fused sum (`ranking_alpha`; the module docstring says why). `no_repeat_ngram_size` n > 0:
    no hypothesis repeats an n-gram of its generated tokens (0 disables it). `row_limits` [B]:
    new tokens allowed per prompt (each <= `max_new_tokens`; a translation's limit from its
    source length, fairseq's max_len_a * |x| + max_len_b); a prompt's beams end there, and its
    early-exit bound is taken there, so each prompt's result is independent of its batch.
    `first_phase_tokens`: new tokens the first cache phase holds (0: one phase, the whole
    cache from the first step; `lmfuse.decode.cache_phases`).
    """
    return _beam_search(*_search_args(
        decoder, params, batch, beam_size=beam_size, max_new_tokens=max_new_tokens, alpha=alpha,
        eos_id=eos_id, processors=processors, suppress_pad=suppress_pad,
        no_repeat_ngram_size=no_repeat_ngram_size, row_limits=row_limits,
        first_phase_tokens=first_phase_tokens))


def compile_beam_search(decoder: DecodeStep, params: Any, batch: Batch, **options: Any) -> None:
    """Compiles the program `beam_search(decoder, params, batch, **options)` runs, without
    running it: a later call with arrays of the same shapes finds it compiled. Called from a
    background thread, it compiles the next batch shape's program while the device decodes
    (a device runs one program at a time; compiling is the host's work)."""
    _beam_search.lower(*_search_args(decoder, params, batch, **options)).compile()


def _search_args(decoder: DecodeStep, params: Any, batch: Batch, *, beam_size: int,
                 max_new_tokens: int, alpha: float = 0.6, eos_id: int | None = EOS_ID,
                 processors: Sequence[Processor] = (), suppress_pad: bool = True,
                 no_repeat_ngram_size: int = 0, row_limits: jax.Array | None = None,
                 first_phase_tokens: int = FIRST_PHASE_TOKENS) -> tuple:
    """`_beam_search`'s arguments for `beam_search`'s (see there)."""
    if beam_size <= 0 or max_new_tokens <= 0:
        raise ValueError(f"beam_size={beam_size} and max_new_tokens={max_new_tokens} must be positive")
    chain = ((SuppressTokens((PAD_ID,)),) if suppress_pad else ()) + tuple(processors)
    b = batch["prompt"].shape[0]
    limits = jnp.full((b,), max_new_tokens, jnp.int32) if row_limits is None else (
        jnp.minimum(jnp.asarray(row_limits, jnp.int32), max_new_tokens))
    return (
        decoder, chain, int(beam_size), int(max_new_tokens), ranking_alpha(decoder, alpha),
        max(int(no_repeat_ngram_size), 0), int(first_phase_tokens), params, batch,
        jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32),  # traced: no recompile per EOS id
        limits,
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _beam_search(decoder, chain, k, num_tokens, alpha, ngram, first_phase, params, batch, eos_id,
                 limits):
    prompt = batch["prompt"]
    b = prompt.shape[0]
    logits, state, phases, axes = init_in_phases(decoder, params, batch, num_tokens, first_phase)
    vocab = logits.shape[-1]
    per_beam = beam_state.per_beam_leaves(decoder, params, state, b)
    logits, state = tile_beams(logits, k), beam_state.tile(state, per_beam, k)
    if axes is not None:
        axes = beam_state.slot_axes(axes, per_beam)
    seen = None  # only a processor that reads it pays for its scatter per step
    if any(getattr(processor, "uses_seen", False) for processor in chain):
        seen = jnp.zeros((b, vocab), bool).at[jnp.arange(b)[:, None], prompt].set(True)
        seen = tile_beams(seen.at[:, PAD_ID].set(False), k)
    two_k = 2 * k

    def cond(c):
        i, live_logprobs, fin_scores = c[0], c[4], c[6]
        if not decoder.monotone:  # a live score may still rise: no bound, run to the end
            return i < jnp.max(limits)
        best_live = live_logprobs[:, 0] / length_penalty(limits.astype(jnp.float32), alpha)
        worst_fin = jnp.min(fin_scores, axis=1)  # NEG_INF while fewer than K have finished
        return ~jnp.all((i >= limits) | (worst_fin > best_live))

    def body(c):
        i, logits, state, seen, live_logprobs, live_seqs, fin_scores, fin_logprobs, fin_seqs, fin_flags = c
        generated = live_seqs.reshape(b * k, num_tokens)
        processed = apply_processors(chain, logits, DecodeContext(i, seen, state, generated))
        if not decoder.log_scores:
            processed = jax.nn.log_softmax(processed, axis=-1)
        if ngram:
            processed = repeated_ngram_ban(processed, generated, i, ngram)
        token_logprobs = processed.reshape(b, k, vocab)
        # -inf (suppressed) becomes NEG_INF so scores stay finite and comparable.
        candidates = live_logprobs[:, :, None] + jnp.maximum(token_logprobs, NEG_INF)
        top_logprobs, top_flat = topk.top_k(candidates.reshape(b, k * vocab), min(two_k, k * vocab))
        top_beams, top_tokens = top_flat // vocab, (top_flat % vocab).astype(jnp.int32)
        top_seqs = jax.lax.dynamic_update_slice(
            _gather(live_seqs, top_beams), top_tokens[:, :, None], (0, 0, i)
        )
        real = top_logprobs > NEG_INF / 2  # not descended from a placeholder beam
        ends = (top_tokens == eos_id) | (i == limits[:, None] - 1)

        # Live: the best K candidates that did not just end.
        live_cand = jnp.where(ends | ~real, NEG_INF, top_logprobs)
        new_live_logprobs, live_pick = jax.lax.top_k(live_cand, k)
        new_live_seqs = _gather(top_seqs, live_pick)
        parent = _gather(top_beams, live_pick)
        new_tokens = _gather(top_tokens, live_pick)

        # Finished: merge the ones that just ended with the K kept so far. As in HF, an ended
        # candidate counts only if it ranks in the top K (so K=1 is exactly greedy); the other
        # K are there only to keep K live beams.
        just_ended = ends & real & (jnp.arange(top_tokens.shape[1]) < k)
        scores = jnp.where(just_ended, top_logprobs / length_penalty(i + 1.0, alpha), NEG_INF)
        all_scores = jnp.concatenate([fin_scores, scores], axis=1)
        new_fin_scores, fin_pick = jax.lax.top_k(all_scores, k)
        new_fin_logprobs = _gather(jnp.concatenate([fin_logprobs, top_logprobs], axis=1), fin_pick)
        new_fin_seqs = _gather(jnp.concatenate([fin_seqs, top_seqs], axis=1), fin_pick)
        new_fin_flags = _gather(jnp.concatenate([fin_flags, just_ended], axis=1), fin_pick)

        # Reorder the decode state to the surviving beams' parents, then feed their tokens.
        state = beam_state.reorder(state, per_beam, parent)
        if seen is not None:
            seen = gather_beams(seen, parent, k).at[jnp.arange(b * k), new_tokens.reshape(-1)].set(True)
        logits, state = beam_state.step(decoder, params, state, per_beam, new_tokens)
        return (i + 1, logits, state, seen, new_live_logprobs, new_live_seqs, new_fin_scores,
                new_fin_logprobs, new_fin_seqs, new_fin_flags)

    # Only beam 0 is real at the start; the others are placeholders so the top-k is not K
    # copies of the same hypothesis.
    live_logprobs = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
    seqs = jnp.full((b, k, num_tokens), PAD_ID, jnp.int32)
    init = (jnp.asarray(0, jnp.int32), logits, state, seen, live_logprobs, seqs,
            jnp.full((b, k), NEG_INF, jnp.float32), jnp.zeros((b, k), jnp.float32), seqs,
            jnp.zeros((b, k), bool))
    out = init
    for n, length in enumerate(phases):  # iteration i writes cache slot prompt_len + i
        out = jax.lax.while_loop(lambda c, length=length: (c[0] < length) & cond(c), body, out)
        if n + 1 < len(phases):
            out = (*out[:2], grow_slots(out[2], axes, phases[n + 1] - length), *out[3:])
    fin_scores, fin_logprobs, fin_seqs, fin_flags = out[6:]
    return BeamOutput(fin_seqs, fin_scores, jnp.where(fin_flags, fin_logprobs, NEG_INF), fin_flags)
