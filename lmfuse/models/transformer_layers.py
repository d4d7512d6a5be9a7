"""The Transformers' building blocks besides attention: layer norm, position embeddings, the
MLP, and the conversion between unscanned (blocks_i) and scanned (blocks) parameter layouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.models.attention import residual_std
from lmfuse.models.layers import (
    ACTIVATIONS,
    compute_dtype,
    constrain,
    partitioned,
    sinusoidal_embedding,
)

if TYPE_CHECKING:
    from lmfuse.models.transformer import TransformerConfig


def layer_norm(cfg: TransformerConfig, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_epsilon,
        dtype=compute_dtype(cfg.dtype),
        param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones, ("embed",)),
        bias_init=partitioned(nn.initializers.zeros, ("embed",)),
        name=name,
    )


def position_table(module: nn.Module, cfg: TransformerConfig) -> jax.Array | None:
    """Declares `module`'s learned position table `wpe` [max_len, E] (call it in setup);
    None unless cfg.positions == 'learned'."""
    if cfg.positions != "learned":
        return None
    return module.param(
        "wpe",
        partitioned(nn.initializers.normal(0.02), (None, "embed")),
        (cfg.max_len, cfg.emb_dim),
        jnp.float32,
    )


def add_positions(
    cfg: TransformerConfig, x: jax.Array, positions: jax.Array, wpe: jax.Array | None
) -> jax.Array:
    """x [B, T, E] plus the learned (`wpe`) or sinusoidal embedding of positions [B, T].

    Rope rotates q and k inside attention instead, so then x comes back unchanged.
    """
    if cfg.positions == "learned":
        return x + jnp.take(wpe, positions, axis=0).astype(x.dtype)
    if cfg.positions == "sinusoidal":
        return x + sinusoidal_embedding(positions, cfg.emb_dim).astype(x.dtype)
    return x


class MLP(nn.Module):
    """[B, T, E] -> fc [E, M] -> activation -> proj [M, E] -> [B, T, E]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        dense = dict(use_bias=c.use_bias, dtype=compute_dtype(c.dtype), param_dtype=jnp.float32)
        h = nn.Dense(
            c.mlp_dim,
            kernel_init=partitioned(nn.initializers.normal(0.02), ("embed", "mlp")),
            bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
            name="fc",
            **dense,
        )(x)
        h = constrain(ACTIVATIONS[c.activation](h), ("batch", "length", "mlp"))
        return nn.Dense(
            c.emb_dim,
            kernel_init=partitioned(nn.initializers.normal(residual_std(c)), ("mlp", "embed")),
            bias_init=partitioned(nn.initializers.zeros, ("embed",)),
            name="proj",
            **dense,
        )(h)


def stack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """Unscanned params (blocks_0..blocks_{L-1}) -> scanned layout (`blocks`, leading L axis).

    Works on plain (unboxed) arrays; boxed params from `init` are unboxed first.
    """
    params = nn.meta.unbox(params)
    names = sorted((k for k in params if k.startswith("blocks_")), key=lambda k: int(k.split("_")[1]))
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    out["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), *[params[n] for n in names])
    return out


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """Scanned params (`blocks` with a leading L axis) -> unscanned blocks_0..blocks_{L-1}."""
    params = nn.meta.unbox(params)
    out = {k: v for k, v in params.items() if k != "blocks"}
    num_layers = jax.tree.leaves(params["blocks"])[0].shape[0]
    for i in range(num_layers):
        out[f"blocks_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["blocks"])
    return out
