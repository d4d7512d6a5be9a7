"""Decoding in phases of growing cache size, so each step reads only the written prefix.

A Transformer's decode state preallocates a cache for every position it may reach
(`DecodeStep.init(..., max_len)`), and a step attends over, and beam search reorders, all of
it, written or not. Most hypotheses end long before `max_len` (a Bible verse's translation in
a few dozen tokens of a 96-token limit), so most of that work is on empty slots.

Instead the loop runs in phases inside one compiled program: the first phase holds the prompt
and 16 new tokens, each next one twice as many, the last one all of them. Between phases the
state's length-dependent leaves (found by comparing the state's shapes at two lengths, so any
DecodeStep works unchanged) are padded with empty slots. A loop that exits early never reaches
the larger phases. Contract: an unwritten slot of a state leaf holds zeros, as
`init_cache` makes it (`lmfuse.decode.step`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lmfuse.decode.step import Batch, DecodeStep

FIRST_PHASE_TOKENS = 16  # new tokens the first phase holds; each next phase doubles it


def phase_lengths(num_tokens: int, first: int = FIRST_PHASE_TOKENS) -> tuple[int, ...]:
    """New-token capacities of the phases: first, 2 first, 4 first, ..., num_tokens
    (`first` <= 0: one phase of num_tokens)."""
    lengths = []
    capacity = first
    while 0 < capacity < num_tokens:
        lengths.append(capacity)
        capacity *= 2
    return (*lengths, num_tokens)


def init_in_phases(decoder: DecodeStep, params: Any, batch: Batch, num_tokens: int,
                   first_phase: int) -> tuple[jax.Array, Any, tuple[int, ...], Any | None]:
    """`decoder.init` for the first of `phase_lengths(num_tokens, first_phase)`: (logits, state,
    phases, slot axes). The slot axes are a tree like the state: for each leaf, the axis that
    grows with the length (-1 for a leaf that does not depend on it). With a single phase, no
    slot axis (an RNN's carry: this state serves every length) or a leaf that grows otherwise
    than by one slot per position, one phase of num_tokens and axes None."""
    prompt_len = batch["prompt"].shape[1]
    phases = phase_lengths(num_tokens, first_phase)
    logits, state = decoder.init(params, batch, prompt_len + phases[0])
    if len(phases) == 1:
        return logits, state, phases, None
    try:
        axes = _grown_axes(state, _state_shape(decoder, params, batch, prompt_len + phases[0] + 1))
    except _Irregular:
        logits, state = decoder.init(params, batch, prompt_len + num_tokens)
        return logits, state, (num_tokens,), None
    return logits, state, (phases if axes is not None else (num_tokens,)), axes


def _state_shape(decoder: DecodeStep, params: Any, batch: Batch, max_len: int) -> Any:
    return jax.eval_shape(lambda: decoder.init(params, batch, max_len))[1]


def _grown_axes(state: Any, longer: Any) -> Any | None:
    """The slot axes of `state` given the same state one slot longer (shapes suffice); None
    when no leaf grew. Raises _Irregular when a leaf grew otherwise than by one slot."""
    def axis(a: jax.ShapeDtypeStruct, b: jax.ShapeDtypeStruct) -> int:
        grown = [i for i, (m, n) in enumerate(zip(a.shape, b.shape, strict=True)) if m != n]
        if not grown:
            return -1
        if len(grown) != 1 or b.shape[grown[0]] != a.shape[grown[0]] + 1:
            raise _Irregular
        return grown[0]

    axes = jax.tree.map(axis, state, longer)
    return None if all(a < 0 for a in jax.tree.leaves(axes)) else axes


class _Irregular(Exception):
    """A state leaf grows with max_len otherwise than by one slot per position."""


def grow_slots(state: Any, axes: Any, extra: int) -> Any:
    """`state` with `extra` empty (zero) slots appended along each leaf's slot axis."""
    def grow(x: jax.Array, axis: int) -> jax.Array:
        if axis < 0:
            return x
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, extra)
        return jnp.pad(x, pad)

    return jax.tree.map(grow, state, axes)
