"""Trained fusion of a decoder-only LM into an encoder-decoder: deep, cold, simple, linear.

    source [B, S], decoder inputs [B, T] ([BOS] y_1 .. y_{t-1}, shared by both models)
      -> s2s.encode -> s2s.decode_hidden            s_t: [B, T, D]     the s2s's output-layer input
      -> lm.embed_and_hidden (same decoder inputs)  h_t: [B, T, H]     the LM's output-layer input
      -> the method's output layer                  logits: [B, T, V] float32

`decode_hidden` returns both states, {'s2s': s, 'lm': h}, and `logits_from_hidden` maps that
pair to the fused logits, so the call contract is the encoder-decoders' own. With l the LM's
logits (lm.logits_from_hidden(h)), S the s2s's (s2s.logits_from_hidden(s)) and
p(y_t | y_<t, x) = softmax(logits_t):

  deep (Gulcehre et al. 2015, sec. 4.2)
      g_t = sigmoid(v^T h_t + b)                          a scalar gate per position
      logits_t = W [s_t ; g_t h_t] = W_s s_t + g_t (W_l h_t)
    Both bases are pretrained and frozen; v, b, W_s and W_l train. W_s starts as the s2s's
    own output layer and W_l at 0, so training starts exactly from the s2s.
    `fusion.lm_ablated=True` is its control: h_t = 0, so only W_s trains, for the same steps;
    what deep fusion gains over it is the LM's, not more training of the output layer.
  cold (Sriram et al. 2017, eq. 4a-4e)
      h^LM_t = ReLU(W_h (l_t - max_v l_t) + b_h)          (4a)  [C]
      g_t = sigmoid(W_g [s_t ; h^LM_t] + b_g)              (4b)  [C], one gate per feature
      s^CF_t = [s_t ; g_t * h^LM_t]                        (4c)
      r_t = W_o ReLU(W_r s^CF_t + b_r) + b_o               (4d)
      logits_t = r_t                                       (4e)
    The LM is frozen and the s2s trains from scratch with it. Shifting l so its top is 0
    changes no probability and hides the LM's arbitrary logit offset from W_h (as
    pytorch/translate does). The DNN of (4d) keeps its ReLU in a hidden layer: a ReLU on the
    final logits (pytorch/translate's choice) pins every token with a negative
    pre-activation at logit 0 with no gradient.
  simple (Stahlberg et al. 2018, sec. 3), the LM frozen and the translation model (the s2s,
  from scratch) trained through the combination:
      simple_postnorm: logits_t = S_t * softmax(l_t),        i.e. p = softmax(S_TM * P_LM)
      simple_prenorm:  logits_t = S_t + log_softmax(l_t),    i.e. p = softmax(S_TM + log P_LM)
    with S_TM the translation model's unnormalised scores (its logits) and P_LM the frozen
    LM's probabilities, multiplied token by token. PostNorm scales each token's TM score by
    how likely the LM finds it, so a token the LM rules out loses the TM's vote; with a
    uniform LM it is softmax(S_TM / V), the TM at temperature V. (An earlier form,
    softmax(softmax(S_TM) * P_LM), could not train: its outer softmax saw only values in
    [0, 1], which kept the loss above about log V - 1.) PreNorm is a product of experts; a
    uniform LM leaves the TM's distribution unchanged.
  linear (learned logit fusion)
      logits_t = W_g * S_t + W_l * l_t
    with W_g, W_l two scalars ('scalar'), two [V] vectors ('vector'), or per position
    [W_g, W_l] = [s_t ; h_t] K + c ('context'). They start at W_g = 1, W_l = 0 (K = 0,
    c = (1, 0)): exactly the s2s. 'vector' weighs log-probabilities, log_softmax(S_t) and
    log_softmax(l_t): a per-token weight on raw logits would add each model's per-position
    log-sum-exp as a per-token bias (a scalar or per-position weight scales it for every token
    alike, and the softmax cancels it). The bases are frozen (train_bases=False) or fine-tuned
    with the weights.

  lm_prior (Baziotis, Haddow & Birch 2020, "Language Model Prior for Low-Resource NMT")
      logits_t = S_t                                      the TM alone, in training and decoding
      loss = CE + λ τ² KL(softmax(S_t / τ) || softmax(l_t / τ)), per counted target token
    The LM is frozen and the TM trains from scratch; the KL term (λ = fusion.prior_weight,
    τ = fusion.prior_temperature) pulls the TM's softened distribution towards the LM's where
    the data is silent. The model sows the per-token penalty into the 'losses' collection,
    which the train step adds to each token's loss; λ = 0 sows nothing (plain training).

The backbones differ only in what s_t and h_t are, each model's own output-layer input:
s2s_transformer's s_t is the top decoder state after ln_f (cross-attention already mixed in);
s2s_rnn's is its readout tanh(W_o [c_t ; s_t]), which holds the attention context c_t that
Gulcehre's deep output layer reads. A TransformerLM's h_t is its final state after ln_f, an
RNNLM's the top layer's output.

An s2s with a copy output (model.copy_source, a pointer-generator: lmfuse.models.copy)
copies around the fused distribution: p = p_gen softmax(logits_t) + (1 - p_gen) copy_t, its
gate and pointer attention the s2s's own, reading s_t (frozen with the s2s where the s2s is).
Every method fuses the vocab part only; copying a source token stays the s2s's decision. For
lm_prior the KL reads the TM's vocab logits S_t, before the copy mixture.

A frozen base runs deterministically (no dropout: it is a fixed feature extractor) and its
outputs pass through `stop_gradient`, so its backward pass is never computed.

Param tree (D = s2s width, H = LM width, C = cold_dim; logical axes in brackets):
    s2s/...                       the encoder-decoder's own tree, complete (output layer too)
    lm/...                        the LM's own tree, complete
    fusion/                       deep:   gate_kernel [H] ('embed',), gate_bias [] (),
                                          out_s2s [D, V] ('embed', 'vocab'),
                                          out_lm [H, V] ('embed', 'vocab')
                                  cold:   lm_proj/{kernel [V, C] ('vocab', None), bias [C] ('mlp',)},
                                          gate/{kernel [D + C, C] ('embed', 'mlp'), bias [C]},
                                          hidden/{kernel [D + C, C] ('embed', 'mlp'), bias [C]},
                                          out [C, V] (None, 'vocab'), out_bias [V] ('vocab',)
                                  linear: s2s_weight, lm_weight [] or [V] ('vocab',), or
                                          gate_kernel [D + H, 2] ('embed', None),
                                          gate_bias [2] (None,)
                                  simple: no fusion params

Inspection: applied with `mutable=['intermediates']`, deep and cold fusion sow their gates as
intermediates/fusion/fusion_gate: g_t [B, T] (deep) or [B, T, C] (cold)
(`lmfuse.evaluate.inspect.fusion_gates`).

Decoding (`lmfuse.decode.adapters`, the DecodeStep contract): the state is
{'s2s': the s2s's own decoding state, 'lm': the LM's}, every leaf batch-first, so sampling,
beam search and decode-time fusion run on a fused model unchanged. Each base steps with its
own DecodeStep; the bases' `logits_from_hidden` is intercepted to hand back its input, so
those steps yield the states s_t and h_t, and the fused output layer runs on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.encoder_decoder import EncoderDecoder
from lmfuse.models.layers import compute_dtype, constrain, partitioned

METHODS = ("deep", "cold", "simple_postnorm", "simple_prenorm", "linear", "lm_prior")
WEIGHTS_KINDS = ("scalar", "vector", "context")
BASES = ("s2s", "lm")
# Methods that start from a trained encoder-decoder (fusion.s2s_workdir); the others train it
# from scratch.
PRETRAINED_S2S = ("deep", "linear")

Params = Any
Hidden = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FusionConfig:
    """How `FusedSeq2Seq` fuses; built from `config.fusion` by `registry.build_model`.

    Each field with a default is the config key `fusion.<field>` with its one default; the
    others come from elsewhere: method from `fusion.method` (whose '' turns fusion off),
    vocab_size from the tokenizer, dtype from `model.dtype`."""

    method: str  # one of METHODS
    vocab_size: int
    dtype: str  # compute dtype of the fusion layers (params stay float32)
    weights_kind: str = "scalar"  # linear: 'scalar' | 'vector' | 'context'
    train_bases: bool = False  # linear: fine-tune both bases with the weights (else frozen)
    cold_dim: int = 256  # cold: width C of h^LM, the gate and the output DNN's hidden layer
    prior_weight: float = 0.5  # lm_prior: λ of the KL term (0: plain training of the TM)
    prior_temperature: float = 2.0  # lm_prior: τ, softening both distributions in the KL
    lm_ablated: bool = False  # deep: its control, h_LM zeroed (only W_s trains; module docstring)

    def frozen_bases(self) -> tuple[str, ...]:
        """The bases whose parameters never change ('s2s', 'lm')."""
        if self.method == "deep" or (self.method == "linear" and not self.train_bases):
            return BASES
        if self.method == "linear":
            return ()
        return ("lm",)


def _to_vocab(module: nn.Module, name: str, x: jax.Array, vocab: int, in_axis: str | None,
              init: Callable, dtype: str) -> jax.Array:
    """x [..., D] @ a kernel `name` [D, V] -> float32 logits [..., V]."""
    kernel = module.param(name, partitioned(init, (in_axis, "vocab")), (x.shape[-1], vocab),
                          jnp.float32)
    dt = compute_dtype(dtype)
    return jnp.einsum("...d,dv->...v", x.astype(dt), kernel.astype(dt),
                      preferred_element_type=jnp.float32)


def _dense(features: int, axes: tuple[str | None, str | None], dtype: str, name: str,
           bias_axis: str | None = None) -> nn.Dense:
    """A Dense layer with float32 params, kernel axes `axes`, LeCun-normal kernel, zero bias
    (its axis `bias_axis`, else the kernel's output axis)."""
    return nn.Dense(
        features, dtype=compute_dtype(dtype), param_dtype=jnp.float32, name=name,
        kernel_init=partitioned(nn.initializers.lecun_normal(), axes),
        bias_init=partitioned(nn.initializers.zeros, (bias_axis or axes[1],)),
    )


class DeepFusion(nn.Module):
    """logits = W_s s + sigmoid(v^T h + b) (W_l h); see the module docstring."""

    cfg: FusionConfig

    @nn.compact
    def __call__(self, s: jax.Array, h: jax.Array) -> jax.Array:
        c = self.cfg
        h = jnp.zeros_like(h) if c.lm_ablated else h  # the control: nothing from the LM
        v = self.param("gate_kernel", partitioned(nn.initializers.normal(0.02), ("embed",)),
                       (h.shape[-1],), jnp.float32)
        b = self.param("gate_bias", partitioned(nn.initializers.zeros, ()), (), jnp.float32)
        gate = jax.nn.sigmoid(jnp.einsum("...h,h->...", h.astype(jnp.float32), v) + b)[..., None]
        # A no-op unless the caller makes 'intermediates' mutable (`lmfuse.evaluate.inspect`).
        self.sow("intermediates", "fusion_gate", gate[..., 0])
        # out_s2s is replaced by the s2s's own output layer (`warm_start`); out_lm starts at 0.
        s_logits = _to_vocab(self, "out_s2s", s, c.vocab_size, "embed",
                             nn.initializers.normal(0.02), c.dtype)
        lm_logits = _to_vocab(self, "out_lm", h, c.vocab_size, "embed", nn.initializers.zeros,
                              c.dtype)
        return s_logits + gate * lm_logits


class ColdFusion(nn.Module):
    """Sriram et al.'s eq. 4a-4e from s [..., D] and the LM logits l [..., V]."""

    cfg: FusionConfig

    @nn.compact
    def __call__(self, s: jax.Array, lm_logits: jax.Array) -> jax.Array:
        c = self.cfg
        dt = compute_dtype(c.dtype)
        shifted = lm_logits - jnp.max(lm_logits, axis=-1, keepdims=True)
        # [V, C] kernels: V alone names an axis (vocab and mlp both map to 'tensor', and one
        # mesh axis can shard only one of them).
        h_lm = nn.relu(_dense(c.cold_dim, ("vocab", None), c.dtype, "lm_proj", "mlp")(shifted))
        h_lm = constrain(h_lm, ("batch", "length", "mlp"))
        s = s.astype(dt)
        gate = jax.nn.sigmoid(
            _dense(c.cold_dim, ("embed", "mlp"), c.dtype, "gate")(jnp.concatenate([s, h_lm], -1))
        )
        self.sow("intermediates", "fusion_gate", gate)  # no-op unless asked for (inspect)
        s_cf = jnp.concatenate([s, gate * h_lm], axis=-1)
        hidden = nn.relu(_dense(c.cold_dim, ("embed", "mlp"), c.dtype, "hidden")(s_cf))
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("vocab",)),
                          (c.vocab_size,), jnp.float32)
        return _to_vocab(self, "out", hidden, c.vocab_size, None,
                         nn.initializers.lecun_normal(), c.dtype) + bias


