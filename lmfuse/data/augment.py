"""Token-level data augmentation, off by default.

Each transform takes a 1-D int array of token ids (no BOS/EOS) and a NumPy generator, so Grain's
`random_map` gives every example its own deterministic stream: the same seed and the same
example index always give the same noise, which keeps resume exact.
"""

from __future__ import annotations

import ml_collections
import numpy as np

FIRST_ORDINARY_ID = 5  # ids below this are pad/eos/bos/unk/mask, never sampled as noise


def token_dropout(ids: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
    keep = rng.random(len(ids)) >= rate
    return ids[keep]


def token_replace(
    ids: np.ndarray, rng: np.random.Generator, rate: float, vocab_size: int
) -> np.ndarray:
    replace = rng.random(len(ids)) < rate
    noise = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=len(ids))
    return np.where(replace, noise, ids).astype(ids.dtype)


def local_reorder(ids: np.ndarray, rng: np.random.Generator, window: int) -> np.ndarray:
    """Permutes tokens so that none moves more than `window - 1` places (Lample et al. 2018)."""
    if window <= 1 or len(ids) < 2:
        return ids
    keys = np.arange(len(ids)) + rng.uniform(0, window, size=len(ids))
    return ids[np.argsort(keys, kind="stable")]


def noise_insert(
    ids: np.ndarray, rng: np.random.Generator, rate: float, vocab_size: int
) -> np.ndarray:
    insert_after = rng.random(len(ids)) < rate
    noise = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=int(insert_after.sum()))
    positions = np.nonzero(insert_after)[0] + 1
    return np.insert(ids, positions, noise).astype(ids.dtype)


def is_enabled(cfg: ml_collections.ConfigDict) -> bool:
    return bool(cfg.token_dropout or cfg.token_replace or cfg.local_reorder > 1 or cfg.noise_insert)


def augment(
    ids: np.ndarray, rng: np.random.Generator, cfg: ml_collections.ConfigDict, vocab_size: int
) -> np.ndarray:
    """Applies the configured transforms in a fixed order: drop, replace, reorder, insert."""
    if cfg.token_dropout:
        ids = token_dropout(ids, rng, cfg.token_dropout)
    if cfg.token_replace:
        ids = token_replace(ids, rng, cfg.token_replace, vocab_size)
    if cfg.local_reorder > 1:
        ids = local_reorder(ids, rng, cfg.local_reorder)
    if cfg.noise_insert:
        ids = noise_insert(ids, rng, cfg.noise_insert, vocab_size)
    return ids
