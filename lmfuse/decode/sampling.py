"""Ancestral sampling and greedy decoding as one compiled program.

`sample` runs prefill and the whole token loop inside a single `jax.jit`: a `lax.while_loop`
that stops after `max_new_tokens` or as soon as every row has produced EOS. Python never runs
per token, and a new PRNG key or new prompts of the same shape reuse the compiled program.

Per step: raw logits -> processors (fusion hooks first, then repetition penalty, the n-gram
ban, temperature) -> top-k, top-p, min-p on a candidate set (`lmfuse.decode.truncation`) -> a
token (argmax when greedy, else a categorical draw) -> its log-prob under the truncated
distribution. Rows that have emitted EOS get PAD (log-prob 0) from then on. T5X convention:
temperature below `GREEDY_TEMPERATURE` means greedy.

Work a setting does not ask for is not traced: the `seen` set is kept only for a processor that
reads it (repetition penalty), log-probs only when returned, the n-gram ban only when n > 0.
The loop runs in phases of growing cache size, as beam search does
(`lmfuse.decode.cache_phases`): attention reads about the written prefix of a KV cache, not
every slot up to the length limit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lmfuse.decode.cache_phases import FIRST_PHASE_TOKENS, grow_slots, init_in_phases
from lmfuse.decode.processors import (
    DecodeContext,
    Processor,
    SuppressTokens,
    apply_processors,
    shaping_processors,
)
from lmfuse.decode.step import Batch, DecodeStep
from lmfuse.decode.truncation import Truncation, choose_tokens
from lmfuse.tokens import EOS_ID, PAD_ID

GREEDY_TEMPERATURE = 1e-4


class SampleOutput(NamedTuple):
    """tokens [B, S, N] int32 (PAD after EOS), logprobs [B, S, N] float32 (0 after EOS; None
    when not asked for), lengths [B, S] int32 (generated tokens, EOS included); S =
    num_samples per prompt."""

    tokens: jax.Array
    logprobs: jax.Array | None
    lengths: jax.Array


def sample(
    decoder: DecodeStep,
    params: Any,
    batch: Batch,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    num_samples: int = 1,
    eos_id: int | None = EOS_ID,
    processors: Sequence[Processor] = (),
    suppress_pad: bool = True,
    return_logprobs: bool = True,
    first_phase_tokens: int = FIRST_PHASE_TOKENS,
) -> SampleOutput:
    """Generates `num_samples` continuations of each prompt in `batch` (see `DecodeStep`).

    `processors` run before the built-in sampling chain (decode-time fusion goes there).
    `no_repeat_ngram_size` n > 0: no n-gram occurs twice among a row's generated tokens
    (`repeated_ngram_ban`). `eos_id=None` generates exactly `max_new_tokens` tokens.
    `first_phase_tokens`: new tokens the first cache phase holds (0: one phase, the whole cache
    from the first step; `lmfuse.decode.cache_phases`).
    """
    if max_new_tokens <= 0 or num_samples <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} and num_samples={num_samples} must be positive")
    greedy = temperature < GREEDY_TEMPERATURE
    chain = (
        ((SuppressTokens((PAD_ID,)),) if suppress_pad else ())
        + tuple(processors)
        + shaping_processors(temperature, repetition_penalty, no_repeat_ngram_size, greedy=greedy)
    )
    truncation = Truncation(int(top_k), float(top_p), float(min_p))
    return _generate(
        decoder, chain, truncation, greedy, bool(return_logprobs), int(max_new_tokens),
        int(num_samples), int(first_phase_tokens), params, batch, key,
        jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32),  # traced: no recompile per EOS id
    )


def greedy(decoder: DecodeStep, params: Any, batch: Batch, *, max_new_tokens: int, **kwargs) -> SampleOutput:
    """Argmax decoding (`sample` with temperature 0; the key is unused)."""
    return sample(
        decoder, params, batch, jax.random.key(0), max_new_tokens=max_new_tokens, temperature=0.0, **kwargs
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6, 7))
def _generate(decoder, chain, truncation, greedy_, with_logprobs, num_tokens, num_samples,
              first_phase, params, batch, key, eos_id):
    if num_samples > 1:
        # Each prompt repeated in place, so rows s*S .. s*S+S-1 are prompt s's samples.
        batch = jax.tree.map(lambda x: jnp.repeat(x, num_samples, axis=0), batch)
    prompt = batch["prompt"]
    rows = prompt.shape[0]
    logits, state, phases, axes = init_in_phases(decoder, params, batch, num_tokens, first_phase)
    vocab = logits.shape[-1]
    row_ids = jnp.arange(rows)
    seen = None  # only a processor that reads it pays for its scatter per step
    if any(getattr(processor, "uses_seen", False) for processor in chain):
        seen = jnp.zeros((rows, vocab), bool).at[row_ids[:, None], prompt].set(True)
        seen = seen.at[:, PAD_ID].set(False)

    def cond(carry):
        i, done = carry[0], carry[4]
        return (i < num_tokens) & ~jnp.all(done)

    def body(carry):
        i, logits, state, seen, done, tokens, logprobs = carry
        processed = apply_processors(chain, logits, DecodeContext(i, seen, state, tokens))
        step_key = None if greedy_ else jax.random.fold_in(key, i)
        tok, logprob = choose_tokens(processed, step_key, truncation, with_logprobs)
        tok = jnp.where(done, PAD_ID, tok)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
        if with_logprobs:
            logprob = jnp.where(done, 0.0, logprob)
            logprobs = jax.lax.dynamic_update_slice(logprobs, logprob[:, None], (0, i))
        if seen is not None:
            seen = seen.at[row_ids, tok].set(seen[row_ids, tok] | ~done)
        done = done | (tok == eos_id)
        # The step after the last token is wasted work, but keeps the loop body uniform.
        logits, state = decoder.step(params, state, tok)
        return i + 1, logits, state, seen, done, tokens, logprobs

    init = (
        jnp.asarray(0, jnp.int32), logits, state, seen, jnp.zeros((rows,), bool),
        jnp.full((rows, num_tokens), PAD_ID, jnp.int32),
        jnp.zeros((rows, num_tokens), jnp.float32) if with_logprobs else None,
    )
    out = init
    for n, length in enumerate(phases):  # iteration i writes cache slot prompt_len + i
        out = jax.lax.while_loop(lambda c, length=length: (c[0] < length) & cond(c), body, out)
        if n + 1 < len(phases):
            out = (*out[:2], grow_slots(out[2], axes, phases[n + 1] - length), *out[3:])
    tokens, logprobs = out[5], out[6]
    lengths = jnp.sum(tokens != PAD_ID, axis=-1).astype(jnp.int32)
    def split(x):  # [rows, ...] -> [prompts, samples, ...]
        return None if x is None else x.reshape(rows // num_samples, num_samples, *x.shape[1:])

    return SampleOutput(split(tokens), split(logprobs), split(lengths))
