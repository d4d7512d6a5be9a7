"""Model configs and construction: `model_defaults()` lists every model key, `build_model` checks
a config and returns the Flax module it describes.

    decoder-only LMs   transformer, rnn, lstm, gru          (lmfuse.models.transformer / rnn)
    encoder-decoders   s2s_transformer, s2s_rnn             (seq2seq_transformer / seq2seq_rnn)
    encoder-only       masked_lm (BERT-style)               (masked_lm)
    trained fusion     an encoder-decoder fused with an LM  (fusion), when config.fusion.method
                       is set: `build_model(cfg.model, V, cfg.fusion)`

Models never read a config themselves: `build_model` copies the fields their frozen config
dataclass declares (`TransformerConfig`, `RNNConfig`, ...) into it, and the module holds that.

One schema: each model key is declared once, as a dataclass field with a default (keys shared
by several families are fields of a shared base, `layers.ModelConfig` or
`encoder_decoder.EncoderDecoderConfig`), or in `CONFIG_ONLY_KEYS`; `model_defaults()` collects
them. Each key has one validator: `CHOICES`, `POSITIVE_INTS` and the range checks of
`_checked`. The fusion group's keys are `FusionConfig`'s fields likewise (`fusion_defaults`),
checked by `check_fusion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import ml_collections

from lmfuse.errors import LmfuseError
from lmfuse.models.fusion import METHODS, WEIGHTS_KINDS, FusedSeq2Seq, FusionConfig
from lmfuse.models.layers import ACTIVATIONS, DTYPES
from lmfuse.models.masked_lm import MaskedLM, MaskedLMConfig
from lmfuse.models.rnn import RNNLM, RNNConfig
from lmfuse.models.seq2seq_rnn import Seq2SeqRNN, Seq2SeqRNNConfig
from lmfuse.models.seq2seq_transformer import Seq2SeqTransformer, Seq2SeqTransformerConfig
from lmfuse.models.transformer import REMAT_POLICIES, TransformerConfig, TransformerLM

LM_NAMES = ("rnn", "lstm", "gru", "transformer")
SEQ2SEQ_NAMES = ("s2s_transformer", "s2s_rnn")
MASKED_LM_NAMES = ("masked_lm",)
MODEL_NAMES = LM_NAMES + SEQ2SEQ_NAMES + MASKED_LM_NAMES
TRANSFORMER_NAMES = ("transformer", "s2s_transformer", "masked_lm")

# model.name -> (Flax module, its config dataclass).
FAMILIES: dict[str, tuple[type[nn.Module], type]] = {
    "transformer": (TransformerLM, TransformerConfig),
    "rnn": (RNNLM, RNNConfig),
    "lstm": (RNNLM, RNNConfig),
    "gru": (RNNLM, RNNConfig),
    "s2s_transformer": (Seq2SeqTransformer, Seq2SeqTransformerConfig),
    "s2s_rnn": (Seq2SeqRNN, Seq2SeqRNNConfig),
    "masked_lm": (MaskedLM, MaskedLMConfig),
}
# Model keys that no dataclass field holds, with their one default.
CONFIG_ONLY_KEYS: dict[str, Any] = {"name": "transformer"}  # one of MODEL_NAMES
# Dataclass fields with a default that no config key sets: module options for code and tests.
MODULE_OPTIONS = ("head_transform",)

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


def field_defaults(config_class: type) -> dict[str, Any]:
    """The fields of a config dataclass that have a default, with it: the keys it declares."""
    return {
        f.name: f.default
        for f in dataclasses.fields(config_class)
        if f.default is not dataclasses.MISSING and f.name not in MODULE_OPTIONS
    }


def model_defaults() -> ml_collections.ConfigDict:
    """Every model key with its one default. Keys a family does not use are ignored by it."""
    c = ml_collections.ConfigDict(dict(CONFIG_ONLY_KEYS))
    for _, config_class in FAMILIES.values():
        c.update(field_defaults(config_class))
    return c


def fusion_defaults() -> dict[str, Any]:
    """The fusion group's keys that `FusionConfig` declares, with their one default."""
    return field_defaults(FusionConfig)


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
    module, config_class = FAMILIES[c["name"]]
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
) -> None:
    """One-line errors for a fusion group that cannot work: an unknown method or weights
    kind, or a base model that is not an encoder-decoder (one with a copy output is fine: the
    copy mixture wraps the fused distribution, `lmfuse.models.fusion`).
    Workdirs are checked where loaded. Keys left out take their defaults."""
    f = {**fusion_defaults(), **_as_dict(fusion_cfg)}
    method = f.get("method")
    if method not in METHODS:
        raise LmfuseError(
            f"unknown fusion.method {method!r}; choose one of {', '.join(METHODS)} ('' for none)"
        )
    if model_name not in SEQ2SEQ_NAMES:
        raise LmfuseError(
            f"fusion.method={method!r} fuses an LM into an encoder-decoder, but model.name="
            f"{model_name!r} is not one; use {' or '.join(SEQ2SEQ_NAMES)}"
        )
    if f["weights_kind"] not in WEIGHTS_KINDS:
        raise LmfuseError(
            f"fusion.weights_kind={f['weights_kind']!r} is not one of {', '.join(WEIGHTS_KINDS)}"
        )
    if f["lm_ablated"] and method != "deep":
        raise LmfuseError(
            f"fusion.lm_ablated=True is deep fusion's control; fusion.method={method!r} has no "
            "such switch (set fusion.method=deep, or leave lm_ablated unset)"
        )
    if f["cold_dim"] <= 0:
        raise LmfuseError(f"fusion.cold_dim={f['cold_dim']} must be positive")
    if f["prior_weight"] < 0 or f["prior_temperature"] <= 0:
        raise LmfuseError(
            f"fusion.prior_weight={f['prior_weight']} must be >= 0 and fusion.prior_temperature="
            f"{f['prior_temperature']} > 0"
        )


def _build_fused(model_cfg, fusion_cfg: dict[str, Any], vocab_size: int) -> nn.Module:
    fusion_cfg = {**fusion_defaults(), **fusion_cfg}
    s2s_cfg = _checked(model_cfg, vocab_size)
    check_fusion(fusion_cfg, s2s_cfg["name"])
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
        dtype=s2s_cfg["dtype"],
        **{key: fusion_cfg[key] for key in fusion_defaults()},
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
