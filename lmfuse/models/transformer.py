"""Decoder-only GPT-style transformer language model.

    inputs [B, T] int32 (0 = pad)
      -> wte [V, E]  (+ wpe [max_len, E] if positions='learned', + sin/cos if 'sinusoidal')
      -> dropout                                                   x: [B, T, E]
      -> num_layers x Block
           pre-LN:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
           post-LN: x = ln_1(x + attn(x));  x = ln_2(x + mlp(x))
         (positions='rope' rotates q and k inside attn instead of adding to x)
      -> ln_f (pre-LN only)                                        hidden: [B, T, E]
      -> wte.attend (tied) or lm_head [E, V]                       logits: [B, T, V] float32

Param tree (unscanned; with scan_layers=True the blocks_i subtrees become one `blocks` subtree
whose leaves have a leading [num_layers] axis, logical name 'layers'):

    wte/embedding [V, E]                     ('vocab', 'embed')
    wpe [max_len, E]                         (None, 'embed')           positions='learned' only
    blocks_i/ln_1/{scale,bias} [E]           ('embed',)
    blocks_i/attn/{query,key,value}/kernel   [E, N, H] ('embed', 'heads', 'kv'); bias [N, H]
    blocks_i/attn/out/kernel [N, H, E]       ('heads', 'kv', 'embed'); bias [E] ('embed',)
    blocks_i/ln_2/{scale,bias} [E]
    blocks_i/mlp/fc/kernel [E, M]            ('embed', 'mlp'); bias [M] ('mlp',)
    blocks_i/mlp/proj/kernel [M, E]          ('mlp', 'embed'); bias [E] ('embed',)
    ln_f/{scale,bias} [E]                    pre-LN only
    lm_head/kernel [E, V]                    ('embed', 'vocab'), untied only

KV cache for decoding (a plain pytree, passed in and returned; no mutable collections):

    cache = model.init_cache(batch_size, max_len)
      {'k': [L, B, N, max_len, H], 'v': [L, B, N, max_len, H],   (layer l is [B, N, max_len, H])
       'segment_ids': [B, max_len] int32}                        (0 = not written yet / padding)
    logits, cache = model.apply({'params': p}, tokens, cache=cache, cache_index=i)

`tokens` [B, C] is a chunk written at cache slots i .. i+C-1: the whole prompt (prefill) or one
token. Positions default to i + arange(C); pass `positions`/`segment_ids` for left-padded
prompts (padding gets segment 0, so real tokens never attend to it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lmfuse.models.layers import (
    ACTIVATIONS,
    EinsumDense,
    Embed,
    Head,
    apply_rope,
    compute_dtype,
    constrain,
    partitioned,
    segment_mask,
    sinusoidal_embedding,
)

REMAT_POLICIES = {
    "none": None,
    "full": None,  # save nothing: recompute the whole block on the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

Cache = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of `TransformerLM`; built from a model config by `registry.build_model`."""

    vocab_size: int
    emb_dim: int = 512
    num_layers: int = 6
    num_heads: int = 8
    head_dim: int = 0  # 0 means emb_dim // num_heads
    mlp_dim: int = 2048
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm: str = "pre"  # 'pre' | 'post'
    positions: str = "learned"  # 'learned' | 'sinusoidal' | 'rope'
    max_len: int = 512
    activation: str = "gelu"  # 'gelu' | 'gelu_new' | 'relu'
    layer_norm_epsilon: float = 1e-5
    use_bias: bool = True
    scan_layers: bool = False
    remat_policy: str = "none"  # 'none' | 'full' | 'dots' | 'dots_no_batch'
    dtype: str = "float32"  # compute dtype: 'float32' | 'bfloat16'
    attention_impl: str = "xla"  # passed to jax.nn.dot_product_attention: 'xla' | 'cudnn'

    @property
    def head_size(self) -> int:
        return self.head_dim or self.emb_dim // self.num_heads


def _layer_norm(cfg: TransformerConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon,
        dtype=compute_dtype(cfg.dtype),
        param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones, ("embed",)),
        bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        name=name,
    )


def _residual_std(cfg: TransformerConfig) -> float:
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
        use_bias=cfg.use_bias,
        dtype=compute_dtype(cfg.dtype),
        name=name,
    )


def output_projection(cfg: TransformerConfig) -> EinsumDense:
    """The attention output projection `out`: [B, T, N, H] -> [B, T, E]."""
    return EinsumDense(
        kernel_shape=(cfg.num_heads, cfg.head_size, cfg.emb_dim),
        kernel_axes=("heads", "kv", "embed"),
        bias_shape=(cfg.emb_dim,),
        bias_axes=("embed",),
        equation="btnh,nhe->bte",
        kernel_std=_residual_std(cfg),
        use_bias=cfg.use_bias,
        dtype=compute_dtype(cfg.dtype),
        name="out",
    )


