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

Decoding state (`decode_init` / `decode_step`; every leaf has the batch as its leading axis):
    {'carry': {'h': [B, L, H], 'c': [B, L, H] (lstm only)},   float32
     'memory': [B, S, 2H], 'keys': [B, S, H] (W_h h_j + b, or W h_j: computed once),
     'memory_segment_ids': [B, S] int32 (0 = pad),
     'copy': {'keys': [B, S, H] pointer keys, 'source_ids': [B, S] int32}}   copy_source only
bahdanau needs no previous context in the state: c_t is computed from s_{t-1}, the carry.

Inspection: applied with `mutable=['intermediates']`, the decoder sows its attention weights
[B, T, S] as intermediates/decoder/cross_attention (`lmfuse.models.inspect.cross_attention`).

Adversarial training perturbs the embeddings through the 'source_embeddings' and
'target_embeddings' hooks (`self.perturb`; no-ops unless a 'perturbations' collection is given).
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
from lmfuse.models.layers import Embed, Head, compute_dtype, constrain, partitioned, segment_starts
from lmfuse.models.rnn import (
    NUM_GATES,
    Carry,
    RecurrentLayer,
    RNNConfig,
    _bias_init,
    _cell_step,
    _hh,
    _keep,
)

Params = Any
State = dict[str, Any]

# Masked-out attention scores: far below any real score, yet finite, so a row with no valid
# source position (a padding query) gives uniform weights, zeroed afterwards, and no NaNs.
_MASKED = -1e9


@dataclasses.dataclass(frozen=True)
class Seq2SeqRNNConfig:
    """Hyperparameters of `Seq2SeqRNN`; built from a model config by `registry.build_model`."""

    vocab_size: int
    cell: str = "lstm"  # 'lstm' | 'gru'
    emb_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 2  # decoder layers
    num_encoder_layers: int = 0  # bidirectional encoder layers; 0 means num_layers
    dropout: float = 0.0
    tie_embeddings: bool = True  # output layer = target embedding table transposed
    share_embeddings: bool = True  # one table for source and target
    attention: str = "bahdanau"  # 'bahdanau' (additive) | 'luong' (multiplicative, "general")
    copy_source: bool = False  # pointer-generator output (lmfuse.models.copy)
    dtype: str = "float32"  # compute dtype of the matmuls; params and the carry stay float32
    # Encoder and luong decoder layers: input projection for all steps before the scan. The
    # bahdanau decoder always hoists its embedding part (the context part is per step).
    hoist_input_projection: bool = True

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


def _zero_carry(cell: str, shape: tuple[int, ...]) -> Carry:
    zeros = jnp.zeros(shape, jnp.float32)
    return {"h": zeros, "c": zeros} if cell == "lstm" else {"h": zeros}


