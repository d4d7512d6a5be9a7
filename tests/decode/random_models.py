"""Small decoder-only LMs with random weights, as DecodeSteps, for decoding tests that need
real models but no training."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmfuse.decode import DecodeStep, lm_decode_step
from lmfuse.models import build_model, model_defaults


def random_lm(name: str, seed: int, vocab: int, scale: float = 1.0) -> tuple[DecodeStep, Any]:
    """(DecodeStep, params) of a 1-layer `name` LM whose weights are `scale` x N(0, 1)."""
    cfg = {**model_defaults().to_dict(), "name": name, "emb_dim": 16, "hidden_dim": 16,
           "num_layers": 1, "num_heads": 2, "mlp_dim": 32, "max_len": 16, "dropout": 0.0}
    model = build_model(cfg, vocab)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype),
                          shapes)
    return lm_decode_step(model), params
