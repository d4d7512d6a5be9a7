"""Attention of the RNN encoder-decoder over its encoder memory: Bahdanau (additive, inside
the decoder's time scan) and Luong (multiplicative, after it); see `seq2seq_rnn` for the
equations. A target token attends to the real source tokens of its own segment only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.layers import compute_dtype, partitioned
from lmfuse.models.rnn import Carry, _cell_step, _hh, _keep

if TYPE_CHECKING:
    from lmfuse.models.seq2seq_rnn import Seq2SeqRNNConfig

# Masked-out attention scores: far below any real score, yet finite, so a row with no valid
# source position (a padding query) gives uniform weights, zeroed afterwards, and no NaNs.
MASKED_SCORE = -1e9


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to `mask`; exactly 0 elsewhere (all 0 if none)."""
    weights = jax.nn.softmax(jnp.where(mask, scores, MASKED_SCORE), axis=-1)
    return jnp.where(mask, weights, 0.0)


def weighted_memory(weights: jax.Array, memory: jax.Array) -> jax.Array:
    """Context vectors: weights [B, (T,) S] x memory [B, S, 2H] -> [B, (T,) 2H] float32."""
    weights = weights.astype(memory.dtype)
    return jnp.einsum("b...s,bsd->b...d", weights, memory, preferred_element_type=jnp.float32)


def additive_scores(
    query: jax.Array, keys: jax.Array, w_query: jax.Array, energy: jax.Array
) -> jax.Array:
    """Bahdanau scores v^T tanh(W_s s + keys): query [B, H], keys [B, S, H] -> [B, S]."""
    q = jnp.einsum("bh,hk->bk", query, w_query)
    return jnp.einsum("bsk,k->bs", jnp.tanh(keys + q[:, None]), energy)


class AttentionWeights(nn.Module):
    """The attention parameters (see the module docstring) as arrays in the compute dtype."""

    cfg: Seq2SeqRNNConfig

    @nn.compact
    def __call__(self) -> dict[str, jax.Array]:
        h = self.cfg.hidden_dim
        dt = compute_dtype(self.cfg.dtype)
        normal = nn.initializers.normal

        def param(name, init, logical_axes, shape):
            return self.param(name, partitioned(init, logical_axes), shape, jnp.float32)

        params = {"key": param("key", normal((2 * h) ** -0.5), ("embed", "hidden"), (2 * h, h))}
        if self.cfg.attention == "bahdanau":
            params["query"] = param("query", normal(h**-0.5), ("embed", "hidden"), (h, h))
            params["bias"] = param("bias", nn.initializers.zeros, ("hidden",), (h,))
            params["energy"] = param("energy", normal(h**-0.5), ("hidden",), (h,))
        return {k: v.astype(dt) for k, v in params.items()}


def project(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., D] @ w [D, G, H] -> [..., G, H] float32."""
    return jnp.einsum("...d,dgh->...gh", x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def bahdanau_scan(
    cell: str,
    layers: list[dict[str, jax.Array | None]],
    attn: dict[str, jax.Array],
    y: jax.Array,
    keep: jax.Array | None,
    mask: jax.Array,
    drop_masks: jax.Array | None,
    carry: Carry,
    memory: jax.Array,
    keys: jax.Array,
    zero_context: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, Carry]:
    """The bahdanau decoder recurrence over all layers.

    y [B, T, E], keep [B, T] (0 = reset), mask [B, T, S], drop_masks [L-1, B, T, H] (scaled
    keep masks between layers) or None, carry {'h': [L, B, H], ...}, memory [B, S, 2H], keys
    [B, S, H] -> (top states s [B, T, H], contexts [B, T, 2H], weights [B, T, S], final carry).
    """
    emb_dim = y.shape[-1]
    first = layers[0]
    # Layer 0 reads [y_t ; c_t]: the y_t half of its input projection is hoisted out of the scan.
    xw_y = project(y, first["w_ih"][:emb_dim]) + first["bias"]
    w_context = first["w_ih"][emb_dim:]
    b, s, memory_width = memory.shape
    keys = keys.astype(attn["query"].dtype)
    # Recomputing the [B, S, H] tanh on the backward pass saves storing it for every step.
    scores_fn = jax.checkpoint(additive_scores)

    def step(state: Carry, inp):
        xw_t, keep_t, mask_t, drop_t = inp
        state = _keep(state, keep_t)  # [L, B, H] * [B, 1]: a new segment restarts every layer
        if zero_context:
            weights = jnp.zeros((b, s), jnp.float32)
            context = jnp.zeros((b, memory_width), jnp.float32)
        else:
            query = state["h"][-1].astype(keys.dtype)  # s_{t-1} of the top layer
            scores = scores_fn(query, keys, attn["query"], attn["energy"])
            weights = masked_softmax(scores.astype(jnp.float32), mask_t)
            context = weighted_memory(weights, memory)
        new_layers, x = [], None
        for i, p in enumerate(layers):
            layer_state = jax.tree.map(lambda a, i=i: a[i], state)
            if i == 0:
                xw = xw_t + project(context, w_context)
            else:
                xw = project(x if drop_t is None else x * drop_t[i - 1], p["w_ih"]) + p["bias"]
            hh = _hh(layer_state["h"], p["w_hh"])
            layer_state = _cell_step(cell, layer_state, xw, hh, p["bias_hn"])
            new_layers.append(layer_state)
            x = layer_state["h"]
        state = jax.tree.map(lambda *a: jnp.stack(a), *new_layers)
        return state, (x, context, weights)

    time_major = lambda a: None if a is None else jnp.swapaxes(a, 0, 1)  # noqa: E731
    drops = None if drop_masks is None else jnp.moveaxis(drop_masks, 2, 0)  # [T, L-1, B, H]
    xs = (time_major(xw_y), time_major(keep), time_major(mask), drops)
    carry, outputs = jax.lax.scan(step, carry, xs)
    states, contexts, weights = (jnp.swapaxes(o, 0, 1) for o in outputs)
    return states, contexts, weights, carry


def attention_mask(
    inputs_segment_ids: jax.Array | None,
    decoder_segment_ids: jax.Array | None,
    source_shape: tuple[int, int],
    target_shape: tuple[int, int],
) -> jax.Array:
    """bool [B, T, S]: a target token attends to the real source tokens of its own segment
    (None segment ids: one segment, no padding)."""
    source_segments = inputs_segment_ids
    if source_segments is None:
        source_segments = jnp.ones(source_shape, jnp.int32)
    target_segments = decoder_segment_ids
    if target_segments is None:
        target_segments = jnp.ones(target_shape, jnp.int32)
    same_segment = target_segments[:, :, None] == source_segments[:, None, :]
    return same_segment & (source_segments[:, None, :] != 0)
