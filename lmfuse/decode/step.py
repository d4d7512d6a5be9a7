"""The decoding contract shared by samplers and beam search, and its LM implementations.

A `DecodeStep` is two pure functions:

    logits, state = init(params, batch, max_len)     # logits [B, V] float32: next-token dist.
    logits, state = step(params, state, tokens)      # tokens [B] int32 -> logits [B, V]

`init` does all per-prompt work once (an LM prefills its whole prompt in one pass; a seq2seq
model would run its encoder here) and returns the distribution of the first generated token,
so every decoder loop is uniform: pick a token from `logits`, feed it to `step`. `batch` is a
dict; LMs read `batch['prompt']` [B, P] int32, left- or right-padded with PAD (0) and holding
at least one real token per row (usually BOS). `max_len` is the total number of positions the
state must hold: prompt length P plus the number of tokens to generate.

State convention (what lets beam search reorder any state): `state` is a pytree whose array
leaves all have the batch as their leading axis; 0-d leaves (e.g. the next cache slot) are
shared by all rows. Beam search tiles and gathers leaves along axis 0 only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lmfuse.data.tokenizer import PAD_ID
from lmfuse.models.rnn import RNNLM
from lmfuse.models.transformer import TransformerLM

Params = Any
State = Any
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DecodeStep:
    """`init(params, batch, max_len) -> (logits, state)`, `step(params, state, tokens) -> (logits, state)`.

    Frozen and hashable (when its functions are), so it can be a static argument of `jax.jit`:
    the same DecodeStep reuses one compiled decoder.
    """

    init: Callable[[Params, Batch, int], tuple[jax.Array, State]]
    step: Callable[[Params, State, jax.Array], tuple[jax.Array, State]]
    # True when the outputs are already per-token log-scores (a fused DecodeStep's weighted sum
    # of log-probs): beam search then ranks by them as they are instead of by log_softmax.
    log_scores: bool = False
    # True when a hypothesis' score can only fall as it grows (log-probs, or any sum of
    # non-positive terms); beam search stops early only then.
    monotone: bool = True


@dataclasses.dataclass(frozen=True)
class _Bound:
    """`fn(model, *args)`; compares by (fn, model), unlike a lambda or functools.partial, so
    two DecodeSteps built for equal models share jit caches."""

    fn: Callable
    model: Any
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments, as hashable pairs

    def __call__(self, *args):
        return self.fn(self.model, *args, **dict(self.options))


def left_pad(prompt: jax.Array) -> jax.Array:
    """[B, P] prompts padded on either side with PAD -> the same prompts left-padded.

    A stable sort on "is a real token" moves padding first and keeps token order.
    """
    order = jnp.argsort(prompt != PAD_ID, axis=1, stable=True)
    return jnp.take_along_axis(prompt, order, axis=1)


def _prompt_layout(prompt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(left-padded tokens, segment ids (0 = pad), positions (pads at 0)), all [B, P]."""
    tokens = left_pad(prompt.astype(jnp.int32))
    segments = (tokens != PAD_ID).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
    return tokens, segments, positions


# Transformer: the state must be batch-major so beam search can gather it along axis 0. An
# unscanned model keeps one [B, N, S, H] array pair per layer, which steps update in place; a
# scanned model's stacked [L, B, ...] cache is moved to [B, L, ...] and back at each step.
def _to_state(cache, scanned: bool):
    if not scanned:
        return {"layers": cache["layers"], "segment_ids": cache["segment_ids"]}
    return {"k": jnp.moveaxis(cache["k"], 1, 0), "v": jnp.moveaxis(cache["v"], 1, 0),
            "segment_ids": cache["segment_ids"]}


def _to_cache(state, scanned: bool):
    if not scanned:
        return {"layers": state["layers"], "segment_ids": state["segment_ids"]}
    return {"k": jnp.moveaxis(state["k"], 0, 1), "v": jnp.moveaxis(state["v"], 0, 1),
            "segment_ids": state["segment_ids"]}


