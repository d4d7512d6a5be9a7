"""Building blocks shared by the language models: embeddings, output head, positions, masks.

Shapes use B = batch, T = query length, S = key length, E = embedding width, V = vocab size,
N = attention heads, H = per-head width.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and key activations
carry logical constraints, so a rules table elsewhere (`config.mesh.rules`) can map them onto a
device mesh. With no rules active the constraints are no-ops. The only logical names used in
`lmfuse.models` are `LOGICAL_AXES` for parameters and the same names prefixed `activation_`
for activations (`constrain` adds the prefix), so a rule for one never reaches the other and
the mapping does not depend on the order of the rules (MaxText names them the same way).

Parameters are always float32; `dtype` is the compute dtype, and logits come out in float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmfuse.tokens import BOS_ID

LOGICAL_AXES = (
    "batch",  # examples in a batch
    "length",  # time steps
    "vocab",  # vocabulary entries
    "embed",  # model width; also the input (contracted) dim of RNN weights
    "mlp",  # transformer MLP inner width
    "heads",  # attention heads
    "kv",  # per-head width
    "hidden",  # RNN state width
    "layers",  # stacked layers of a scanned transformer
    "gates",  # stacked RNN gates (i, f, g, o for LSTM; r, z, n for GRU)
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    # GPT-2's "gelu_new" is the tanh approximation.
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The fields every model family's config shares (`TransformerConfig`, `RNNConfig`, ...).

    Each field with a default is the config key `model.<field>`, and this is its only default:
    a key is declared in one dataclass, and `registry.model_defaults` collects them all. A
    field without a default (`vocab_size`) is filled in by `registry.build_model`.
    """

    vocab_size: int
    emb_dim: int = 512  # token embedding width (the transformer's model width)
    num_layers: int = 6  # (decoder) layers
    dropout: float = 0.1  # on embeddings, residual branches (transformer) / between layers (RNN)
    tie_embeddings: bool = True  # output layer = embedding matrix transposed
    dtype: str = "float32"  # compute dtype, 'float32' | 'bfloat16'; params are always float32


def compute_dtype(name: str) -> jnp.dtype:
    """'float32' or 'bfloat16' -> the jnp dtype used for activations and matmuls."""
    return jnp.dtype(DTYPES[name])


def partitioned(init: Callable, axes: tuple[str | None, ...]) -> Callable:
    """An initializer whose parameter is annotated with logical axis names."""
    return nn.with_logical_partitioning(init, axes)


ACTIVATION_PREFIX = "activation_"


