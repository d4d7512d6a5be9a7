"""RNN encoder-decoder with attention: a bidirectional LSTM/GRU encoder and an LSTM/GRU decoder
that attends over it, with Bahdanau (additive) or Luong (multiplicative) attention.

    inputs [B, S] int32 (source ids + EOS; 0 = pad)
      -> source_wte (wte when shared) [V, E] -> dropout                        [B, S, E]
      -> num_encoder_layers x (forward | backward RecurrentLayer), dropout after each
                                                                     memory h: [B, S, 2H]
    decoder_inputs [B, T] int32 (BOS + targets shifted right, per segment)
      -> wte [V, E] -> dropout                                              y: [B, T, E]
      -> decoder: num_layers x LSTM/GRU with attention over the memory     s: [B, T, H]
                                                                   context c: [B, T, 2H]
      -> readout tanh([c ; s] W_o + b_o) -> dropout                    hidden: [B, T, E]
      -> wte.attend (tied) or lm_head [E, V]                           logits: [B, T, V] float32

Attention (the softmax runs over the source positions of the target token's own segment, so
padding and the other examples of a packed row get weight exactly 0):
    bahdanau  e_tj = v^T tanh(W_s s_{t-1} + W_h h_j + b), with s_{t-1} the top decoder layer's
              previous state; c_t = sum_j a_tj h_j feeds the first decoder layer next to y_t
              ([y_t ; c_t]), so the attention runs inside the time scan (one `lax.scan` steps
              all layers). The readout then combines s_t with the c_t that produced it, as in
              Bahdanau's "deep output".
    luong     "general" score e_tj = s_t^T W h_j after the recurrence, and the attentional state
              h~_t = tanh(W_c [c_t ; s_t]) is the readout. No input feeding: the recurrence never
              reads c_t, so the decoder layers are plain `RecurrentLayer`s (hoisted input
              projection, fast backward pass) and attention is one batched matmul for all t.
              Input feeding would put attention inside the scan at bahdanau's cost, and the
              bahdanau variant already covers a context-fed recurrence.
`decode_hidden` returns the readout ([B, T, E]; h~_t for luong), the input of the output layer.
Its width is E so the output layer can be tied to the target embeddings whatever H is.

Initial decoder state: zeros, for every target segment. The decoder learns about the source
only through attention, which it already has at step 1. This makes `zero_context=True` (the
context vector zeroed) a decoder that never sees the source, i.e. a true internal LM for ILME,
where a state projected from the encoder would leak the source into it; packed rows and
left-padded prompts need nothing beyond the recurrent layers' segment resets.

Backward encoder direction: the whole row is reversed in time, run through the forward
`RecurrentLayer` with the segment starts of the reversed segment ids, and reversed back.
Reversing a packed row reverses the order of its segments and each segment's tokens, so the
carry resets at each segment's last token; padding is segment 0, a segment of its own, and never
reaches a real position in either direction.

Param tree (G = 4 gates for lstm, 3 for gru; logical axes in brackets):
    wte/embedding [V, E]                            ('vocab', 'embed')    target, shared source
    source_wte/embedding [V, E]                     ('vocab', 'embed')    share_embeddings=False
    encoder/layers_i/{forward,backward}/w_ih [D, G, H]   ('embed', 'gates', 'hidden'), D = E, 2H
    encoder/layers_i/{forward,backward}/w_hh [H, G, H]   ('embed', 'gates', 'hidden')
    encoder/layers_i/{forward,backward}/bias [G, H]      ('gates', 'hidden')
    encoder/layers_i/{forward,backward}/bias_hn [H]      ('hidden',)         gru only
    decoder/layers_i/{w_ih, w_hh, bias, bias_hn}    as the encoder's; w_ih [D, G, H] with
                                                    D = E + 2H (bahdanau) or E (luong), then H
    decoder/attention/key [2H, H]                   ('embed', 'hidden')   W_h (bahdanau), W (luong)
    decoder/attention/query [H, H]                  ('embed', 'hidden')   bahdanau only: W_s
    decoder/attention/bias [H]                      ('hidden',)           bahdanau only
    decoder/attention/energy [H]                    ('hidden',)           bahdanau only: v
    decoder/readout/kernel [2H + H, E]              ('hidden', 'embed'); bias [E] ('embed',)
    lm_head/kernel [E, V]                           ('embed', 'vocab')    tie_embeddings=False
    copy_head/query [E, H], key [2H, H]             ('embed', 'kv')       copy_source only
    copy_head/gate_kernel [E + 2H], gate_bias []    ('embed',), ()        copy_source only

copy_source=True (`lmfuse.models.copy`): the output is the pointer-generator mixture of the
vocab softmax and a copy of the source tokens, as normalised log-probs [B, T, V] float32. Its
pointer is an attention of its own (width H) from the readout over the memory, with the
attention's mask; `decode_hidden` and `logits_from_hidden` stay the generator's alone, and
`copy_log_probs` adds the copy. The internal LM (zero_context) never copies: with no source,
a copy model's internal LM is its generator, the vocab softmax of the zero-context decoder.

Decoding state (`lmfuse.decode.adapters`; every leaf has the batch as its leading axis):
    {'carry': {'h': [B, L, H], 'c': [B, L, H] (lstm only)},   float32
     'memory': [B, S, 2H], 'keys': [B, S, H] (W_h h_j + b, or W h_j: computed once),
     'memory_segment_ids': [B, S] int32 (0 = pad),
     'copy': {'keys': [B, S, H] pointer keys, 'source_ids': [B, S] int32}}   copy_source only
bahdanau needs no previous context in the state: c_t is computed from s_{t-1}, the carry.

Inspection: applied with `mutable=['intermediates']`, the decoder sows its attention weights
[B, T, S] as intermediates/decoder/cross_attention (`lmfuse.evaluate.inspect.cross_attention`).

Adversarial training perturbs the embeddings through the 'source_embeddings' and
'target_embeddings' hooks (`self.perturb`; no-ops unless a 'perturbations' collection is given).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.copy import CopyHead
from lmfuse.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from lmfuse.models.layers import Embed, Head, compute_dtype, constrain, partitioned, segment_starts
from lmfuse.models.rnn import (
    NUM_GATES,
    Carry,
    Encoder,
    RecurrentLayer,
    RNNConfig,
    _bias_init,
    zero_carry,
)
from lmfuse.models.rnn_attention import (
    AttentionWeights,
    attention_mask,
    bahdanau_scan,
    masked_softmax,
    weighted_memory,
)

Params = Any
State = dict[str, Any]

@dataclasses.dataclass(frozen=True, kw_only=True)
class Seq2SeqRNNConfig(RNNConfig, EncoderDecoderConfig):
    """Hyperparameters of `Seq2SeqRNN`: `RNNConfig` (cell 'lstm' | 'gru'; num_layers = decoder
    layers; num_encoder_layers = bidirectional encoder layers) plus the encoder-decoder's
    fields and the attention. hoist_input_projection applies to the encoder and the luong
    decoder; the bahdanau decoder always hoists its embedding part (the context part is per
    step)."""

    attention: str = "bahdanau"  # 'bahdanau' (additive) | 'luong' (multiplicative, "general")

    @property
    def encoder_layers(self) -> int:
        return self.num_encoder_layers or self.num_layers

    def rnn_config(self) -> RNNConfig:
        """The `RNNConfig` the shared recurrent layers read (cell, H, dtype, hoisting)."""
        return RNNConfig(
            vocab_size=self.vocab_size, cell=self.cell, emb_dim=self.emb_dim,
            hidden_dim=self.hidden_dim, dtype=self.dtype,
            hoist_input_projection=self.hoist_input_projection,
        )


class CellWeights(nn.Module):
    """The weights of one recurrent layer, named and initialised as `RecurrentLayer`'s, returned
    as arrays (matrices in the compute dtype) for a decoder that steps the cell itself."""

    cfg: RNNConfig
    input_dim: int

    @nn.compact
    def __call__(self) -> dict[str, jax.Array | None]:
        c, d = self.cfg, self.input_dim
        g, h = NUM_GATES[c.cell], c.hidden_dim
        dt = compute_dtype(c.dtype)
        axes = ("embed", "gates", "hidden")
        normal = nn.initializers.normal

        def param(name, init, logical_axes, shape):
            return self.param(name, partitioned(init, logical_axes), shape, jnp.float32)

        w_ih = param("w_ih", normal(d**-0.5), axes, (d, g, h))
        w_hh = param("w_hh", normal(h**-0.5), axes, (h, g, h))
        bias = param("bias", _bias_init(c.cell), ("gates", "hidden"), (g, h))
        bias_hn = None
        if c.cell == "gru":
            bias_hn = param("bias_hn", nn.initializers.zeros, ("hidden",), (h,))
        return {"w_ih": w_ih.astype(dt), "w_hh": w_hh.astype(dt), "bias": bias, "bias_hn": bias_hn}


class Decoder(nn.Module):
    """The attentional decoder: y [B, T, E] -> (readout [B, T, E], weights [B, T, S], carry)."""

    cfg: Seq2SeqRNNConfig

    def setup(self) -> None:
        c = self.cfg
        rc = c.rnn_config()
        self.attention = AttentionWeights(c)
        if c.attention == "bahdanau":
            widths = [c.emb_dim + 2 * c.hidden_dim] + [c.hidden_dim] * (c.num_layers - 1)
            self.layers = [CellWeights(rc, d) for d in widths]
        else:
            self.layers = [RecurrentLayer(rc) for _ in range(c.num_layers)]
        readout_std = (3 * c.hidden_dim) ** -0.5
        self.readout = nn.Dense(
            c.emb_dim,
            dtype=compute_dtype(c.dtype),
            param_dtype=jnp.float32,
            kernel_init=partitioned(nn.initializers.normal(readout_std), ("hidden", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        )
        self.drop = nn.Dropout(c.dropout)

    def project_keys(self, memory: jax.Array) -> jax.Array:
        """memory [B, S, 2H] -> attention keys [B, S, H] float32 (W_h h_j + b, or W h_j)."""
        attn = self.attention()
        memory = memory.astype(attn["key"].dtype)
        keys = jnp.einsum("bsd,dk->bsk", memory, attn["key"], preferred_element_type=jnp.float32)
        if "bias" in attn:
            keys = keys + attn["bias"]
        return constrain(keys, ("batch", "length", "hidden"))

    def __call__(
        self,
        y: jax.Array,
        keep: jax.Array | None,
        mask: jax.Array,
        memory: jax.Array,
        keys: jax.Array,
        carry: Carry,
        deterministic: bool,
        zero_context: bool,
    ) -> tuple[jax.Array, jax.Array, Carry]:
        c = self.cfg
        b, t = y.shape[:2]
        if c.attention == "bahdanau":
            drop_masks = None
            if not deterministic and c.dropout > 0 and c.num_layers > 1:
                ones = jnp.ones((c.num_layers - 1, b, t, c.hidden_dim), jnp.float32)
                drop_masks = self.drop(ones, deterministic=False)
            layers = [layer() for layer in self.layers]
            states, context, weights, carry = bahdanau_scan(
                c.cell, layers, self.attention(), y, keep, mask, drop_masks, carry, memory, keys,
                zero_context,
            )
            states = self.drop(states, deterministic=deterministic)
        else:
            states, new_layers = y, []
            for i, layer in enumerate(self.layers):
                layer_carry = jax.tree.map(lambda a, i=i: a[i], carry)
                states, layer_carry = layer(states, keep, layer_carry)
                states = self.drop(states, deterministic=deterministic)
                new_layers.append(layer_carry)
            carry = jax.tree.map(lambda *a: jnp.stack(a), *new_layers)
            if zero_context:
                weights = jnp.zeros((b, t, memory.shape[1]), jnp.float32)
                context = jnp.zeros((b, t, memory.shape[-1]), jnp.float32)
            else:
                queries = states.astype(keys.dtype)
                f32 = jnp.float32
                scores = jnp.einsum("bth,bsh->bts", queries, keys, preferred_element_type=f32)
                weights = masked_softmax(scores, mask)
                context = weighted_memory(weights, memory)
        # A no-op unless the caller makes 'intermediates' mutable (`lmfuse.evaluate.inspect`).
        self.sow("intermediates", "cross_attention", weights)
        states = constrain(states, ("batch", "length", "hidden"))
        context = constrain(context, ("batch", "length", "hidden"))
        dt = compute_dtype(c.dtype)
        readout_in = jnp.concatenate([context.astype(dt), states.astype(dt)], axis=-1)
        hidden = self.drop(jnp.tanh(self.readout(readout_in)), deterministic=deterministic)
        return constrain(hidden, ("batch", "length", "embed")), weights, carry


class Seq2SeqRNN(EncoderDecoder):
    """RNN encoder-decoder with attention. See the module docstring for shapes, params, state.

    Calls (all through `model.apply({'params': p}, ..., rngs={'dropout': key})`):
      logits = model.apply(v, inputs, decoder_inputs, inputs_segment_ids=None,
                           decoder_segment_ids=None, inputs_positions=None,
                           decoder_positions=None, deterministic=True)      # [B, T, V]
      encoded = model.apply(v, inputs, segment_ids, positions, deterministic, method='encode')
      hidden = model.apply(v, encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids,
                           decoder_positions, deterministic, zero_context, method='decode_hidden')
      logits = model.apply(v, hidden, method='logits_from_hidden')
      weights = model.apply(v, encoded, inputs_segment_ids, decoder_inputs, ...,
                            method='attention_weights')                     # [B, T, S]
      log_probs = model.apply(v, hidden, logits, encoded, inputs, inputs_segment_ids,
                              decoder_segment_ids, method='copy_log_probs')  # copy_source
    None segment ids mean one segment without padding; positions are accepted for a uniform
    contract and ignored (order comes from the recurrence).
    """

    cfg: Seq2SeqRNNConfig

    def setup(self) -> None:
        c = self.cfg
        self.wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        if not c.share_embeddings:
            self.source_wte = Embed(c.vocab_size, c.emb_dim, c.dtype)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.drop = nn.Dropout(c.dropout)
        if not c.tie_embeddings:
            self.lm_head = Head(c.vocab_size, "embed", c.dtype)
        if c.copy_source:
            self.copy_head = CopyHead(c.emb_dim, 2 * c.hidden_dim, c.hidden_dim, c.dtype)

    def encode(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Source [B, S] int32 -> encoder memory [B, S, 2H] in the compute dtype."""
        del positions
        table = self.wte if self.cfg.share_embeddings else self.source_wte
        # perturb: a no-op unless a 'perturbations' collection is passed (adversarial training).
        x = self.perturb("source_embeddings", table(inputs))
        x = constrain(self.drop(x, deterministic=deterministic), ("batch", "length", "embed"))
        return self.encoder(x, segment_ids, deterministic)

    def attention_keys(self, encoded: jax.Array) -> jax.Array:
        """Encoder memory [B, S, 2H] -> attention keys [B, S, H] (decoding computes them once)."""
        return self.decoder.project_keys(encoded)

    def decode_hidden(
        self,
        encoded: jax.Array,
        inputs_segment_ids: jax.Array | None,
        decoder_inputs: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        zero_context: bool = False,
        *,
        keys: jax.Array | None = None,
        carry: Carry | None = None,
        return_carry: bool = False,
    ) -> jax.Array | tuple[jax.Array, Carry]:
        """The readout [B, T, E] that feeds the output layer (after dropout).

        `zero_context` zeroes the attention context (the internal LM). `keys` are
        `attention_keys(encoded)` if already computed; `carry` ({'h': [L, B, H], ...}, zeros by
        default) continues an earlier call, and `return_carry` also returns the final carry.
        """
        hidden, _, new_carry = self._decode(
            encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids, decoder_positions,
            deterministic, zero_context, keys, carry,
        )
        return (hidden, new_carry) if return_carry else hidden

    def attention_weights(
        self,
        encoded: jax.Array,
        inputs_segment_ids: jax.Array | None,
        decoder_inputs: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Attention weights [B, T, S] float32 of each decoder step over the source."""
        _, weights, _ = self._decode(
            encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids, decoder_positions,
            deterministic, False, None, None,
        )
        return weights

    def _copy_mask(self, inputs, inputs_segment_ids, decoder_segment_ids, target_shape):
        """A target token copies from the real source tokens of its own segment, as it
        attends."""
        return attention_mask(inputs_segment_ids, decoder_segment_ids, inputs.shape, target_shape)

    def init_carry(self, batch_size: int) -> Carry:
        """A zero decoder carry {'h': [L, B, H], 'c' (lstm)}. Needs no params: call it unbound."""
        c = self.cfg
        return zero_carry(c.cell, (c.num_layers, batch_size, c.hidden_dim))

    def _decode(
        self, encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids, decoder_positions,
        deterministic, zero_context, keys, carry,
    ) -> tuple[jax.Array, jax.Array, Carry]:
        del decoder_positions
        b, t = decoder_inputs.shape
        mask = attention_mask(inputs_segment_ids, decoder_segment_ids, encoded.shape[:2], (b, t))
        keep = None if decoder_segment_ids is None else segment_starts(decoder_segment_ids)
        if keys is None:
            keys = self.attention_keys(encoded)
        if carry is None:
            carry = self.init_carry(b)
        y = self.perturb("target_embeddings", self.wte(decoder_inputs))
        y = constrain(self.drop(y, deterministic=deterministic), ("batch", "length", "embed"))
        return self.decoder(y, keep, mask, encoded, keys, carry, deterministic, zero_context)


