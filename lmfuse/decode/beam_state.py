"""A decode state held once per prompt where its beams share it, and the step run over beams.

Beam search keeps K hypotheses per prompt. Most of an encoder-decoder's state is the same in
all of them and never written after `init`: the encoder memory, each layer's cross-attention
keys and values, the copy head's pointer keys and source ids. Tiled K times, that state is read
K times per step (cross-attention of 64 prompts x 4 beams over 96 source positions reads 25 MB
per layer and tensor): 12% of a step's time on the demo model, as much as reordering the
self-attention cache.

So the state is split by `per_beam_leaves`:

* shared: leaves the step returns untouched (read off its jaxpr, `unchanged_by_step`) and 0-d
  leaves (the next cache slot): one copy, [B, ...] as `init` made them;
* per beam: everything the step writes (the self-attention cache, an RNN's carry, positions),
  held beam-major, [K, B, ...].

`step` runs the DecodeStep under `jax.vmap` over the beam axis with the shared leaves
unbatched, so every product with them batches the K beams' queries against one copy: the same
function, K times fewer reads of the shared state, and products that XLA blocks differently
(equal to a tiled step up to float rounding, about 1e-5 in the logits;
tests/decode/test_beam_dataset_speed.py). Reordering the beams (`reorder`) gathers only the
per-beam leaves.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lmfuse.decode.step import DecodeStep


def unchanged_by_step(decoder: DecodeStep, params: Any, state: Any, tokens: jax.Array) -> Any:
    """A tree like `state`: True for the leaves `decoder.step` returns untouched (encoder
    memory, cross-attention keys, source ids), read off the step's jaxpr: an output that is
    its input."""
    jaxpr = jax.make_jaxpr(decoder.step)(params, state, tokens).jaxpr
    n_params = len(jax.tree.leaves(params))
    state_in = jaxpr.invars[n_params : n_params + len(jax.tree.leaves(state))]
    state_out = jaxpr.outvars[1:]  # after the logits
    flags = [i is o for i, o in zip(state_in, state_out, strict=True)]
    return jax.tree.unflatten(jax.tree.structure(state), flags)


def per_beam_leaves(decoder: DecodeStep, params: Any, state: Any, rows: int) -> Any:
    """A tree like `state` (`rows` prompts, from `init`): True for the leaves each beam needs
    its own copy of, False for those all beams share (never written, or 0-d)."""
    unchanged = unchanged_by_step(decoder, params, state, jnp.zeros((rows,), jnp.int32))
    return jax.tree.map(lambda leaf, same: bool(leaf.ndim) and not same, state, unchanged)


def tile(state: Any, per_beam: Any, beams: int) -> Any:
    """One row per prompt -> per-beam leaves [K, B, ...] (K equal copies); shared ones kept."""
    return jax.tree.map(
        lambda x, own: jnp.broadcast_to(x[None], (beams, *x.shape)) if own else x, state, per_beam)


def reorder(state: Any, per_beam: Any, parent: jax.Array) -> Any:
    """New beam j of prompt b continues old beam parent[b, j] ([B, K]): per-beam leaves
    [K, B, ...] gathered accordingly; shared leaves are the same in every beam and kept."""
    batch, beams = parent.shape
    flat = (parent.T * batch + jnp.arange(batch)[None, :]).reshape(-1)  # into [K * B]

    def gather(x: jax.Array) -> jax.Array:
        return jnp.take(x.reshape(-1, *x.shape[2:]), flat, axis=0).reshape(x.shape)

    return jax.tree.map(lambda x, own: gather(x) if own else x, state, per_beam)


def slot_axes(axes: Any, per_beam: Any) -> Any:
    """The slot axes of the one-row-per-prompt state (`cache_phases.init_in_phases`) for the
    split state (a per-beam leaf has the beam axis in front)."""
    return jax.tree.map(lambda axis, own: axis + 1 if own and axis >= 0 else axis, axes, per_beam)


def step(decoder: DecodeStep, params: Any, state: Any, per_beam: Any, tokens: jax.Array
         ) -> tuple[jax.Array, Any]:
    """`decoder.step` for tokens [B, K] (beam j of prompt b): logits [B * K, V] in that
    order (prompt-major, as beam search ranks them) and the next split state."""
    axes = jax.tree.map(lambda own: 0 if own else None, per_beam)
    logits, state = jax.vmap(decoder.step, in_axes=(None, axes, 0), out_axes=(0, axes))(
        params, state, tokens.T)
    return jnp.swapaxes(logits, 0, 1).reshape(-1, logits.shape[-1]), state
