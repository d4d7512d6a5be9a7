"""Attention for the Transformers: self-attention with a KV cache, cross-attention to an
encoder's output, and the masks and projections they share.

Cache layout, per layer: {'k', 'v'}: [B, N, S, H] (batch first, as every decoding state is);
a decoder layer with cross-attention adds {'cross_k', 'cross_v'}: [B, N, H, S_source], projected
from the encoder output once, on the first cached call. The source axis comes last because
that is how the two dots of a decoding step read them (q.k over H into [.., S], then p.v over
S): stored [B, N, S, H], XLA copied both into [B, N, H, S] at every step of a beam search's
loop (12% of the op time of the demo model's beam search on CPU); stored as read, no copy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lmfuse.models.layers import (
    EinsumDense,
    apply_rope,
    compute_dtype,
    constrain,
    rows_product,
    segment_mask,
)

if TYPE_CHECKING:
    from lmfuse.models.transformer import TransformerConfig

Cache = dict[str, Any]


def residual_std(cfg: TransformerConfig) -> float:
    # GPT-2: scale the init of projections into the residual stream by 1/sqrt(2 * layers).
    return 0.02 / math.sqrt(2 * cfg.num_layers)


def heads_projection(cfg: TransformerConfig, name: str) -> EinsumDense:
    """A query, key or value projection [B, T, E] -> [B, T, N, H] named `name`."""
    return EinsumDense(
        kernel_shape=(cfg.emb_dim, cfg.num_heads, cfg.head_size),
        kernel_axes=("embed", "heads", "kv"),
        bias_shape=(cfg.num_heads, cfg.head_size),
        bias_axes=("heads", "kv"),
        equation="bte,enh->btnh",
        contracted=1 if cfg.fused_qkv else 0,
        use_bias=cfg.use_bias,
        dtype=compute_dtype(cfg.dtype),
        name=name,
    )


def qkv_projection(cfg: TransformerConfig, x: jax.Array) -> tuple[jax.Array, ...]:
    """Query, key and value of x [B, T, E] in one product over rows with the three kernels
    stacked [E, N, 3, H] (`model.fused_qkv`): one matmul and its two gradient matmuls instead
    of three each. The parameters stay three layers (`query`, `key`, `value`), so checkpoints
    and the GPT-2 import keep their layout either way. With the flag the other attention
    projections run on rows too (`layers.rows_product`). The same function as the default path, not the same bits (XLA's
    kernels block the products differently), hence off by default: models trained before
    retrain bit for bit."""
    dt = compute_dtype(cfg.dtype)
    weights = [heads_projection(cfg, name).weights() for name in ("query", "key", "value")]
    # [E, N, 3, H]: heads stay the major axis of the flattened (N, 3, H), so a kernel sharded
    # over heads flattens without resharding.
    kernel = jnp.stack([w for w, _ in weights], axis=2).astype(dt)
    qkv = rows_product(x.astype(dt), kernel, 1)  # [B, T, N, 3, H]
    if cfg.use_bias:
        qkv = qkv + jnp.stack([b for _, b in weights], axis=1).astype(dt)
    return tuple(constrain(qkv[:, :, :, i], ("batch", "length", "heads", "kv")) for i in range(3))


def output_projection(cfg: TransformerConfig) -> EinsumDense:
    """The attention output projection `out`: [B, T, N, H] -> [B, T, E]."""
    return EinsumDense(
        kernel_shape=(cfg.num_heads, cfg.head_size, cfg.emb_dim),
        kernel_axes=("heads", "kv", "embed"),
        bias_shape=(cfg.emb_dim,),
        bias_axes=("embed",),
        equation="btnh,nhe->bte",
        contracted=2 if cfg.fused_qkv else 0,
        kernel_std=residual_std(cfg),
        use_bias=cfg.use_bias,
        dtype=compute_dtype(cfg.dtype),
        name="out",
    )


def cached_attention_mask(
    cache_segments: jax.Array, segments: jax.Array, start: jax.Array | int
) -> tuple[jax.Array, jax.Array]:
    """Self-attention mask of a chunk written into a KV cache at slots start .. start+T-1.

    cache_segments [B, S] (0 = unwritten or padding), segments [B, T] of the chunk ->
    (mask [B, 1, T, S]: the same segment at an earlier or the same slot, updated
    cache_segments [B, S]).
    """
    new_segments = lax.dynamic_update_slice(cache_segments, segments, (0, start))
    slots, t = new_segments.shape[1], segments.shape[1]
    causal = jnp.arange(slots)[None, :] <= (start + jnp.arange(t))[:, None]  # [T, S]
    return causal[None, None] & segment_mask(segments, new_segments), new_segments


def cross_mask(
    query_segments: jax.Array | None, memory_segments: jax.Array | None, shape: tuple[int, int]
) -> jax.Array | None:
    """[B, 1, T, S]: target segment i sees source segment i (queries of `shape` [B, T] are one
    segment when None); None, i.e. everything visible, without source segment ids."""
    if memory_segments is None:
        return None
    if query_segments is None:
        query_segments = jnp.ones(shape, jnp.int32)
    return segment_mask(query_segments, memory_segments)


class Attention(nn.Module):
    """Causal multi-head self-attention through `jax.nn.dot_product_attention`.

    x [B, T, E] -> [B, T, E]. `mask` is bool [B, 1, T, S] or None; `is_causal` adds the causal
    mask (used without a cache, where T == S, so fused kernels can skip masked blocks).
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        positions: jax.Array,
        layer_cache: Cache | None,
        cache_index: jax.Array | int | None,
        is_causal: bool,
    ) -> tuple[jax.Array, Cache | None]:
        c = self.cfg
        dt = compute_dtype(c.dtype)

        def project(name: str) -> jax.Array:
            return constrain(heads_projection(c, name)(x), ("batch", "length", "heads", "kv"))

        if c.fused_qkv:
            q, k, v = qkv_projection(c, x)  # [B, T, N, H] each
        else:
            q, k, v = project("query"), project("key"), project("value")
        if c.positions == "rope":
            q, k = apply_rope(q, positions), apply_rope(k, positions)

        new_cache = None
        if layer_cache is not None:
            # Cache layout is [B, N, S, H]; write this chunk at slots cache_index.., then attend
            # over the whole cache (unwritten slots are masked out as "future" by the mask).
            start = (0, 0, cache_index, 0)
            ck = lax.dynamic_update_slice(layer_cache["k"], k.transpose(0, 2, 1, 3).astype(layer_cache["k"].dtype), start)
            cv = lax.dynamic_update_slice(layer_cache["v"], v.transpose(0, 2, 1, 3).astype(layer_cache["v"].dtype), start)
            new_cache = {"k": ck, "v": cv}
            out = cached_attention(q, ck.astype(dt), cv.astype(dt), mask)
        else:
            out = jax.nn.dot_product_attention(
                q, k, v, mask=mask, is_causal=is_causal, implementation=c.attention_impl
            )
        return output_projection(c)(out), new_cache


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of a chunk q [B, T, N, H] over a cache k, v [B, N, S, H] in the cache's own
    layout, so decoding never copies the whole cache into [B, S, N, H] at each step (that
    transposed copy, every layer and step, was most of a batch-32 decode step's time on CPU)."""
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32)).astype(q.dtype)
    scores = jnp.einsum("btnh,bnsh->bnts", q * scale, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bnsh->btnh", probs, v)


def memory_attention(
    q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Attention of q [B, T, N, H] over cached encoder keys and values [B, N, H, S]: (output
    [B, T, N, H], weights [B, N, T, S]). The computation of `jax.nn.dot_product_attention`'s
    XLA implementation (scale after the dot, the same large negative for masked scores,
    float32 softmax), with the einsums written for the cached layout."""
    scores = jnp.einsum("btnh,bnhs->bnts", q, keys,
                        preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
    scores = scores * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), scores.dtype)
    if mask is not None:
        large_negative = -0.7 * float(jnp.finfo(jnp.float32).max)
        scores = jnp.where(mask, scores, jnp.asarray(large_negative, scores.dtype))
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    return jnp.einsum("bnts,bnhs->btnh", weights.astype(keys.dtype), values), weights


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> jax.Array:
    """softmax(q k^T / sqrt(H)) of q [B, T, N, H] over k [B, S, N, H] -> float32 [B, N, T, S],
    exactly 0 where `mask` ([B, 1, T, S] bool, or None) is False: the weights that
    `jax.nn.dot_product_attention` applies."""
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
    scores = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


class CrossAttention(nn.Module):
    """Decoder queries x [B, T, E] attend to encoder states: -> ([B, T, E], memory_kv).

    `memory_kv` ({'k', 'v'}: [B, N, H, S], the cache layout, see the module docstring) is
    projected from `memory` [B, S, E] when not given, and returned, so a decoder can compute it
    once and reuse it. `mask` is bool [B, 1, T, S] or None.
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        memory: jax.Array | None,
        memory_kv: Cache | None,
        mask: jax.Array | None,
    ) -> tuple[jax.Array, Cache]:
        c = self.cfg

        def project(name: str, y: jax.Array) -> jax.Array:
            return constrain(heads_projection(c, name)(y), ("batch", "length", "heads", "kv"))

        q = project("query", x)
        if memory_kv is not None:  # a decoding step: the cached keys and values
            out, weights = memory_attention(q, memory_kv["k"], memory_kv["v"], mask)
            self.sow("intermediates", "cross_attention", weights)  # a no-op unless inspecting
            return output_projection(c)(out), memory_kv
        if memory is None:
            raise ValueError("cross-attention needs the encoder output or its cached keys")
        k, v = project("key", memory), project("value", memory)
        if self.is_mutable_collection("intermediates"):
            # For inspection only (`lmfuse.evaluate.inspect`): the fused attention below does not
            # return its weights, so they are recomputed, and only when a caller asks for them.
            self.sow("intermediates", "cross_attention", attention_weights(q, k, mask))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=c.attention_impl)
        return output_projection(c)(out), {"k": k.transpose(0, 2, 3, 1), "v": v.transpose(0, 2, 3, 1)}