def position_table(module: nn.Module, cfg: TransformerConfig) -> jax.Array | None:
    """Declares `module`'s learned position table `wpe` [max_len, E] (call it in setup);
    None unless cfg.positions == 'learned'."""
    if cfg.positions != "learned":
        return None
    return module.param(
        "wpe",
        partitioned(nn.initializers.normal(0.02), (None, "embed")),
        (cfg.max_len, cfg.emb_dim),
        jnp.float32,
    )


def add_positions(
    cfg: TransformerConfig, x: jax.Array, positions: jax.Array, wpe: jax.Array | None
) -> jax.Array:
    """x [B, T, E] plus the learned (`wpe`) or sinusoidal embedding of positions [B, T].

    Rope rotates q and k inside attention instead, so then x comes back unchanged.
    """
    if cfg.positions == "learned":
        return x + jnp.take(wpe, positions, axis=0).astype(x.dtype)
    if cfg.positions == "sinusoidal":
        return x + sinusoidal_embedding(positions, cfg.emb_dim).astype(x.dtype)
    return x


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


def layer_stack(
    cfg: TransformerConfig,
    layer: type[nn.Module],
    num_layers: int,
    static_argnums: tuple[int, ...],
    in_axes: tuple[Any, ...],
    out_axes: Any = 0,
) -> nn.Module | list[nn.Module]:
    """`num_layers` layers `layer(cfg)`, built in a parent's setup.

    A list (params `blocks_i` once assigned to `self.blocks`), or with cfg.scan_layers one
    `nn.scan` over the layer (params `blocks` with a leading 'layers' axis; `in_axes` /
    `out_axes` say which arguments and outputs are per layer). With a remat policy each layer
    is wrapped in `nn.remat`; `static_argnums` (counting `self` as 0) are its Python flags.
    """
    if cfg.remat_policy != "none":
        layer = nn.remat(
            layer,
            policy=REMAT_POLICIES[cfg.remat_policy],
            prevent_cse=not cfg.scan_layers,  # scan already prevents CSE
            static_argnums=static_argnums,
        )
    if cfg.scan_layers:
        # One compiled layer body instead of num_layers copies: faster compiles, same function.
        return nn.scan(
            layer,
            # 'intermediates': what a layer sows for inspection (only when the caller makes the
            # collection mutable) comes back stacked per layer, like the params.
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=in_axes,
            out_axes=out_axes,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg)
    return [layer(cfg) for _ in range(num_layers)]


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

        q, k, v = project("query"), project("key"), project("value")  # [B, T, N, H]
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


class MLP(nn.Module):
    """[B, T, E] -> fc [E, M] -> activation -> proj [M, E] -> [B, T, E]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        dense = dict(use_bias=c.use_bias, dtype=compute_dtype(c.dtype), param_dtype=jnp.float32)
        h = nn.Dense(
            c.mlp_dim,
            kernel_init=partitioned(nn.initializers.normal(0.02), ("embed", "mlp")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
            name="fc",
            **dense,
        )(x)
        h = constrain(ACTIVATIONS[c.activation](h), ("batch", "length", "mlp"))
        return nn.Dense(
            c.emb_dim,
            kernel_init=partitioned(nn.initializers.normal(_residual_std(c)), ("mlp", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="proj",
            **dense,
        )(h)


class Block(nn.Module):
    """One transformer layer: [B, T, E] -> ([B, T, E], new layer cache or None).

    Arguments are positional (and `is_causal`, `deterministic` last) so the block can be wrapped
    by `nn.remat` (static_argnums) and `nn.scan` (in_axes) without keyword plumbing.
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
        deterministic: bool,
    ) -> tuple[jax.Array, Cache | None]:
        c = self.cfg
        attn = Attention(c, name="attn")
        mlp = MLP(c, name="mlp")
        ln_1, ln_2 = _layer_norm(c, "ln_1"), _layer_norm(c, "ln_2")
        drop = nn.Dropout(c.dropout)
        attn_args = (mask, positions, layer_cache, cache_index, is_causal)
        if c.norm == "pre":
            h, new_cache = attn(ln_1(x), *attn_args)
            x = x + drop(h, deterministic=deterministic)
            x = x + drop(mlp(ln_2(x)), deterministic=deterministic)
        else:
            h, new_cache = attn(x, *attn_args)
            x = ln_1(x + drop(h, deterministic=deterministic))
            x = ln_2(x + drop(mlp(x), deterministic=deterministic))
        return constrain(x, ("batch", "length", "embed")), new_cache


# How `layer_stack` wraps Block: is_causal (6) and deterministic (7) are Python flags; only the
# layer cache (argument 3) differs per layer.
BLOCK_STATIC_ARGNUMS = (6, 7)
BLOCK_SCAN_IN_AXES = (nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast, nn.broadcast)


