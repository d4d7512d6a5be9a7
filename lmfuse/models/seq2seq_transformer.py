"""Transformer encoder-decoder (Vaswani et al. 2017) and a reusable bidirectional encoder.

    inputs [B, S] int32 (source + EOS, 0 = pad)
      -> encoder: wte (+ positions) -> dropout -> num_encoder_layers x Block (not causal,
         segment mask) -> ln_f (pre-LN only)                       encoded: [B, S, E]
    decoder_inputs [B, T] int32 (targets shifted right behind BOS, `layers.shift_right`)
      -> decoder (transformer.TransformerDecoder, the LM's stack with cross-attention):
         wte (+ positions) -> dropout -> num_layers x Block
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
`lmfuse.evaluate.inspect.cross_attention` collects them. Without that argument nothing is
computed or stored.

The first call with a cache (the prompt) projects `encoded` to each layer's cross-attention
keys and values ONCE and adds them to its layer as 'cross_k' / 'cross_v' [B, N, H, S]; later
calls read them and need no `encoded` (pass None). `lmfuse.decode.adapters` wraps this into
the `DecodeStep` contract.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from lmfuse.models.attention import Cache, cross_mask
from lmfuse.models.copy import CopyHead
from lmfuse.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from lmfuse.models.layers import Embed, Head, constrain, segment_mask
from lmfuse.models.transformer import (
    TransformerConfig,
    TransformerDecoder,
    init_cache,
    layer_stack,
    positions_or_arange,
)
from lmfuse.models.transformer_layers import add_positions, layer_norm, position_table


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seq2SeqTransformerConfig(TransformerConfig, EncoderDecoderConfig):
    """`TransformerConfig` (num_layers = decoder layers) plus the encoder-decoder's fields."""

    def encoder_config(self) -> TransformerConfig:
        """The encoder's config: these hyperparameters at the encoder's depth."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig)}
        fields["num_layers"] = self.num_encoder_layers or self.num_layers
        return TransformerConfig(**fields)


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
        self.blocks = layer_stack(c, c.num_layers)
        if c.norm == "pre":
            self.ln_f = layer_norm(c)

    def __call__(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """ids [B, S] -> [B, S, E]; None segment ids: no padding; None positions: arange."""
        c = self.cfg
        positions = positions_or_arange(positions, *inputs.shape)
        table = self.wte if self.embed is None else self.embed
        # A no-op unless a 'perturbations' collection is passed (adversarial training).
        x = self.perturb("embeddings", table(inputs))
        x = add_positions(c, x, positions, self.wpe)
        x = constrain(self.drop(x, deterministic=deterministic), ("batch", "length", "embed"))
        mask = None if segment_ids is None else segment_mask(segment_ids, segment_ids)
        # Not causal, no cache, no cross-attention (zero_context False).
        args = (mask, positions, None, None, False, None, None, False, deterministic)
        if c.scan_layers:
            x, _ = self.blocks(x, *args)
        else:
            for block in self.blocks:
                x, _ = block(x, *args)
        return self.ln_f(x) if c.norm == "pre" else x


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
        return self.decoder.hidden_states(
            decoder_inputs, memory=encoded, memory_segment_ids=inputs_segment_ids,
            segment_ids=decoder_segment_ids, positions=decoder_positions,
            deterministic=deterministic, zero_context=zero_context, cache=cache,
            cache_index=cache_index,
        )

    def _copy_mask(self, inputs, inputs_segment_ids, decoder_segment_ids, target_shape):
        """Target token i copies from the real tokens of source segment i (None segment ids:
        one segment, everything visible)."""
        mask = cross_mask(decoder_segment_ids, inputs_segment_ids, target_shape)
        if mask is not None:
            mask = mask[:, 0] & (inputs_segment_ids != 0)[:, None, :]
        return mask

    def init_cache(self, batch_size: int, max_len: int | None = None) -> Cache:
        """An empty decoder cache (`transformer.init_cache`). Needs no params: call it unbound."""
        return init_cache(self.cfg, batch_size, max_len)