class LinearFusion(nn.Module):
    """logits = W_g * S + W_l * l with scalar, per-vocab or context-dependent weights."""

    cfg: FusionConfig

    @nn.compact
    def __call__(self, s: jax.Array, h: jax.Array, s2s_logits: jax.Array,
                 lm_logits: jax.Array) -> jax.Array:
        c = self.cfg
        if c.weights_kind == "context":
            kernel = self.param("gate_kernel", partitioned(nn.initializers.zeros, ("embed", None)),
                                (s.shape[-1] + h.shape[-1], 2), jnp.float32)
            bias = self.param("gate_bias", partitioned(_one_zero, (None,)), (2,), jnp.float32)
            features = jnp.concatenate([s.astype(jnp.float32), h.astype(jnp.float32)], axis=-1)
            weights = jnp.einsum("...d,dk->...k", features, kernel) + bias  # [..., 2]
            w_s2s, w_lm = weights[..., :1], weights[..., 1:]
        else:
            shape, axes = ((), ()) if c.weights_kind == "scalar" else ((c.vocab_size,), ("vocab",))
            w_s2s = self.param("s2s_weight", partitioned(nn.initializers.ones, axes), shape,
                               jnp.float32)
            w_lm = self.param("lm_weight", partitioned(nn.initializers.zeros, axes), shape,
                              jnp.float32)
        if c.weights_kind == "vector":
            # Per-token weights on raw logits would turn each model's per-position
            # log-sum-exp into a per-token bias; on log-probabilities there is none to leak.
            s2s_logits = jax.nn.log_softmax(s2s_logits, axis=-1)
            lm_logits = jax.nn.log_softmax(lm_logits, axis=-1)
        return w_s2s * s2s_logits + w_lm * lm_logits