def _transformer_init(model: TransformerLM, params: Params, batch: Batch, max_len: int):
    tokens, segments, positions = _prompt_layout(batch["prompt"])
    b, p = tokens.shape
    scanned = model.cfg.scan_layers
    cache = model.init_cache(b, max_len, per_layer=not scanned)
    logits, cache = model.apply(
        {"params": params}, tokens, segment_ids=segments, positions=positions, cache=cache, cache_index=0
    )
    state = {
        **_to_state(cache, scanned),
        "position": positions[:, -1] + 1,  # next position per row (rows differ when padded)
        "index": jnp.asarray(p, jnp.int32),  # next cache slot, the same for every row
    }
    return logits[:, -1], state


def _transformer_step(model: TransformerLM, params: Params, state: State, tokens: jax.Array):
    scanned = model.cfg.scan_layers
    logits, cache = model.apply(
        {"params": params},
        tokens[:, None].astype(jnp.int32),
        positions=state["position"][:, None],
        cache=_to_cache(state, scanned),
        cache_index=state["index"],
    )
    new_state = {
        **_to_state(cache, scanned),
        "position": state["position"] + 1,
        "index": state["index"] + 1,
    }
    return logits[:, 0], new_state


# RNN: the carry is moved to [B, L, H] for the same reason. Left padding gets segment 0, so the
# carry resets where the real prompt starts and padding never leaks into it.
def _rnn_init(model: RNNLM, params: Params, batch: Batch, max_len: int):
    del max_len  # a carry has no length
    tokens, segments, _ = _prompt_layout(batch["prompt"])
    logits, carry = model.apply(
        {"params": params}, tokens, segment_ids=segments, carry=model.init_carry(tokens.shape[0]),
        return_carry=True,
    )
    return logits[:, -1], jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), carry)


def _rnn_step(model: RNNLM, params: Params, state: State, tokens: jax.Array):
    carry = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), state)
    logits, carry = model.apply(
        {"params": params}, tokens[:, None].astype(jnp.int32), carry=carry, return_carry=True
    )
    return logits[:, 0], jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), carry)


def seq2seq_decode_step(model: Any, zero_context: bool = False) -> DecodeStep:
    """The DecodeStep of an encoder-decoder (`Seq2SeqTransformer`, `Seq2SeqRNN`, or either
    fused with an LM, `FusedSeq2Seq`).

    `batch` holds `inputs` [B, S] (the source, right-padded) and `prompt` [B, P] (the decoder
    prefix, usually [[BOS]]); `init` runs the encoder once. With `zero_context` the decoder
    runs with its encoder context zeroed: the model's internal LM (ILME fusion).
    """
    from lmfuse.models import fusion, seq2seq_rnn, seq2seq_transformer

    for module, cls in ((seq2seq_transformer, "Seq2SeqTransformer"), (seq2seq_rnn, "Seq2SeqRNN"),
                        (fusion, "FusedSeq2Seq")):
        if isinstance(model, getattr(module, cls)):
            options = (("zero_context", zero_context),)
            return DecodeStep(
                _Bound(module.decode_init, model, options), _Bound(module.decode_step, model, options)
            )
    raise TypeError(f"seq2seq_decode_step needs an encoder-decoder, got {type(model).__name__}")


def decode_step_for(model: Any) -> DecodeStep:
    """The DecodeStep of any generative lmfuse model (decoder-only LM or encoder-decoder)."""
    if isinstance(model, TransformerLM | RNNLM):
        return lm_decode_step(model)
    return seq2seq_decode_step(model)


def lm_decode_step(model: TransformerLM | RNNLM) -> DecodeStep:
    """The DecodeStep of a decoder-only LM (TransformerLM or any RNNLM cell)."""
    if isinstance(model, TransformerLM):
        return DecodeStep(_Bound(_transformer_init, model), _Bound(_transformer_step, model))
    if isinstance(model, RNNLM):
        return DecodeStep(_Bound(_rnn_init, model), _Bound(_rnn_step, model))
    raise TypeError(f"lm_decode_step needs a TransformerLM or RNNLM, got {type(model).__name__}")