def activation_axes(axes: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """('batch', 'length', 'embed') -> ('activation_batch', 'activation_length', ...)."""
    return tuple(None if a is None else ACTIVATION_PREFIX + a for a in axes)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Constrains activation `x` to the logical `axes` (named as parameters are; the activation
    names are what the rules map)."""
    return nn.with_logical_constraint(x, activation_axes(axes))


class EinsumDense(nn.Module):
    """A dense layer whose kernel keeps its multi-axis shape, e.g. [embed, heads, kv].

    Flax's DenseGeneral initialises a flattened 2-D kernel and reshapes it; with logical axis
    rules active, its 3-name annotation is then applied to the 2-D array and fails. Creating
    the kernel at its real shape avoids that. `equation` contracts input and kernel.
    """

    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    bias_shape: tuple[int, ...]
    bias_axes: tuple[str | None, ...]
    equation: str
    kernel_std: float = 0.02
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    # > 0: `equation` contracts x's last `contracted` axes with the kernel's first ones, computed
    # as one 2-D product over rows (`rows_product`) instead of the einsum.
    contracted: int = 0

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.weights()
        if self.contracted:
            y = rows_product(x.astype(self.dtype), kernel.astype(self.dtype), self.contracted)
        else:
            y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        if bias is not None:
            y = y + bias.astype(self.dtype)
        return y

    @nn.compact
    def weights(self) -> tuple[jax.Array, jax.Array | None]:
        """The float32 (kernel, bias or None), created on first use: for callers that apply
        several layers' kernels in one product (`attention.qkv_projection`)."""
        init = partitioned(nn.initializers.normal(self.kernel_std), self.kernel_axes)
        kernel = self.param("kernel", init, self.kernel_shape, jnp.float32)
        if not self.use_bias:
            return kernel, None
        bias_init = partitioned(nn.initializers.zeros, self.bias_axes)
        return kernel, self.param("bias", bias_init, self.bias_shape, jnp.float32)


class Embed(nn.Module):
    """Token embedding table `embedding` [V, E] with logical axes ('vocab', 'embed').

    `__call__` looks tokens up; `attend` is the tied output layer (x @ embedding.T), which
    accumulates and returns float32 logits.
    """

    num_embeddings: int
    features: int
    dtype: str = "float32"
    init_std: float = 0.02

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            partitioned(nn.initializers.normal(self.init_std), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """[B, T] int -> [B, T, E] in the compute dtype."""
        return jnp.take(self.embedding, ids, axis=0).astype(compute_dtype(self.dtype))

    def attend(self, x: jax.Array) -> jax.Array:
        """[..., E] -> float32 logits [..., V]."""
        dt = compute_dtype(self.dtype)
        rows = _as_rows(x).astype(dt)
        logits = jnp.einsum(
            "re,ve->rv", rows, self.embedding.astype(dt), preferred_element_type=jnp.float32
        )
        return logits.reshape(*x.shape[:-1], -1)


class Head(nn.Module):
    """Untied output layer `kernel` [D, V], logical axes (in_axis, 'vocab'); float32 logits."""

    features: int
    in_axis: str = "embed"
    dtype: str = "float32"
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            partitioned(nn.initializers.normal(self.init_std), (self.in_axis, "vocab")),
            (x.shape[-1], self.features),
            jnp.float32,
        )
        dt = compute_dtype(self.dtype)
        logits = jnp.einsum(
            "rd,dv->rv", _as_rows(x).astype(dt), kernel.astype(dt),
            preferred_element_type=jnp.float32,
        )
        return logits.reshape(*x.shape[:-1], -1)


def rows_product(x: jax.Array, kernel: jax.Array, contracted: int) -> jax.Array:
    """x [..., *K] @ kernel [*K, *O] -> [..., *O] (K: kernel's first `contracted` axes) as one
    [rows, prod K] x [prod K, prod O] product. The same products as the multi-axis einsum, but
    XLA:CPU keeps the 2-D operands, and their gradients, in the parameters' own layout instead
    of transposing a 3-D kernel's gradient into it every step (as `_as_rows` for the head)."""
    inner = math.prod(kernel.shape[:contracted])
    rows = x.reshape(-1, inner)
    y = rows @ kernel.reshape(inner, -1)
    return y.reshape(*x.shape[: x.ndim - contracted], *kernel.shape[contracted:])


def _as_rows(x: jax.Array) -> jax.Array:
    """[..., D] -> [rows, D] for the output layer.

    The same products as a batched [B, T, D] einsum, but XLA:CPU then takes d(kernel) =
    rows^T d(logits) straight from d(logits) instead of first copying the [B, T, V] gradient into
    a transposed layout (2-core CPU, B=32, T=128, D=512, V=8000: head + loss backward 2.2-2.5x
    faster; the whole Transformer LM train step 1.11x).
    """
    return x.reshape(-1, x.shape[-1])


def sinusoidal_embedding(positions: jax.Array, features: int) -> jax.Array:
    """Fixed sin/cos position encodings (Vaswani et al.): [B, T] int -> [B, T, E] float32.

    The first half of the features are sines, the second half cosines, with wavelengths in a
    geometric progression from 2*pi towards 10000*2*pi.
    """
    half = features // 2
    inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if features % 2:  # odd width: pad one zero feature
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (rotate-half form) on [B, T, N, H] at integer positions [B, T].

    Computed in float32 and cast back, so bf16 runs rotate as accurately as fp32 ones.
    """
    h = x.shape[-1]
    inv_freq = 1.0 / (base ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def segment_mask(q_segments: jax.Array, kv_segments: jax.Array) -> jax.Array:
    """[B, T], [B, S] segment ids -> bool [B, 1, T, S]: True where query and key share a segment.

    Padding (segment 0) attends only to padding, so no query row is ever fully masked.
    """
    return q_segments[:, None, :, None] == kv_segments[:, None, None, :]


def segment_starts(segment_ids: jax.Array) -> jax.Array:
    """[B, T] segment ids -> float32 keep mask [B, T]: 0 where a new segment starts, else 1.

    Position 0 always keeps (it continues whatever carry came in; a fresh carry is zeros).
    """
    same = segment_ids[:, 1:] == segment_ids[:, :-1]
    keep = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), same], axis=1)
    return keep.astype(jnp.float32)


def shift_right(targets: jax.Array, positions: jax.Array) -> jax.Array:
    """Teacher-forcing decoder inputs: [B, T] targets shifted right by one within each segment.

    Every segment starts (position 0) with BOS, so a packed row never feeds the last token of
    one example to the next. Whatever padding reads is harmless: segment id 0 masks it out.
    """
    shifted = jnp.roll(targets, 1, axis=1)
    return jnp.where(positions == 0, jnp.asarray(BOS_ID, targets.dtype), shifted)
