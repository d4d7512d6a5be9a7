"""Transformer encoder-decoder (Vaswani et al. 2017) and a reusable bidirectional encoder.

    inputs [B, S] int32 (source + EOS, 0 = pad)
      -> encoder: wte (+ positions) -> dropout -> num_encoder_layers x Block (not causal,
         segment mask) -> ln_f (pre-LN only)                       encoded: [B, S, E]
    decoder_inputs [B, T] int32 (targets shifted right behind BOS, `layers.shift_right`)
      -> decoder: wte (+ positions) -> dropout -> num_layers x DecoderBlock
           pre-LN:  x = x + attn(ln_1(x));  x = x + cross_attn(ln_cross(x), encoded);
                    x = x + mlp(ln_2(x))
           post-LN: x = ln_1(x + attn(x));  x = ln_cross(x + cross_attn(x, encoded));
                    x = ln_2(x + mlp(x))
         attn is causal self-attention (the TransformerLM's), cross_attn attends from the i-th
         target segment to the i-th source segment only
      -> ln_f (pre-LN only)                                        hidden: [B, T, E]
      -> wte.attend (tied) or lm_head [E, V]                       logits: [B, T, V] float32

Positions ('learned' | 'sinusoidal' | 'rope') work as in the TransformerLM, separately in the
encoder and the decoder; rope rotates only self-attention (source and target positions are
not comparable). `zero_context=True` zeroes every cross-attention output: the decoder alone is
then the model's internal LM (ILME fusion).

Param tree (unscanned; with scan_layers=True each blocks_i becomes one `blocks` subtree whose
leaves have a leading [layers] axis, as in the TransformerLM):

    wte/embedding [V, E]                       ('vocab', 'embed')  target table; also the source
                                                                   table if share_embeddings
    encoder/wte/embedding [V, E]               source table, share_embeddings=False only
    encoder/wpe [max_len, E]                   (None, 'embed')     positions='learned' only
    encoder/blocks_i/...                       TransformerLM blocks (ln_1, attn, ln_2, mlp)
    encoder/ln_f/{scale,bias} [E]              pre-LN only
    decoder/wpe [max_len, E]                   positions='learned' only
    decoder/blocks_i/ln_1, attn, ln_2, mlp     as in a TransformerLM block
    decoder/blocks_i/ln_cross/{scale,bias} [E]
    decoder/blocks_i/cross_attn/{query,key,value}/kernel [E, N, H]; bias [N, H]
    decoder/blocks_i/cross_attn/out/kernel [N, H, E]; bias [E]
    decoder/ln_f/{scale,bias} [E]              pre-LN only
    lm_head/kernel [E, V]                      ('embed', 'vocab'), untied only
    copy_head/{query,key} [E, head_size], gate_kernel [2E], gate_bias []   copy_source only

copy_source=True (`lmfuse.models.copy`): the output is the pointer-generator mixture of the
vocab softmax and a copy of the source tokens, as normalised log-probs [B, T, V] float32; its
pointer attends from the top decoder state to the encoder output (one head of head_size),
over the real source tokens of the target token's own segment. `decode_hidden` and
`logits_from_hidden` stay the generator's alone; `copy_log_probs` adds the copy. The internal
LM (zero_context) never copies: with no source, a copy model's internal LM is its generator,
the vocab softmax of the zero-context decoder.

Decoder cache (a plain pytree, passed in and returned; every leaf has the batch first):

    cache = model.init_cache(batch_size, max_len)
      {'layers': [{'k': [B, N, max_len, H], 'v': ...}] * L,      (scanned: one dict, [B, L, ...])
       'segment_ids': [B, max_len] int32}                         (0 = unwritten / padding)
    hidden, cache = model.apply(v, encoded, inputs_segment_ids, tokens, ..., cache=cache,
                                cache_index=i, method='decode_hidden')

Inspection: applied with `mutable=['intermediates']`, each decoder layer sows its
cross-attention weights [B, N, T, S] as intermediates/decoder/blocks_i/cross_attn/
cross_attention (scanned: decoder/blocks/..., with a leading [layers] axis);
`lmfuse.models.inspect.cross_attention` collects them. Without that argument nothing is
computed or stored.

The first call with a cache (the prompt) projects `encoded` to each layer's cross-attention
keys and values ONCE and adds them to its layer as 'cross_k' / 'cross_v' [B, N, S, H]; later
calls read them and need no `encoded` (pass None). `decode_init` / `decode_step` wrap this into
the `DecodeStep` contract of `lmfuse.decode`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.data.tokenizer import PAD_ID
from lmfuse.decode.step import _prompt_layout
from lmfuse.models.copy import CopyHead
from lmfuse.models.encoder_decoder import EncoderDecoder
from lmfuse.models.layers import Embed, Head, compute_dtype, constrain, segment_mask
from lmfuse.models.transformer import (
    BLOCK_SCAN_IN_AXES,
    BLOCK_STATIC_ARGNUMS,
    MLP,
    Attention,
    Block,
    TransformerConfig,
    _layer_norm,
    add_positions,
    cached_attention_mask,
    heads_projection,
    layer_stack,
    output_projection,
    position_table,
)

Cache = dict[str, Any]
State = dict[str, Any]
Params = Any


@dataclasses.dataclass(frozen=True)
class Seq2SeqTransformerConfig(TransformerConfig):
    """`TransformerConfig` (num_layers = decoder layers) plus the encoder-decoder's own fields."""

    num_encoder_layers: int = 0  # 0 means num_layers
    share_embeddings: bool = True  # one table for source, target (and the tied output layer)
    copy_source: bool = False  # pointer-generator output (lmfuse.models.copy)

    def encoder_config(self) -> TransformerConfig:
        """The encoder's config: these hyperparameters at the encoder's depth."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
        fields["num_layers"] = self.num_encoder_layers or self.num_layers
        return TransformerConfig(**fields)


def _positions_or_arange(
    positions: jax.Array | None, b: int, t: int, start: jax.Array | int = 0
) -> jax.Array:
    if positions is not None:
        return positions
    return jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))


class TransformerEncoder(nn.Module):
    """Bidirectional Transformer stack: ids [B, S] -> [B, S, E] (after ln_f for pre-LN).

    Embeds with its own table `wte`, or with `embed`, an `Embed` owned by the parent (to share
    one table between encoder, decoder and output layer). Padding (segment 0) attends only to
    padding, and packed segments never see each other.
    """

    cfg: TransformerConfig
    embed: Embed | None = None

    def setup(self) -> None:
        c = self.cfg
        if self.embed is None:
            self.wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        self.wpe = position_table(self, c)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = layer_stack(c, Block, c.num_layers, BLOCK_STATIC_ARGNUMS, BLOCK_SCAN_IN_AXES)
        if c.norm == "pre":
            self.ln_f = _layer_norm(c)

    def __call__(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """ids [B, S] -> [B, S, E]; None segment ids: no padding; None positions: arange."""
        c = self.cfg
        positions = _positions_or_arange(positions, *inputs.shape)
        table = self.wte if self.embed is None else self.embed
        # A no-op unless a 'perturbations' collection is passed (adversarial training).
        x = self.perturb("embeddings", table(inputs))
        x = add_positions(c, x, positions, self.wpe)
        x = constrain(self.drop(x, deterministic=deterministic), ("batch", "length", "embed"))
        mask = None if segment_ids is None else segment_mask(segment_ids, segment_ids)
        args = (mask, positions, None, None, False, deterministic)
        if c.scan_layers:
            x, _ = self.blocks(x, *args)
        else:
            for block in self.blocks:
                x, _ = block(x, *args)
        return self.ln_f(x) if c.norm == "pre" else x


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

    `memory_kv` ({'k', 'v'}: [B, N, S, H], the KV-cache layout) is projected from `memory`
    [B, S, E] when not given, and returned, so a decoder can compute it once and reuse it.
    `mask` is bool [B, 1, T, S] or None.
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

        if memory_kv is None:
            if memory is None:
                raise ValueError("cross-attention needs the encoder output or its cached keys")
            k, v = (project(n, memory).transpose(0, 2, 1, 3) for n in ("key", "value"))
            memory_kv = {"k": k, "v": v}
        q = project("query", x)
        k, v = (memory_kv[n].transpose(0, 2, 1, 3) for n in ("k", "v"))
        if self.is_mutable_collection("intermediates"):
            # For inspection only (`lmfuse.models.inspect`): the fused attention below does not
            # return its weights, so they are recomputed, and only when a caller asks for them.
            self.sow("intermediates", "cross_attention", attention_weights(q, k, mask))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=c.attention_impl)
        return output_projection(c)(out), memory_kv


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention, MLP: [B, T, E] -> ([B, T, E], new layer cache or None).

    `layer_cache` is None (teacher forcing) or {'k', 'v'} (+ 'cross_k', 'cross_v' once
    computed); see the module docstring. Arguments are positional so that `layer_stack` can
    remat and scan the block (DECODER_STATIC_ARGNUMS, DECODER_SCAN_IN_AXES).
    """

    cfg: TransformerConfig

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
        cross_mask: jax.Array | None,
        zero_context: bool,
        deterministic: bool,
    ) -> tuple[jax.Array, Cache | None]:
        c = self.cfg
        attn, mlp = Attention(c, name="attn"), MLP(c, name="mlp")
        cross_attn = CrossAttention(c, name="cross_attn")
        ln_1, ln_cross, ln_2 = (_layer_norm(c, n) for n in ("ln_1", "ln_cross", "ln_2"))
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
        if zero_context:
            # The internal LM: the cross-attention branch adds exactly zero (post-LN still
            # normalises), and the encoder side is never read.
            x = merge(x, jnp.zeros_like(x), ln_cross)
        else:
            h, memory_kv = cross_attn(branch_input(x, ln_cross), memory, memory_kv, cross_mask)
            x = merge(x, h, ln_cross)
        x = merge(x, mlp(branch_input(x, ln_2)), ln_2)

        new_cache = None
        if layer_cache is not None:
            new_cache = dict(self_cache)
            if memory_kv is not None:
                new_cache.update(cross_k=memory_kv["k"], cross_v=memory_kv["v"])
        return constrain(x, ("batch", "length", "embed")), new_cache