class TransformerLM(nn.Module):
    """GPT-style LM. See the module docstring for shapes, param tree and cache layout.

    Calls (all through `model.apply({'params': p}, ..., rngs={'dropout': key})`):
      logits = model.apply(v, inputs, segment_ids=None, positions=None, deterministic=True)
      logits, cache = model.apply(v, tokens, cache=cache, cache_index=i)
      hidden = model.apply(v, inputs, ..., method='embed_and_hidden')     # [B, T, E]
      logits = model.apply(v, hidden, method='logits_from_hidden')
    """

    cfg: TransformerConfig

    def setup(self) -> None:
        c = self.cfg
        self.wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        self.wpe = position_table(self, c)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = layer_stack(c, Block, c.num_layers, BLOCK_STATIC_ARGNUMS, BLOCK_SCAN_IN_AXES)
        if c.norm == "pre":
            self.ln_f = _layer_norm(c)
        if not c.tie_embeddings:
            self.lm_head = Head(c.vocab_size, "embed", c.dtype)

    def __call__(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, Cache]:
        """[B, T] int32 -> float32 logits [B, T, V]; with a cache, (logits, new_cache)."""
        out = self.embed_and_hidden(inputs, segment_ids, positions, deterministic, cache, cache_index)
        if cache is None:
            return self.logits_from_hidden(out)
        hidden, new_cache = out
        return self.logits_from_hidden(hidden), new_cache

    def embed_and_hidden(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, Cache]:
        """Final hidden states [B, T, E] (after ln_f), i.e. the input of the output layer."""
        c = self.cfg
        b, t = inputs.shape
        if cache is not None and cache_index is None:
            raise ValueError("decoding with a cache needs cache_index (the first slot to write)")
        start = 0 if cache is None else cache_index
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))

        # A no-op unless a 'perturbations' collection is passed (adversarial training).
        x = self.perturb("embeddings", self.wte(inputs))
        x = add_positions(c, x, positions, self.wpe)
        x = constrain(self.drop(x, deterministic=deterministic), ("batch", "length", "embed"))

        if cache is None:
            mask = None if segment_ids is None else segment_mask(segment_ids, segment_ids)
            is_causal, kv, new_segments = True, None, None
        else:
            segs = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
            mask, new_segments = cached_attention_mask(cache["segment_ids"], segs, start)
            is_causal = False
            kv = cache["layers"] if "layers" in cache else {"k": cache["k"], "v": cache["v"]}

        if c.scan_layers:
            x, new_kv = self.blocks(x, mask, positions, kv, cache_index, is_causal, deterministic)
        else:
            new_layers = []
            for i, block in enumerate(self.blocks):
                if kv is None:
                    layer_kv = None
                elif isinstance(kv, list | tuple):  # per-layer arrays: updated in place
                    layer_kv = kv[i]
                else:
                    layer_kv = {"k": kv["k"][i], "v": kv["v"][i]}
                x, layer_kv = block(x, mask, positions, layer_kv, cache_index, is_causal, deterministic)
                new_layers.append(layer_kv)
            if kv is None or isinstance(kv, list | tuple):
                new_kv = new_layers
            else:
                new_kv = jax.tree.map(lambda *a: jnp.stack(a), *new_layers)

        if c.norm == "pre":
            x = self.ln_f(x)
        if cache is None:
            return x
        if isinstance(new_kv, list):
            return x, {"layers": new_kv, "segment_ids": new_segments}
        return x, {"k": new_kv["k"], "v": new_kv["v"], "segment_ids": new_segments}

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """[B, T, E] -> float32 logits [B, T, V]."""
        if self.cfg.tie_embeddings:
            logits = self.wte.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return constrain(logits, ("batch", "length", "vocab"))

    def init_cache(self, batch_size: int, max_len: int | None = None, per_layer: bool = False) -> Cache:
        """An empty KV cache (see the module docstring). Needs no params: call it unbound.

        `per_layer=True` (unscanned models) gives `{'layers': [{'k', 'v'} per layer],
        'segment_ids'}` with [B, N, S, H] arrays: each step then writes one slot of each
        layer's arrays in place, where the stacked [L, ...] layout re-stacks the whole cache.
        """
        c = self.cfg
        slots = max_len or c.max_len
        dt = compute_dtype(c.dtype)
        segments = jnp.zeros((batch_size, slots), jnp.int32)
        if per_layer:
            shape = (batch_size, c.num_heads, slots, c.head_size)
            layers = [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
                      for _ in range(c.num_layers)]
            return {"layers": layers, "segment_ids": segments}
        shape = (c.num_layers, batch_size, c.num_heads, slots, c.head_size)
        return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt), "segment_ids": segments}


def stack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """Unscanned params (blocks_0..blocks_{L-1}) -> scanned layout (`blocks`, leading L axis).

    Works on plain (unboxed) arrays; boxed params from `init` are unboxed first.
    """
    params = nn.meta.unbox(params)
    names = sorted((k for k in params if k.startswith("blocks_")), key=lambda k: int(k.split("_")[1]))
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    out["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *[params[n] for n in names])
    return out


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """Scanned params (`blocks` with a leading L axis) -> unscanned blocks_0..blocks_{L-1}."""
    params = nn.meta.unbox(params)
    out = {k: v for k, v in params.items() if k != "blocks"}
    num_layers = jax.tree.leaves(params["blocks"])[0].shape[0]
    for i in range(num_layers):
        out[f"blocks_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["blocks"])
    return out