def _masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to `mask`; exactly 0 elsewhere (all 0 if none)."""
    weights = jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1)
    return jnp.where(mask, weights, 0.0)


def _weighted_memory(weights: jax.Array, memory: jax.Array) -> jax.Array:
    """Context vectors: weights [B, (T,) S] x memory [B, S, 2H] -> [B, (T,) 2H] float32."""
    weights = weights.astype(memory.dtype)
    return jnp.einsum("b...s,bsd->b...d", weights, memory, preferred_element_type=jnp.float32)


def _additive_scores(
    query: jax.Array, keys: jax.Array, w_query: jax.Array, energy: jax.Array
) -> jax.Array:
    """Bahdanau scores v^T tanh(W_s s + keys): query [B, H], keys [B, S, H] -> [B, S]."""
    q = jnp.einsum("bh,hk->bk", query, w_query)
    return jnp.einsum("bsk,k->bs", jnp.tanh(keys + q[:, None]), energy)


class BidirectionalLayer(nn.Module):
    """x [B, S, D] -> [forward ; backward] outputs [B, S, 2H]; see the module docstring."""

    cfg: Seq2SeqRNNConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, keep_fwd: jax.Array | None, keep_bwd: jax.Array | None
    ) -> jax.Array:
        rc = self.cfg.rnn_config()
        carry = _zero_carry(rc.cell, (x.shape[0], rc.hidden_dim))
        forward, _ = RecurrentLayer(rc, name="forward")(x, keep_fwd, carry)
        backward, _ = RecurrentLayer(rc, name="backward")(jnp.flip(x, axis=1), keep_bwd, carry)
        return jnp.concatenate([forward, jnp.flip(backward, axis=1)], axis=-1)


class Encoder(nn.Module):
    """Embedded source [B, S, E] -> memory [B, S, 2H] (after dropout), in the compute dtype."""

    cfg: Seq2SeqRNNConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, segment_ids: jax.Array | None, deterministic: bool
    ) -> jax.Array:
        keep_fwd = keep_bwd = None
        if segment_ids is not None:
            keep_fwd = segment_starts(segment_ids)
            keep_bwd = segment_starts(jnp.flip(segment_ids, axis=1))
        drop = nn.Dropout(self.cfg.dropout)
        for i in range(self.cfg.encoder_layers):
            x = BidirectionalLayer(self.cfg, name=f"layers_{i}")(x, keep_fwd, keep_bwd)
            x = drop(x, deterministic=deterministic)
        return constrain(x, ("batch", "length", "hidden"))


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


def _project(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., D] @ w [D, G, H] -> [..., G, H] float32."""
    return jnp.einsum("...d,dgh->...gh", x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _bahdanau_scan(
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
    xw_y = _project(y, first["w_ih"][:emb_dim]) + first["bias"]
    w_context = first["w_ih"][emb_dim:]
    b, s, memory_width = memory.shape
    keys = keys.astype(attn["query"].dtype)
    # Recomputing the [B, S, H] tanh on the backward pass saves storing it for every step.
    scores_fn = jax.checkpoint(_additive_scores)

    def step(state: Carry, inp):
        xw_t, keep_t, mask_t, drop_t = inp
        state = _keep(state, keep_t)  # [L, B, H] * [B, 1]: a new segment restarts every layer
        if zero_context:
            weights = jnp.zeros((b, s), jnp.float32)
            context = jnp.zeros((b, memory_width), jnp.float32)
        else:
            query = state["h"][-1].astype(keys.dtype)  # s_{t-1} of the top layer
            scores = scores_fn(query, keys, attn["query"], attn["energy"])
            weights = _masked_softmax(scores.astype(jnp.float32), mask_t)
            context = _weighted_memory(weights, memory)
        new_layers, x = [], None
        for i, p in enumerate(layers):
            layer_state = jax.tree.map(lambda a, i=i: a[i], state)
            if i == 0:
                xw = xw_t + _project(context, w_context)
            else:
                xw = _project(x if drop_t is None else x * drop_t[i - 1], p["w_ih"]) + p["bias"]
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
            states, context, weights, carry = _bahdanau_scan(
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
                weights = _masked_softmax(scores, mask)
                context = _weighted_memory(weights, memory)
        # A no-op unless the caller makes 'intermediates' mutable (`lmfuse.models.inspect`).
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
        """The copy_source output: readout [B, T, E] and its vocab logits [B, T, V], memory
        [B, S, 2H] of source ids [B, S] -> log-probs [B, T, V] float32. A target token copies
        from the real source tokens of its own segment, as it attends."""
        mask = _attention_mask(inputs_segment_ids, decoder_segment_ids, inputs.shape,
                               hidden.shape[:2])
        return self.copy_head(hidden, logits, encoded, inputs, mask, keys)

    def init_carry(self, batch_size: int) -> Carry:
        """A zero decoder carry {'h': [L, B, H], 'c' (lstm)}. Needs no params: call it unbound."""
        c = self.cfg
        return _zero_carry(c.cell, (c.num_layers, batch_size, c.hidden_dim))

    def _decode(
        self, encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids, decoder_positions,
        deterministic, zero_context, keys, carry,
    ) -> tuple[jax.Array, jax.Array, Carry]:
        del decoder_positions
        b, t = decoder_inputs.shape
        mask = _attention_mask(inputs_segment_ids, decoder_segment_ids, encoded.shape[:2], (b, t))
        keep = None if decoder_segment_ids is None else segment_starts(decoder_segment_ids)
        if keys is None:
            keys = self.attention_keys(encoded)
        if carry is None:
            carry = self.init_carry(b)
        y = self.perturb("target_embeddings", self.wte(decoder_inputs))
        y = constrain(self.drop(y, deterministic=deterministic), ("batch", "length", "embed"))
        return self.decoder(y, keep, mask, encoded, keys, carry, deterministic, zero_context)


def _attention_mask(
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


def _batch_major(carry: Carry) -> Carry:
    return jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), carry)


def _layer_major(carry: Carry) -> Carry:
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), carry)


def decode_init(
    model: Seq2SeqRNN,
    params: Params,
    batch: dict[str, jax.Array],
    max_len: int,
    zero_context: bool = False,
) -> tuple[jax.Array, State]:
    """Encodes `batch['inputs']` once and prefills the decoder with `batch['prompt']`.

    Returns the logits [B, V] of the first generated token and the state (module docstring).
    `max_len` is unused: the decoder state is a carry, not a cache with a length axis.
    """
    del max_len
    variables = {"params": params}
    inputs = batch["inputs"].astype(jnp.int32)
    source_segments = (inputs != PAD_ID).astype(jnp.int32)
    memory = model.apply(variables, inputs, source_segments, method="encode")
    state = {
        "carry": _batch_major(model.init_carry(inputs.shape[0])),
        "memory": memory,
        "keys": model.apply(variables, memory, method="attention_keys"),
        "memory_segment_ids": source_segments,
    }
    if model.cfg.copy_source and not zero_context:
        keys = model.apply(variables, memory, method="copy_keys")
        state["copy"] = {"keys": keys, "source_ids": inputs}
    # Left padding gets segment 0: the carry resets where the real prompt starts.
    tokens, segments, _ = _prompt_layout(batch["prompt"])
    return _advance(model, variables, state, tokens, segments, zero_context)


def decode_step(
    model: Seq2SeqRNN, params: Params, state: State, tokens: jax.Array, zero_context: bool = False
) -> tuple[jax.Array, State]:
    """Feeds tokens [B] int32; returns the next logits [B, V] float32 and the new state."""
    tokens = tokens[:, None].astype(jnp.int32)
    return _advance(model, {"params": params}, state, tokens, None, zero_context)


def _advance(
    model: Seq2SeqRNN,
    variables: dict[str, Params],
    state: State,
    tokens: jax.Array,
    segments: jax.Array | None,
    zero_context: bool,
) -> tuple[jax.Array, State]:
    """Runs the decoder over tokens [B, C] from the state; logits of the last one, new state."""
    hidden, carry = model.apply(
        variables, state["memory"], state["memory_segment_ids"], tokens, segments, None, True,
        zero_context, keys=state["keys"], carry=_layer_major(state["carry"]), return_carry=True,
        method="decode_hidden",
    )
    logits = model.apply(variables, hidden[:, -1:], method="logits_from_hidden")
    if model.cfg.copy_source and not zero_context:
        copy = state["copy"]
        logits = model.apply(
            variables, hidden[:, -1:], logits, state["memory"], copy["source_ids"],
            state["memory_segment_ids"], None if segments is None else segments[:, -1:],
            copy["keys"], method="copy_log_probs",
        )
    return logits[:, 0], {**state, "carry": _batch_major(carry)}
