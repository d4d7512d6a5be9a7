"""The decoding contract shared by samplers, beam search and decode-time fusion.

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
shared by all rows. Beam search tiles and gathers leaves along axis 0 only. A leaf whose size
grows with `max_len` (a KV cache) grows by one slot per position along one axis and holds zeros
in its unwritten slots, so beam search can start it short and pad it as the hypotheses grow
(`lmfuse.decode.cache_phases`).

This module knows no model: `lmfuse.decode.adapters` turns each model family into a DecodeStep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lmfuse.tokens import PAD_ID

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
    # non-positive terms); beam search stops early, and divides by the GNMT length penalty,
    # only then (otherwise it ranks by the raw sum: `lmfuse.decode.beam`).
    monotone: bool = True


@dataclasses.dataclass(frozen=True)
class Bound:
    """`fn(model, *args, **options)`; compares by (fn, model, options), unlike a lambda or
    functools.partial, so two DecodeSteps built for equal models share jit caches."""

    fn: Callable
    model: Any
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments, as hashable pairs

    def __call__(self, *args):
        return self.fn(self.model, *args, **dict(self.options))


def bind(fn: Callable, model: Any, **options: Any) -> Bound:
    """`fn` with its model (and keyword options) bound: a hashable DecodeStep function."""
    return Bound(fn, model, tuple(sorted(options.items())))


def left_pad(prompt: jax.Array) -> jax.Array:
    """[B, P] prompts padded on either side with PAD -> the same prompts left-padded.

    A stable sort on "is a real token" moves padding first and keeps token order.
    """
    order = jnp.argsort(prompt != PAD_ID, axis=1, stable=True)
    return jnp.take_along_axis(prompt, order, axis=1)


def prompt_layout(prompt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(left-padded tokens, segment ids (0 = pad), positions (pads at 0)), all [B, P]."""
    tokens = left_pad(prompt.astype(jnp.int32))
    segments = (tokens != PAD_ID).astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
    return tokens, segments, positions
