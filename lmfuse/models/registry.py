"""Model configs and construction: `model_defaults()` lists every model key, `build_model` checks
a config and returns the Flax module it describes.

    decoder-only LMs   transformer, rnn, lstm, gru          (lmfuse.models.transformer / rnn)
    encoder-decoders   s2s_transformer, s2s_rnn             (seq2seq_transformer / seq2seq_rnn)
    encoder-only       masked_lm (BERT-style)               (masked_lm)
    trained fusion     an encoder-decoder fused with an LM  (fusion), when config.fusion.method
                       is set: `build_model(cfg.model, V, cfg.fusion)`

Models never read a config themselves: `build_model` copies the fields their frozen config
dataclass declares (`TransformerConfig`, `RNNConfig`, ...) into it, and the module holds that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import ml_collections

from lmfuse.errors import LmfuseError
from lmfuse.models.layers import ACTIVATIONS, DTYPES
from lmfuse.models.rnn import RNNLM, RNNConfig
from lmfuse.models.transformer import REMAT_POLICIES, TransformerConfig, TransformerLM

LM_NAMES = ("rnn", "lstm", "gru", "transformer")
SEQ2SEQ_NAMES = ("s2s_transformer", "s2s_rnn")
MASKED_LM_NAMES = ("masked_lm",)
MODEL_NAMES = LM_NAMES + SEQ2SEQ_NAMES + MASKED_LM_NAMES
TRANSFORMER_NAMES = ("transformer", "s2s_transformer", "masked_lm")

CHOICES: dict[str, tuple[str, ...]] = {
    "name": MODEL_NAMES,
    "norm": ("pre", "post"),
    "positions": ("learned", "sinusoidal", "rope"),
    "activation": tuple(ACTIVATIONS),
    "remat_policy": tuple(REMAT_POLICIES),
    "dtype": tuple(DTYPES),
    "attention_impl": ("xla", "cudnn"),
    "cell": ("lstm", "gru"),
    "attention": ("bahdanau", "luong"),
}
POSITIVE_INTS = ("emb_dim", "hidden_dim", "num_layers", "num_heads", "mlp_dim", "max_len")


def model_defaults() -> ml_collections.ConfigDict:
    """Every model key with a typed default. Keys a family does not use are ignored by it."""
    c = ml_collections.ConfigDict()
    c.name = "transformer"  # one of MODEL_NAMES
    c.emb_dim = 512  # token embedding width (the transformer's model width)
    c.hidden_dim = 512  # RNN state width (must equal emb_dim when tie_embeddings)
    c.num_layers = 6
    c.num_heads = 8
    c.head_dim = 0  # 0 means emb_dim // num_heads
    c.mlp_dim = 2048
    c.dropout = 0.1  # on embeddings, residual branches (transformer) / between layers (RNN)
    c.tie_embeddings = True  # output layer = embedding matrix transposed
    c.norm = "pre"  # 'pre' | 'post' LayerNorm
    c.positions = "learned"  # 'learned' | 'sinusoidal' | 'rope'
    c.max_len = 512  # learned position table size and default KV cache length
    c.activation = "gelu"  # 'gelu' (erf) | 'gelu_new' (tanh approx., GPT-2) | 'relu'
    c.layer_norm_epsilon = 1e-5
    c.use_bias = True  # biases in the transformer's dense layers
    c.scan_layers = False  # nn.scan over transformer layers (params get a 'layers' axis)
    c.remat_policy = "none"  # 'none' | 'full' | 'dots' | 'dots_no_batch'
    c.dtype = "float32"  # compute dtype, 'float32' | 'bfloat16'; params are always float32
    c.attention_impl = "xla"  # 'xla' | 'cudnn' (GPU, bf16; jax.nn.dot_product_attention)
    c.hoist_input_projection = True  # RNN: input-to-hidden matmul for all steps before the scan
    # Encoder-decoders.
    c.num_encoder_layers = 0  # 0 means num_layers
    c.share_embeddings = True  # one table for source, target (and the tied output layer)
    c.cell = "lstm"  # s2s_rnn: 'lstm' | 'gru' (bidirectional encoder, attentional decoder)
    c.attention = "bahdanau"  # s2s_rnn: 'bahdanau' (additive) | 'luong' (multiplicative)
    # Pointer-generator output: a gate mixes the vocab softmax with a copy of source tokens
    # (See et al. 2017; lmfuse.models.copy). Not with trained fusion (fusion.method).
    c.copy_source = False
    return c


def _module_and_config(name: str):
    """(module class, its config dataclass) for a model name; imported on demand."""
    if name == "transformer":
        return TransformerLM, TransformerConfig
    if name in ("rnn", "lstm", "gru"):
        return RNNLM, RNNConfig
    if name == "s2s_transformer":
        from lmfuse.models import seq2seq_transformer as m

        return m.Seq2SeqTransformer, m.Seq2SeqTransformerConfig
    if name == "s2s_rnn":
        from lmfuse.models import seq2seq_rnn as m

        return m.Seq2SeqRNN, m.Seq2SeqRNNConfig
    from lmfuse.models import masked_lm as m

    return m.MaskedLM, m.MaskedLMConfig


def build_model(
    model_cfg: ml_collections.ConfigDict | Mapping[str, Any],
    vocab_size: int,
    fusion_cfg: ml_collections.ConfigDict | Mapping[str, Any] | None = None,
) -> nn.Module:
    """Checks `model_cfg` (missing keys take defaults) and returns an unbound Flax module.

    With a `fusion_cfg` (the config's `fusion` group) whose method is set, the module is that
    encoder-decoder fused with the LM `fusion_cfg['lm_model']` (`fusion.FusedSeq2Seq`)."""
    if fusion_cfg is not None and _as_dict(fusion_cfg).get("method"):
        return _build_fused(model_cfg, _as_dict(fusion_cfg), vocab_size)
    c = _checked(model_cfg, vocab_size)
    module, config_class = _module_and_config(c["name"])
    fields = {f: c[f] for f in config_class.__dataclass_fields__ if f in c}
    fields["vocab_size"] = vocab_size
    if config_class is RNNConfig:
        fields["cell"] = c["name"]
    return module(config_class(**fields))


def _as_dict(cfg: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def check_fusion(
    fusion_cfg: ml_collections.ConfigDict | Mapping[str, Any],
    model_name: str,
    copy_source: bool = False,
) -> None:
    """One-line errors for a fusion group that cannot work: an unknown method or weights
    kind, a base model that is not an encoder-decoder, or one with a copy output (every
    method fuses the s2s's vocab logits and would drop the copy part without a word).
    Workdirs are checked where loaded."""
    from lmfuse.models.fusion import METHODS, WEIGHTS_KINDS

    f = _as_dict(fusion_cfg)
    method = f.get("method", "")
    if method not in METHODS:
        raise LmfuseError(
            f"unknown fusion.method {method!r}; choose one of {', '.join(METHODS)} ('' for none)"
        )
    if model_name not in SEQ2SEQ_NAMES:
        raise LmfuseError(
            f"fusion.method={method!r} fuses an LM into an encoder-decoder, but model.name="
            f"{model_name!r} is not one; use {' or '.join(SEQ2SEQ_NAMES)}"
        )
    if copy_source:
        raise LmfuseError(
            f"fusion.method={method!r} cannot fuse a model with model.copy_source=True (fusion "
            "reads only its vocab logits); set model.copy_source=False or fusion.method=''"
        )
    if f.get("weights_kind", "scalar") not in WEIGHTS_KINDS:
        raise LmfuseError(
            f"fusion.weights_kind={f['weights_kind']!r} is not one of {', '.join(WEIGHTS_KINDS)}"
        )
    if f.get("cold_dim", 1) <= 0:
        raise LmfuseError(f"fusion.cold_dim={f['cold_dim']} must be positive")


def _build_fused(model_cfg, fusion_cfg: dict[str, Any], vocab_size: int) -> nn.Module:
    from lmfuse.models.fusion import FusedSeq2Seq, FusionConfig

    s2s_cfg = _checked(model_cfg, vocab_size)
    check_fusion(fusion_cfg, s2s_cfg["name"], s2s_cfg["copy_source"])
    lm_model = fusion_cfg.get("lm_model") or {}
    if not lm_model:
        raise LmfuseError(
            "fusion.lm_model is empty; building a trainer fills it in from fusion.lm_workdir"
        )
    lm_name = _checked(lm_model, vocab_size)["name"]
    if lm_name not in LM_NAMES:
        raise LmfuseError(
            f"fusion needs a decoder-only LM ({', '.join(LM_NAMES)}), got {lm_name!r}"
        )
    cfg = FusionConfig(
        method=fusion_cfg["method"],
        vocab_size=vocab_size,
        weights_kind=fusion_cfg.get("weights_kind", "scalar"),
        train_bases=fusion_cfg.get("train_bases", False),
        cold_dim=fusion_cfg.get("cold_dim", 256),
        dtype=s2s_cfg["dtype"],
    )
    return FusedSeq2Seq(build_model(s2s_cfg, vocab_size), build_model(lm_model, vocab_size), cfg)


def _checked(model_cfg: ml_collections.ConfigDict | Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    given = _as_dict(model_cfg)
    defaults = model_defaults().to_dict()
    for key in given:
        if key not in defaults:
            raise LmfuseError(f"unknown model config key 'model.{key}' (known: {', '.join(sorted(defaults))})")
    c = {**defaults, **given}

    for key, default in defaults.items():
        value = c[key]
        ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            c[key] = value = float(value)
            ok = True
        if not ok:
            raise LmfuseError(
                f"model.{key} must be a {type(default).__name__}, got {value!r}; fix it in the config"
            )
    for key, allowed in CHOICES.items():
        if c[key] not in allowed:
            raise LmfuseError(f"model.{key}={c[key]!r} is not one of {', '.join(allowed)}")
    for key in POSITIVE_INTS:
        if c[key] <= 0:
            raise LmfuseError(f"model.{key}={c[key]} must be positive")
    if c["head_dim"] < 0:
        raise LmfuseError(f"model.head_dim={c['head_dim']} must be >= 0 (0 means emb_dim // num_heads)")
    if not 0.0 <= c["dropout"] < 1.0:
        raise LmfuseError(f"model.dropout={c['dropout']} must be in [0, 1)")
    if c["layer_norm_epsilon"] <= 0:
        raise LmfuseError(f"model.layer_norm_epsilon={c['layer_norm_epsilon']} must be positive")
    if vocab_size <= 0:
        raise LmfuseError(f"vocab_size={vocab_size} must be positive; check the tokenizer")

    if c["name"] in TRANSFORMER_NAMES:
        if c["head_dim"] == 0 and c["emb_dim"] % c["num_heads"]:
            raise LmfuseError(
                f"model.emb_dim={c['emb_dim']} is not divisible by model.num_heads={c['num_heads']}; "
                "change one or set model.head_dim"
            )
        head_size = c["head_dim"] or c["emb_dim"] // c["num_heads"]
        if c["positions"] == "rope" and head_size % 2:
            raise LmfuseError(f"model.positions='rope' needs an even head size, got {head_size}")
    elif c["name"] in LM_NAMES:
        if c["tie_embeddings"] and c["hidden_dim"] != c["emb_dim"]:
            raise LmfuseError(
                f"model.tie_embeddings needs model.hidden_dim == model.emb_dim for an RNN, got "
                f"{c['hidden_dim']} and {c['emb_dim']}; make them equal or set tie_embeddings=False"
            )
    return c
