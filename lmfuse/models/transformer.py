"""The Transformer decoder stack, written once, and the decoder-only GPT-style LM built on it.

The same `TransformerDecoder` (with cross-attention) is the encoder-decoder's decoder
(`seq2seq_transformer`); without it, it is the body of `TransformerLM`:

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

KV cache for decoding (a plain pytree, passed in and returned; no mutable collections), one
layout for the LM and the encoder-decoder's decoder, batch first so a decoding state needs no
per-token layout moves:

    cache = model.init_cache(batch_size, max_len)
      {'layers': [{'k': [B, N, max_len, H], 'v': ...}] * L,   (scan_layers: one dict, [B, L, ...])
       'segment_ids': [B, max_len] int32}                     (0 = not written yet / padding)
    logits, cache = model.apply({'params': p}, tokens, cache=cache, cache_index=i)

`tokens` [B, C] is a chunk written at cache slots i .. i+C-1: the whole prompt (prefill) or one
token. Positions default to i + arange(C); pass `positions`/`segment_ids` for left-padded
prompts (padding gets segment 0, so real tokens never attend to it).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.attention import (
    Attention,
    Cache,
    CrossAttention,
    cached_attention_mask,
    cross_mask,
)
from lmfuse.models.layers import (
    Embed,
    Head,
    ModelConfig,
    compute_dtype,
    constrain,
    segment_mask,
)
from lmfuse.models.transformer_layers import (
    MLP,
    add_positions,
    layer_norm,
    position_table,
)

REMAT_POLICIES = {
    "none": None,
    "full": None,  # save nothing: recompute the whole block on the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}



@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig(ModelConfig):
    """Hyperparameters of `TransformerLM`; built from a model config by `registry.build_model`.
    Each field's default is its config key's one default (see `ModelConfig`)."""

    num_heads: int = 8
    head_dim: int = 0  # 0 means emb_dim // num_heads
    mlp_dim: int = 2048
    norm: str = "pre"  # 'pre' | 'post' LayerNorm
    positions: str = "learned"  # 'learned' | 'sinusoidal' | 'rope'
    max_len: int = 512  # learned position table size and default KV cache length
    activation: str = "gelu"  # 'gelu' (erf) | 'gelu_new' (tanh approx., GPT-2) | 'relu'
    layer_norm_epsilon: float = 1e-5
    use_bias: bool = True  # biases in the dense layers
    scan_layers: bool = False  # nn.scan over layers (params get a 'layers' axis)
    remat_policy: str = "none"  # 'none' | 'full' | 'dots' | 'dots_no_batch'
    # Passed to jax.nn.dot_product_attention: 'xla' | 'cudnn' (GPU, bf16).
    attention_impl: str = "xla"
    # Self-attention's query, key and value as one product, the attention projections on 2-D
    # rows (`attention.qkv_projection`): a faster CPU step, not bit-identical to the default.
    fused_qkv: bool = False

    @property
    def head_size(self) -> int:
        return self.head_dim or self.emb_dim // self.num_heads


def layer_stack(cfg: TransformerConfig, num_layers: int, cross_attention: bool = False
                ) -> nn.Module | list[nn.Module]:
    """`num_layers` Blocks, built in a parent's setup.

    A list (params `blocks_i` once assigned to `self.blocks`), or with cfg.scan_layers one
    `nn.scan` over the block (params `blocks` with a leading 'layers' axis; the layer cache
    and the new cache are per layer on axis 1, behind the batch). With a remat policy each
    block is wrapped in `nn.remat`, its Python flags static.
    """
    layer = Block
    if cfg.remat_policy != "none":
        layer = nn.remat(
            layer,
            policy=REMAT_POLICIES[cfg.remat_policy],
            prevent_cse=not cfg.scan_layers,  # scan already prevents CSE
            static_argnums=BLOCK_STATIC_ARGNUMS,
        )
    if cfg.scan_layers:
        # One compiled layer body instead of num_layers copies: faster compiles, same function.
        return nn.scan(
            layer,
            # 'intermediates': what a layer sows for inspection (only when the caller makes the
            # collection mutable) comes back stacked per layer, like the params.
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=BLOCK_SCAN_IN_AXES,
            out_axes=1,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, cross_attention=cross_attention)
    return [layer(cfg, cross_attention=cross_attention) for _ in range(num_layers)]


class Block(nn.Module):
    """One Transformer layer: self-attention, with `cross_attention` attention to an encoder's
    output, then the MLP: [B, T, E] -> ([B, T, E], new layer cache or None).

    pre-LN:  x = x + attn(ln_1(x));  x = x + cross_attn(ln_cross(x), memory);  x = x + mlp(ln_2(x))
    post-LN: x = ln_1(x + attn(x));  x = ln_cross(x + cross_attn(x, memory));  x = ln_2(x + mlp(x))

    `layer_cache` is None (teacher forcing) or {'k', 'v'} (+ 'cross_k', 'cross_v' once
    computed; `lmfuse.models.attention`). Arguments are positional so that `layer_stack` can
    remat and scan the block (BLOCK_STATIC_ARGNUMS, BLOCK_SCAN_IN_AXES).
    """

    cfg: TransformerConfig
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        self_mask: jax.Array | None,
        positions: jax.Array,
        layer_cache: Cache | None,
        cache_index: jax.Array | int | None,
        is_causal: bool,
        memory: jax.Array | None,
        memory_mask: jax.Array | None,
        zero_context: bool,
        deterministic: bool,
    ) -> tuple[jax.Array, Cache | None]:
        c = self.cfg
        attn, mlp = Attention(c, name="attn"), MLP(c, name="mlp")
        ln_1, ln_2 = layer_norm(c, "ln_1"), layer_norm(c, "ln_2")
        drop = nn.Dropout(c.dropout)
        pre = c.norm == "pre"

        def branch_input(y: jax.Array, ln: nn.LayerNorm) -> jax.Array:
            return ln(y) if pre else y

        def merge(y: jax.Array, branch: jax.Array, ln: nn.LayerNorm) -> jax.Array:
            y = y + drop(branch, deterministic=deterministic)
            return y if pre else ln(y)

        self_cache = memory_kv = None
        if layer_cache is not None:
            self_cache = {"k": layer_cache["k"], "v": layer_cache["v"]}
            if "cross_k" in layer_cache:
                memory_kv = {"k": layer_cache["cross_k"], "v": layer_cache["cross_v"]}

        h, self_cache = attn(
            branch_input(x, ln_1), self_mask, positions, self_cache, cache_index, is_causal
        )
        x = merge(x, h, ln_1)
        if self.cross_attention:
            ln_cross = layer_norm(c, "ln_cross")
            if zero_context:
                # The internal LM: the cross-attention branch adds exactly zero (post-LN still
                # normalises), and the encoder side is never read.
                x = merge(x, jnp.zeros_like(x), ln_cross)
            else:
                cross_attn = CrossAttention(c, name="cross_attn")
                h, memory_kv = cross_attn(branch_input(x, ln_cross), memory, memory_kv, memory_mask)
                x = merge(x, h, ln_cross)
        x = merge(x, mlp(branch_input(x, ln_2)), ln_2)

        new_cache = None
        if layer_cache is not None:
            new_cache = dict(self_cache)
            if memory_kv is not None:
                new_cache.update(cross_k=memory_kv["k"], cross_v=memory_kv["v"])
        return constrain(x, ("batch", "length", "embed")), new_cache


# How `layer_stack` wraps Block: is_causal (6), zero_context (9) and deterministic (10) are
# Python flags; the layer cache (argument 3) is per layer, on axis 1 of a scanned cache
# ([B, L, ...]), so the decoding state keeps the batch first.
BLOCK_STATIC_ARGNUMS = (6, 9, 10)
BLOCK_SCAN_IN_AXES = (nn.broadcast, nn.broadcast, 1) + (nn.broadcast,) * 6


def init_cache(cfg: TransformerConfig, batch_size: int, max_len: int | None = None) -> Cache:
    """An empty KV cache: {'layers': [{'k', 'v'}: [B, N, S, H]] * L (scan_layers: one dict of
    [B, L, N, S, H]), 'segment_ids': [B, S] int32 (0 = unwritten or padding)}, S = max_len."""
    slots = max_len or cfg.max_len
    dt = compute_dtype(cfg.dtype)

    def zeros(*layers: int) -> Cache:
        shape = (batch_size, *layers, cfg.num_heads, slots, cfg.head_size)
        return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}

    layers = zeros(cfg.num_layers) if cfg.scan_layers else [zeros() for _ in range(cfg.num_layers)]
    return {"layers": layers, "segment_ids": jnp.zeros((batch_size, slots), jnp.int32)}


def positions_or_arange(
    positions: jax.Array | None, b: int, t: int, start: jax.Array | int = 0
) -> jax.Array:
    if positions is not None:
        return positions
    return jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))


class TransformerDecoder(nn.Module):
    """The causal decoder stack, written once for the LM and the encoder-decoder: ids [B, T]
    -> hidden [B, T, E] (after ln_f for pre-LN); with a cache, (hidden, new cache).

    Embeds with its own table `wte`, or with `embed`, an `Embed` owned by the parent (the
    encoder-decoder shares one table with its encoder and output layer). With
    `cross_attention`, every layer also attends to `memory` [B, S, E], the encoder output, a
    target segment to its own source segment (`memory_segment_ids` [B, S]). Called through
    `hidden_states`; `TransformerLM` adds its `__call__` (logits) on top.
    """

    cfg: TransformerConfig
    embed: Embed | None = None
    cross_attention: bool = True

    def setup(self) -> None:
        c = self.cfg
        if self.embed is None:
            self.wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        self.wpe = position_table(self, c)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = layer_stack(c, c.num_layers, self.cross_attention)
        if c.norm == "pre":
            self.ln_f = layer_norm(c)

    def hidden_states(
        self,
        inputs: jax.Array,
        memory: jax.Array | None = None,
        memory_segment_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        zero_context: bool = False,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, Cache]:
        c = self.cfg
        b, t = inputs.shape
        if cache is not None and cache_index is None:
            raise ValueError("decoding with a cache needs cache_index (the first slot to write)")
        start = 0 if cache is None else cache_index
        positions = positions_or_arange(positions, b, t, start)

        table = self.wte if self.embed is None else self.embed
        # A no-op unless a 'perturbations' collection is passed (adversarial training).
        x = self.perturb("embeddings", table(inputs))
        x = add_positions(c, x, positions, self.wpe)
        x = constrain(self.drop(x, deterministic=deterministic), ("batch", "length", "embed"))

        if cache is None:
            self_mask = None if segment_ids is None else segment_mask(segment_ids, segment_ids)
            is_causal, layers, new_segments = True, None, None
        else:
            if segment_ids is None:
                segment_ids = jnp.ones((b, t), jnp.int32)
            self_mask, new_segments = cached_attention_mask(
                cache["segment_ids"], segment_ids.astype(jnp.int32), start
            )
            is_causal, layers = False, cache["layers"]
        memory_mask = None
        if self.cross_attention and not zero_context:
            memory_mask = cross_mask(segment_ids, memory_segment_ids, (b, t))

        def args(layer_cache):
            return (self_mask, positions, layer_cache, cache_index, is_causal, memory, memory_mask,
                    zero_context, deterministic)

        if c.scan_layers:
            x, new_layers = self.blocks(x, *args(layers))
        else:
            new_layers = []
            for i, block in enumerate(self.blocks):
                x, layer_cache = block(x, *args(None if layers is None else layers[i]))
                new_layers.append(layer_cache)

        if c.norm == "pre":
            x = self.ln_f(x)
        if cache is None:
            return x
        return x, {"layers": new_layers, "segment_ids": new_segments}


class TransformerLM(TransformerDecoder):
    """GPT-style LM: the decoder stack without cross-attention, plus its output layer. See the
    module docstring for shapes, param tree and cache layout.

    Calls (all through `model.apply({'params': p}, ..., rngs={'dropout': key})`):
      logits = model.apply(v, inputs, segment_ids=None, positions=None, deterministic=True)
      logits, cache = model.apply(v, tokens, cache=cache, cache_index=i)
      hidden = model.apply(v, inputs, ..., method='embed_and_hidden')     # [B, T, E]
      logits = model.apply(v, hidden, method='logits_from_hidden')
    """

    cross_attention: bool = False

    def setup(self) -> None:
        super().setup()
        if not self.cfg.tie_embeddings:
            self.lm_head = Head(self.cfg.vocab_size, "embed", self.cfg.dtype)

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
        return self.hidden_states(inputs, segment_ids=segment_ids, positions=positions,
                                  deterministic=deterministic, cache=cache,
                                  cache_index=cache_index)

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """[B, T, E] -> float32 logits [B, T, V]."""
        if self.cfg.tie_embeddings:
            logits = self.wte.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return constrain(logits, ("batch", "length", "vocab"))

    def init_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
        """An empty KV cache (see `init_cache`). Needs no params: call it unbound."""
        return init_cache(self.cfg, batch_size, max_len)