SIMPLE = ("simple_postnorm", "simple_prenorm")


def simple_fusion_logits(method: str, s2s_logits: jax.Array, lm_logits: jax.Array) -> jax.Array:
    """Stahlberg et al.'s simple fusion of TM logits S and LM logits l (module docstring):
    PostNorm S * softmax(l), PreNorm S + log_softmax(l); the loss's softmax normalises."""
    if method == "simple_postnorm":
        return s2s_logits * jax.nn.softmax(lm_logits, -1)
    return s2s_logits + jax.nn.log_softmax(lm_logits, axis=-1)


def _one_zero(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    del key
    return jnp.zeros(shape, dtype).at[0].set(1.0)


HEADS = {"deep": DeepFusion, "cold": ColdFusion, "linear": LinearFusion}


class FusedSeq2Seq(EncoderDecoder):
    """An encoder-decoder fused with an LM. See the module docstring for equations and params.
    `__call__` is `EncoderDecoder`'s: encode, decode_hidden (both states), logits_from_hidden.

    Calls (the encoder-decoders' contract; `hidden` is the pair {'s2s': s, 'lm': h}):
      logits = model.apply(v, inputs, decoder_inputs, inputs_segment_ids=None,
                           decoder_segment_ids=None, inputs_positions=None,
                           decoder_positions=None, deterministic=True)    # [B, T, V] float32
      encoded = model.apply(v, inputs, segment_ids, positions, deterministic, method='encode')
      hidden = model.apply(v, encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids,
                           decoder_positions, deterministic, zero_context=False,
                           method='decode_hidden')
      logits = model.apply(v, hidden, method='logits_from_hidden')
    """

    s2s: nn.Module
    lm: nn.Module
    cfg: FusionConfig

    def setup(self) -> None:
        if self.cfg.method in HEADS:
            self.fusion = HEADS[self.cfg.method](self.cfg)

    def _copies_source(self) -> bool:
        return self.s2s.cfg.copy_source

    def copy_log_probs(self, hidden: Hidden | jax.Array, logits: jax.Array, *args, **kwargs
                       ) -> jax.Array:
        """`EncoderDecoder.copy_log_probs` with the s2s's own copy head, around the fused
        logits: gate and pointer attention read the s2s state s_t (module docstring)."""
        s = hidden["s2s"] if isinstance(hidden, dict) else hidden
        return self.s2s.copy_log_probs(s, logits, *args, **kwargs)

    def copy_keys(self, encoded: jax.Array) -> jax.Array:
        return self.s2s.copy_keys(encoded)

    def encode(
        self,
        inputs: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """The s2s's encoder output for source ids [B, S]."""
        deterministic = self._deterministic("s2s", deterministic)
        return self._held("s2s", self.s2s.encode(inputs, segment_ids, positions, deterministic))

    def decode_hidden(
        self,
        encoded: jax.Array | None,
        inputs_segment_ids: jax.Array | None,
        decoder_inputs: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        zero_context: bool = False,
    ) -> Hidden:
        """{'s2s': s [B, T, D], 'lm': h [B, T, H]}: both models' output-layer inputs."""
        s = self.s2s.decode_hidden(
            encoded, inputs_segment_ids, decoder_inputs, decoder_segment_ids, decoder_positions,
            self._deterministic("s2s", deterministic), zero_context,
        )
        h = self.lm.embed_and_hidden(
            decoder_inputs, decoder_segment_ids, decoder_positions,
            self._deterministic("lm", deterministic),
        )
        return {"s2s": self._held("s2s", s), "lm": self._held("lm", h)}

    def logits_from_hidden(self, hidden: Hidden) -> jax.Array:
        """{'s2s': [B, T, D], 'lm': [B, T, H]} -> fused float32 logits [B, T, V]."""
        s, h = hidden["s2s"], hidden["lm"]
        method = self.cfg.method
        if self.is_initializing():
            # Create both output layers even where the method does not read them, so each base
            # subtree is a complete model that loads from (and saves like) its own workdir.
            self.s2s.logits_from_hidden(s)
            self.lm.logits_from_hidden(h)
        if method == "deep":
            logits = self.fusion(s, h)
        else:
            lm_logits = self._held("lm", self.lm.logits_from_hidden(h))
            if method == "lm_prior":
                s2s_logits = self.s2s.logits_from_hidden(s)
                self._sow_prior(s2s_logits, lm_logits)
                return constrain(s2s_logits.astype(jnp.float32), ("batch", "length", "vocab"))
            if method == "cold":
                logits = self.fusion(s, lm_logits)
            else:
                s2s_logits = self._held("s2s", self.s2s.logits_from_hidden(s))
                if method in SIMPLE:
                    logits = simple_fusion_logits(method, s2s_logits, lm_logits)
                else:
                    logits = self.fusion(s, h, s2s_logits, lm_logits)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

    def _sow_prior(self, s2s_logits: jax.Array, lm_logits: jax.Array) -> None:
        """The LM prior's per-token penalty λ τ² KL(softmax(S/τ) || softmax(l/τ)) [B, T], sown
        into 'losses' (a no-op unless the train step makes that collection mutable)."""
        c = self.cfg
        if not c.prior_weight or not self.is_mutable_collection("losses"):
            return  # λ = 0 is plain training: nothing to compute
        tau = c.prior_temperature
        log_p = jax.nn.log_softmax(s2s_logits.astype(jnp.float32) / tau, axis=-1)
        log_q = jax.nn.log_softmax(lm_logits.astype(jnp.float32) / tau, axis=-1)
        kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
        self.sow("losses", "lm_prior", c.prior_weight * tau**2 * kl)

    def s2s_output_layer(self, width: int) -> jax.Array:
        """The s2s's output layer as a [D, V] matrix: its logits of the identity's rows (the
        output layers are linear maps with no bias), exact when the s2s computes in float32."""
        return self.s2s.logits_from_hidden(jnp.eye(width, dtype=jnp.float32)[None])[0]

    def _deterministic(self, base: str, deterministic: bool) -> bool:
        return deterministic or base in self.cfg.frozen_bases()

    def _held(self, base: str, x: jax.Array) -> jax.Array:
        """A frozen base's output carries no gradient (its backward pass is skipped)."""
        return jax.lax.stop_gradient(x) if base in self.cfg.frozen_bases() else x


def warm_start(model: FusedSeq2Seq, params: Params) -> Params:
    """Params whose fusion layers start from the bases in `params` (unboxed): deep fusion's
    W_s becomes the s2s's own output layer. Other methods start right from their inits."""
    if model.cfg.method != "deep":
        return params
    width = params["fusion"]["out_s2s"].shape[0]
    out = model.apply({"params": params}, width, method=FusedSeq2Seq.s2s_output_layer)
    return {**params, "fusion": {**params["fusion"], "out_s2s": out}}
