"""Opening a trained workdir: its config, tokenizer and restored parameters (never the
optimizer state: only resuming a run reads that, in `lmfuse.train.loop`)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import jax
import ml_collections
import numpy as np

from lmfuse.data.tokenizer import Tokenizer
from lmfuse.errors import LmfuseError
from lmfuse.train import checkpoint
from lmfuse.train.trainer import Model, build_model_on_mesh


def load_workdir_config(workdir: str | Path) -> ml_collections.ConfigDict:
    stored = checkpoint.read_json_item(workdir, "config")
    return ml_collections.ConfigDict(stored)


def load_workdir_tokenizer(workdir: str | Path) -> Tokenizer:
    return _tokenizer(workdir, checkpoint.read_json_item(workdir, "tokenizer"))


def _tokenizer(workdir: str | Path, ref: dict) -> Tokenizer:
    path = Path(ref["path"])
    if not path.is_file():
        raise LmfuseError(
            f"the tokenizer of {workdir} ({path}) is missing; re-run lmfuse data prepare "
            "with the workdir's config"
        )
    tokenizer = Tokenizer(path)
    if tokenizer.sha256 != ref["sha256"]:
        raise LmfuseError(f"tokenizer {path} changed since {workdir} was trained (sha256 differs)")
    return tokenizer


def load_model(workdir: str | Path, step: int | None = None) -> tuple[Model, object, int]:
    """(the model rebuilt from the stored config on its mesh, its params, the step): the newest
    intact checkpoint (a damaged one is skipped with a warning), or `step`. Config, tokenizer
    and params all come from that one checkpoint."""

    def attempt(manager, at: int) -> tuple[Model, object]:
        config = ml_collections.ConfigDict(checkpoint.json_item(manager, at, "config"))
        model = build_model_on_mesh(config, _tokenizer(workdir, checkpoint.json_item(manager, at, "tokenizer")))
        return model, checkpoint.params_at(manager, at, model.abstract_params)

    (model, params), step = checkpoint.newest_intact(workdir, attempt, step)
    return model, params, step


def params_digest(params) -> str:
    """SHA-256 over every parameter's path, dtype, shape and bytes, in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.asarray(jax.device_get(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def describe(params) -> list[tuple[str, tuple[int, ...], str, str]]:
    """(path, shape, dtype, sharding spec) per parameter."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        spec = getattr(getattr(leaf, "sharding", None), "spec", "")
        rows.append((jax.tree_util.keystr(path), tuple(leaf.shape), str(leaf.dtype), str(spec)))
    return rows


def count_by_module(params) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        top = str(getattr(path[0], "key", path[0]))
        counts[top] = counts.get(top, 0) + math.prod(leaf.shape)
    return counts