# How `layer_stack` wraps DecoderBlock: is_causal (6), zero_context (9) and deterministic (10)
# are Python flags; the layer cache (argument 3) is per layer, on axis 1 of a scanned cache
# ([B, L, ...]), so the decode state keeps the batch first.
DECODER_STATIC_ARGNUMS = (6, 9, 10)
DECODER_SCAN_IN_AXES = (nn.broadcast, nn.broadcast, 1) + (nn.broadcast,) * 6


def _cross_mask(
    query_segments: jax.Array | None, memory_segments: jax.Array | None, shape: tuple[int, int]
) -> jax.Array | None:
    """[B, 1, T, S]: target segment i sees source segment i (queries of `shape` [B, T] are one
    segment when None); None, i.e. everything visible, without source segment ids."""
    if memory_segments is None:
        return None
    if query_segments is None:
        query_segments = jnp.ones(shape, jnp.int32)
    return segment_mask(query_segments, memory_segments)


class TransformerDecoder(nn.Module):
    """Causal decoder stack with cross-attention: ids [B, T] -> hidden [B, T, E].

    Embeds with `embed` (owned by the parent, which also uses it as the tied output layer).
    `memory` [B, S, E] is the encoder output, `memory_segment_ids` [B, S] its segment ids; with
    a cache, (hidden, new_cache) as described in the module docstring.
    """

    cfg: TransformerConfig
    embed: Embed

    def setup(self) -> None:
        c = self.cfg
        self.wpe = position_table(self, c)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = layer_stack(
            c, DecoderBlock, c.num_layers, DECODER_STATIC_ARGNUMS, DECODER_SCAN_IN_AXES, out_axes=1
        )
        if c.norm == "pre":
            self.ln_f = _layer_norm(c)

    def __call__(
        self,
        inputs: jax.Array,
        memory: jax.Array | None,
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
        positions = _positions_or_arange(positions, b, t, start)

        # A no-op unless a 'perturbations' collection is passed (adversarial training).
        x = self.perturb("embeddings", self.embed(inputs))
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
        cross_mask = None if zero_context else _cross_mask(segment_ids, memory_segment_ids, (b, t))

        def args(layer_cache):
            return (self_mask, positions, layer_cache, cache_index, is_causal, memory, cross_mask,
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


class Seq2SeqTransformer(EncoderDecoder):
    """Transformer encoder-decoder. See the module docstring for shapes, param tree and cache.

    Calls (all through `model.apply({'params': p}, ..., rngs={'dropout': key})`):
      logits = model.apply(v, inputs, decoder_inputs, inputs_segment_ids=None,
                           decoder_segment_ids=None, inputs_positions=None,
                           decoder_positions=None, deterministic=True)    # [B, T, V] float32
      encoded = model.apply(v, inputs, segment_ids, positions, deterministic, method='encode')
      hidden = model.apply(v, encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids,
                           decoder_positions, deterministic, zero_context=False,
                           method='decode_hidden')                        # [B, T, E]
      logits = model.apply(v, hidden, method='logits_from_hidden')
      log_probs = model.apply(v, hidden, logits, encoded, inputs, inputs_segment_ids,
                              decoder_segment_ids, method='copy_log_probs')  # copy_source
    None segment ids mean one segment without padding; None positions mean arange.
    """

    cfg: Seq2SeqTransformerConfig

    def setup(self) -> None:
        c = self.cfg
        self.wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        self.encoder = TransformerEncoder(
            c.encoder_config(), embed=self.wte if c.share_embeddings else None
        )
        self.decoder = TransformerDecoder(c, embed=self.wte)
        if not c.tie_embeddings:
            self.lm_head = Head(c.vocab_size, "embed", c.dtype)
        if c.copy_source:
            self.copy_head = CopyHead(c.emb_dim, c.emb_dim, c.head_size, c.dtype)

    def encode(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Source ids [B, S] -> encoder states [B, S, E]."""
        return self.encoder(inputs, segment_ids, positions, deterministic)

    def decode_hidden(
        self,
        encoded: jax.Array | None,
        inputs_segment_ids: jax.Array | None,
        decoder_inputs: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        zero_context: bool = False,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
    ) -> jax.Array | tuple[jax.Array, Cache]:
        """The decoder states s_t [B, T, E] that feed the output layer; with a cache,
        (hidden, new_cache). `encoded` may be None with zero_context or a filled cache."""
        return self.decoder(
            decoder_inputs, encoded, inputs_segment_ids, decoder_segment_ids, decoder_positions,
            deterministic, zero_context, cache, cache_index,
        )

    def copy_log_probs(
        self,
        hidden: jax.Array,
        logits: jax.Array,
        encoded: jax.Array,
        inputs: jax.Array,
        inputs_segment_ids: jax.Array | None,
        decoder_segment_ids: jax.Array | None = None,
        keys: jax.Array | None = None,
    ) -> jax.Array:
        """The copy_source output: hidden [B, T, E] and its vocab logits [B, T, V], encoder
        output [B, S, E] of source ids [B, S] -> log-probs [B, T, V] float32. Target token i
        copies from the real tokens of source segment i (None segment ids: one segment)."""
        mask = _cross_mask(decoder_segment_ids, inputs_segment_ids, hidden.shape[:2])
        if mask is not None:
            mask = mask[:, 0] & (inputs_segment_ids != 0)[:, None, :]
        return self.copy_head(hidden, logits, encoded, inputs, mask, keys)

    def init_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
        """An empty decoder cache (see the module docstring). Needs no params: call it unbound."""
        c = self.cfg
        slots = max_len or c.max_len
        dt = compute_dtype(c.dtype)

        def zeros(*layers: int) -> Cache:
            shape = (batch_size, *layers, c.num_heads, slots, c.head_size)
            return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}

        layers = zeros(c.num_layers) if c.scan_layers else [zeros() for _ in range(c.num_layers)]
        return {"layers": layers, "segment_ids": jnp.zeros((batch_size, slots), jnp.int32)}


def decode_init(
    model: Seq2SeqTransformer,
    params: Params,
    batch: dict[str, jax.Array],
    max_len: int,
    zero_context: bool = False,
) -> tuple[jax.Array, State]:
    """Encodes `batch['inputs']` (right-padded) once and prefills the decoder with
    `batch['prompt']` (padded on either side): (logits [B, V] of the first new token, state).

    State: {'cache': the decoder cache (cross-attention keys included), 'inputs_segment_ids'
    [B, S], 'position' [B] (next position per row), 'index' (next cache slot, 0-d)}, and with
    copy_source 'copy': {'memory': encoder output [B, S, E], 'keys': pointer keys
    [B, S, head_size], 'source_ids' [B, S]}. With zero_context the encoder is skipped, the
    cache holds no cross-attention keys and nothing is copied (the internal LM).
    """
    variables = {"params": params}
    tokens, segments, positions = _prompt_layout(batch["prompt"])
    inputs = batch["inputs"].astype(jnp.int32)
    source_segments = (inputs != PAD_ID).astype(jnp.int32)
    encoded = None
    if not zero_context:
        encoded = model.apply(variables, inputs, source_segments, None, True, method="encode")
    hidden, cache = model.apply(
        variables, encoded, source_segments, tokens, segments, positions, True, zero_context,
        model.init_cache(tokens.shape[0], max_len), 0, method="decode_hidden",
    )
    logits = model.apply(variables, hidden[:, -1:], method="logits_from_hidden")
    state = {
        "cache": cache,
        "inputs_segment_ids": source_segments,
        "position": positions[:, -1] + 1,  # rows differ when the prompt is padded
        "index": jnp.asarray(tokens.shape[1], jnp.int32),
    }
    if model.cfg.copy_source and not zero_context:
        keys = model.apply(variables, encoded, method="copy_keys")
        state["copy"] = {"memory": encoded, "keys": keys, "source_ids": inputs}
        logits = _copy(model, variables, state, hidden[:, -1:], logits, segments[:, -1:])
    return logits[:, 0], state


def decode_step(
    model: Seq2SeqTransformer,
    params: Params,
    state: State,
    tokens: jax.Array,
    zero_context: bool = False,
) -> tuple[jax.Array, State]:
    """Feeds tokens [B] at the next position: (logits [B, V] of the token after, new state)."""
    variables = {"params": params}
    hidden, cache = model.apply(
        variables, None, state["inputs_segment_ids"], tokens[:, None].astype(jnp.int32), None,
        state["position"][:, None], True, zero_context, state["cache"], state["index"],
        method="decode_hidden",
    )
    logits = model.apply(variables, hidden, method="logits_from_hidden")
    if model.cfg.copy_source and not zero_context:
        logits = _copy(model, variables, state, hidden, logits, None)
    new_state = {
        **state,
        "cache": cache,
        "position": state["position"] + 1,
        "index": state["index"] + 1,
    }
    return logits[:, 0], new_state


def _copy(
    model: Seq2SeqTransformer,
    variables: dict[str, Params],
    state: State,
    hidden: jax.Array,
    logits: jax.Array,
    segments: jax.Array | None,
) -> jax.Array:
    """The copy_source output for decoder states [B, 1, E] from the state's 'copy' entry."""
    copy = state["copy"]
    return model.apply(
        variables, hidden, logits, copy["memory"], copy["source_ids"],
        state["inputs_segment_ids"], segments, copy["keys"], method="copy_log_probs",
    )
