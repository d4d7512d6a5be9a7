"""Load Hugging Face GPT-2 weights into lmfuse's `TransformerLM`.

    model_cfg, params = load_gpt2("path/to/saved_model")      # dir with config.json
    model = build_model(model_cfg, vocab_size=params["wte"]["embedding"].shape[0])
    logits = model.apply({"params": params}, ids)             # same function as HF's model

GPT-2 is a pre-LN transformer with learned positions, the tanh GELU ("gelu_new"), biases
everywhere and a head tied to the token embedding. Its `Conv1D` layers store weights as
[in, out] (already the Flax layout) and its attention projects q, k, v with one fused
`c_attn` [E, 3E], which is split here and reshaped to lmfuse's [E, heads, head_dim].

torch / transformers / safetensors are imported only when needed (`pip install 'lmfuse[interop]'`);
a `.safetensors` file needs only `safetensors`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from lmfuse.errors import LmfuseError
from lmfuse.models.registry import model_defaults

INSTALL_HINT = "pip install 'lmfuse[interop]'"

# HF activation names whose function lmfuse computes exactly.
_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def gpt2_config(hf_config: Any) -> ml_collections.ConfigDict:
    """A lmfuse model config computing the same function as a HF `GPT2Config` (or its dict)."""
    get = _getter(hf_config)
    activation = get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise LmfuseError(
            f"GPT-2 activation_function {activation!r} is not supported; use one of {', '.join(_ACTIVATIONS)}"
        )
    if get("scale_attn_by_inverse_layer_idx", False) or not get("scale_attn_weights", True):
        raise LmfuseError(
            "GPT-2 configs with scale_attn_by_inverse_layer_idx=True or scale_attn_weights=False "
            "are not supported; lmfuse scales attention by 1/sqrt(head_dim) only"
        )
    emb_dim, num_heads = int(get("n_embd")), int(get("n_head"))
    c = model_defaults()
    c.name = "transformer"
    c.emb_dim = emb_dim
    c.num_layers = int(get("n_layer"))
    c.num_heads = num_heads
    c.head_dim = 0
    c.mlp_dim = int(get("n_inner", None) or 4 * emb_dim)
    c.dropout = float(get("resid_pdrop", 0.1))
    c.tie_embeddings = bool(get("tie_word_embeddings", True))
    c.norm = "pre"
    c.positions = "learned"
    c.max_len = int(get("n_positions"))
    c.activation = _ACTIVATIONS[activation]
    c.layer_norm_epsilon = float(get("layer_norm_epsilon", 1e-5))
    c.use_bias = True
    c.scan_layers = False
    return c


def load_gpt2(
    state_dict_or_path: Mapping[str, Any] | str | Path, hf_config: Any = None
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """GPT-2 weights -> (model_cfg, params) for `build_model` / `model.apply({'params': params})`.

    `state_dict_or_path` is a `GPT2LMHeadModel` (or `GPT2Model`) state dict, a `.safetensors`
    or `.bin` file, or a directory saved by `save_pretrained`. `hf_config` (a `GPT2Config` or
    dict) is needed for a state dict; for files it defaults to the `config.json` beside them.
    Params come back unscanned (blocks_i); `stack_layers` converts them for scan_layers=True.
    """
    if isinstance(state_dict_or_path, Mapping):
        weights = {k: _to_numpy(v) for k, v in state_dict_or_path.items()}
        if hf_config is None:
            raise LmfuseError(
                "load_gpt2 got a state dict without hf_config; pass hf_config=model.config "
                "(the number of heads cannot be read from the weights)"
            )
    else:
        path = Path(state_dict_or_path)
        weights = _read_weights(path)
        if hf_config is None:
            config_file = (path if path.is_dir() else path.parent) / "config.json"
            if not config_file.is_file():
                raise LmfuseError(f"no config.json next to {str(path)!r}; pass hf_config=")
            hf_config = json.loads(config_file.read_text())
    cfg = gpt2_config(hf_config)
    return cfg, _convert(weights, cfg)


def _getter(hf_config: Any):
    def get(name: str, *default: Any) -> Any:
        if isinstance(hf_config, Mapping):
            if name in hf_config:
                return hf_config[name]
        elif hasattr(hf_config, name):
            return getattr(hf_config, name)
        if default:
            return default[0]
        raise LmfuseError(f"GPT-2 config has no {name!r}; pass a GPT2Config or its config.json")

    return get


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LmfuseError(f"loading GPT-2 weights needs {module.split('.')[0]}; run {INSTALL_HINT}") from None


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bf16 has no numpy dtype, so go via float32
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return _read_weights(path / name)
        raise LmfuseError(
            f"{str(path)!r} has no model.safetensors or pytorch_model.bin (sharded checkpoints are "
            "not supported); save the model with save_pretrained(..., max_shard_size='100GB')"
        )
    if not path.is_file():
        raise LmfuseError(f"GPT-2 checkpoint {str(path)!r} not found")
    if path.suffix == ".safetensors":
        return dict(_import("safetensors.numpy").load_file(str(path)))
    if path.suffix in (".bin", ".pt", ".pth"):
        torch = _import("torch")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return {k: _to_numpy(v) for k, v in state.items()}
    raise LmfuseError(f"unknown GPT-2 checkpoint type {str(path)!r}; give a .safetensors or .bin file")


def _convert(weights: dict[str, np.ndarray], cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    # GPT2LMHeadModel prefixes the body with 'transformer.'; GPT2Model and the hub files do not.
    w = {k.removeprefix("transformer."): np.asarray(v, np.float32) for k, v in weights.items()}
    e, n = cfg.emb_dim, cfg.num_heads
    h = e // n

    def take(name: str) -> np.ndarray:
        if name not in w:
            raise LmfuseError(f"GPT-2 checkpoint has no weight {name!r}; is it a GPT-2 model?")
        return w[name]

    def layer_norm(prefix: str) -> dict[str, jnp.ndarray]:
        return {"scale": jnp.asarray(take(f"{prefix}.weight")), "bias": jnp.asarray(take(f"{prefix}.bias"))}

    params: dict[str, Any] = {
        "wte": {"embedding": jnp.asarray(take("wte.weight"))},
        "wpe": jnp.asarray(take("wpe.weight")),
        "ln_f": layer_norm("ln_f"),
    }
    for i in range(cfg.num_layers):
        p = f"h.{i}"
        # c_attn is Conv1D [E, 3E] = [q | k | v]; each part's columns are head-major (N, H).
        qkv_w = np.split(take(f"{p}.attn.c_attn.weight"), 3, axis=1)
        qkv_b = np.split(take(f"{p}.attn.c_attn.bias"), 3)
        attn = {
            name: {"kernel": jnp.asarray(wi.reshape(e, n, h)), "bias": jnp.asarray(bi.reshape(n, h))}
            for name, wi, bi in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True)
        }
        attn["out"] = {
            "kernel": jnp.asarray(take(f"{p}.attn.c_proj.weight").reshape(n, h, e)),
            "bias": jnp.asarray(take(f"{p}.attn.c_proj.bias")),
        }
        params[f"blocks_{i}"] = {
            "ln_1": layer_norm(f"{p}.ln_1"),
            "attn": attn,
            "ln_2": layer_norm(f"{p}.ln_2"),
            "mlp": {
                "fc": {"kernel": jnp.asarray(take(f"{p}.mlp.c_fc.weight")), "bias": jnp.asarray(take(f"{p}.mlp.c_fc.bias"))},
                "proj": {"kernel": jnp.asarray(take(f"{p}.mlp.c_proj.weight")), "bias": jnp.asarray(take(f"{p}.mlp.c_proj.bias"))},
            },
        }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": jnp.asarray(take("lm_head.weight").T)}  # nn.Linear is [out, in]
    return params
