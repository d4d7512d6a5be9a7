"""Model configs and construction: `model_defaults()` lists every model key, `build_model` checks
a config and returns the Flax module it describes.

    decoder-only LMs   transformer, rnn, lstm, gru          (lmfuse.models.transformer / rnn)
    encoder-decoders   s2s_transformer, s2s_rnn             (seq2seq_transformer / seq2seq_rnn)
    encoder-only       masked_lm (BERT-style)               (masked_lm)

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


def build_model(model_cfg: ml_collections.ConfigDict | Mapping[str, Any], vocab_size: int) -> nn.Module:
    """Checks `model_cfg` (missing keys take defaults) and returns an unbound Flax module."""
    c = _checked(model_cfg, vocab_size)
    module, config_class = _module_and_config(c["name"])
    fields = {f: c[f] for f in config_class.__dataclass_fields__ if f in c}
    fields["vocab_size"] = vocab_size
    if config_class is RNNConfig:
        fields["cell"] = c["name"]
    return module(config_class(**fields))


def _checked(model_cfg: ml_collections.ConfigDict | Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    given = model_cfg.to_dict() if isinstance(model_cfg, ml_collections.ConfigDict) else dict(model_cfg)
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
