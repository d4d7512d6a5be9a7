"""Looking inside a trained encoder-decoder: cross-attention maps and trained-fusion gates.

    source_ids, target_ids = encode_pairs(tokenizer, [(source, target)])   # [B, S], [B, T]
    weights = cross_attention(model, params, source_ids, target_ids)     # [B, L, N, T, S]
    gates = fusion_gates(fused_model, fused_params, source_ids, target_ids)  # [B, T] / [B, T, C]

Both run the model teacher-forced on the target (decoder inputs = BOS + the target shifted
right), with `mutable=['intermediates']` so the models sow what they normally discard (see
the 'Inspection' notes in seq2seq_transformer, seq2seq_rnn and fusion). Row t belongs to
target token t: what the decoder looked at, or how much LM it let in, while predicting it.
Ids are right-padded with PAD; source rows end with EOS, as in training.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.typing import ArrayLike

from lmfuse.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from lmfuse.errors import LmfuseError
from lmfuse.models.layers import shift_right

GATED_METHODS = ("deep", "cold")


def encode_pairs(
    tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(source ids [B, S], target ids [B, T]) int32: each text's ids + EOS (cut to `max_length`
    tokens with EOS when it is > 0), right-padded with PAD to the longest row."""
    if not pairs:
        raise LmfuseError("encode_pairs needs at least one (source, target) pair")

    def padded(texts: list[str]) -> np.ndarray:
        rows = []
        for ids in tokenizer.encode_batch(texts):
            if max_length > 0:
                ids = ids[: max_length - 1]
            rows.append([*ids, EOS_ID])
        out = np.full((len(rows), max(len(r) for r in rows)), PAD_ID, np.int32)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    return padded([s for s, _ in pairs]), padded([t for _, t in pairs])


def token_labels(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """The SentencePiece pieces of the non-PAD ids in a row (axis labels for a heatmap)."""
    return [tokenizer.id_to_piece(int(i)) for i in ids if int(i) != PAD_ID]


def cross_attention(
    model: nn.Module, params: Any, source_ids: ArrayLike, target_ids: ArrayLike
) -> np.ndarray:
    """Cross-attention weights float32 [B, L, N, T, S] (L decoder layers, N heads; the RNN's
    single attention has L = N = 1) of an encoder-decoder, or of a fused model's s2s base.

    For every real target position the weights are a distribution over the row's real source
    positions (they sum to 1, and are exactly 0 on source padding); padded target rows are 0.
    """
    flat = _intermediates(model, params, source_ids, target_ids)
    found = [(path, value) for path, value in flat.items() if path[-1] == "cross_attention"]
    if not found:
        raise LmfuseError(
            f"{type(model).__name__} sowed no cross-attention weights; cross_attention needs an "
            "s2s_transformer or s2s_rnn model (or a model fused from one)"
        )
    layers = [_as_layers(value) for _, value in sorted(found, key=lambda item: _layer_index(item[0]))]
    weights = np.concatenate(layers, axis=0).transpose(1, 0, 2, 3, 4)  # [B, L, N, T, S]
    real_targets = np.asarray(target_ids) != PAD_ID
    return weights * real_targets[:, None, None, :, None]


def fusion_gates(
    model: nn.Module, params: Any, source_ids: ArrayLike, target_ids: ArrayLike
) -> np.ndarray:
    """The trained-fusion gate per target position, float32: deep fusion's scalar
    g_t = sigmoid(v^T h_t + b) as [B, T], cold fusion's per-feature g_t as [B, T, C].
    Values lie in (0, 1) at real target positions; padded positions are 0."""
    method = getattr(getattr(model, "cfg", None), "method", None)
    if method not in GATED_METHODS:
        what = f"fusion.method={method!r}" if method else f"a {type(model).__name__}"
        raise LmfuseError(
            f"{what} has no fusion gate; gates exist for {' and '.join(GATED_METHODS)} fusion "
            "(open a workdir trained with configs/fusion.py:deep or :cold)"
        )
    flat = _intermediates(model, params, source_ids, target_ids)
    (gate,) = (value for path, value in flat.items() if path[-1] == "fusion_gate")
    gate = np.asarray(gate[0], np.float32)
    real_targets = (np.asarray(target_ids) != PAD_ID).astype(np.float32)
    return gate * real_targets.reshape(real_targets.shape + (1,) * (gate.ndim - 2))


def _intermediates(
    model: nn.Module, params: Any, source_ids: ArrayLike, target_ids: ArrayLike
) -> dict:
    """Every value the model sows in a teacher-forced pass, keyed by its path (a tuple)."""
    source = jnp.asarray(source_ids, jnp.int32)
    targets = jnp.asarray(target_ids, jnp.int32)
    if source.ndim != 2 or targets.ndim != 2 or source.shape[0] != targets.shape[0]:
        raise LmfuseError(
            f"source ids {source.shape} and target ids {targets.shape} must be [B, S] and "
            "[B, T] with the same B; wrap a single pair's ids in a list"
        )
    if not hasattr(model, "encode"):
        raise LmfuseError(
            f"{type(model).__name__} is not an encoder-decoder; open a seq2seq or fused workdir"
        )
    state = _apply(model, nn.meta.unbox(params), source, targets)
    return traverse_util.flatten_dict(jax.device_get(state["intermediates"]))


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: nn.Module, params: Any, source: jax.Array, targets: jax.Array) -> dict:
    positions = jnp.broadcast_to(jnp.arange(targets.shape[1], dtype=jnp.int32), targets.shape)
    _, state = model.apply(
        {"params": params}, source, shift_right(targets, positions),
        inputs_segment_ids=(source != PAD_ID).astype(jnp.int32),
        decoder_segment_ids=(targets != PAD_ID).astype(jnp.int32),
        mutable=["intermediates"],
    )
    return state


def _layer_index(path: tuple[str, ...]) -> int:
    """The decoder layer a sown value belongs to (blocks_i); 0 for scanned or RNN values."""
    for part in path:
        match = re.fullmatch(r"blocks_(\d+)", part)
        if match:
            return int(match.group(1))
    return 0


def _as_layers(value: tuple) -> np.ndarray:
    """A sown value (a 1-tuple) -> [L, B, N, T, S]: RNN [B, T, S], one Transformer layer
    [B, N, T, S], or a scanned stack [L, B, N, T, S]."""
    weights = np.asarray(value[0], np.float32)
    if weights.ndim == 3:
        return weights[None, :, None]
    return weights[None] if weights.ndim == 4 else weights
