"""Checkpoints: train state + data-iterator state + config + tokenizer reference, with Orbax.

One `CheckpointManager` per workdir (`<workdir>/checkpoints`) holds four items per step:

* `state`:     the TrainState pytree (params, optimizer state, step), saved asynchronously;
* `data`:      the Grain iterator state, so a resumed run sees exactly the next batch;
* `config`:    the full config as JSON (what `lmfuse eval/sample` rebuild the model from);
* `tokenizer`: the SentencePiece model path and its SHA-256 (fusion compares these).

Restore always goes against an abstract target (shapes, dtypes and shardings of a freshly built
state), so Optax state types survive and arrays land sharded as the mesh says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from lmfuse.errors import LmfuseError

ITEMS = ("state", "data", "config", "tokenizer")


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def _handlers() -> dict:
    # Registered up front so item metadata (stored shapes) is readable before any restore.
    return {
        "state": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        "tokenizer": ocp.JsonCheckpointHandler(),
    }


def make_manager(
    workdir: str | Path, keep: int = 3, every: int | None = None, read_only: bool = False
) -> ocp.CheckpointManager:
    # A reader's save-side options are what read_only implies, so Orbax has nothing to warn
    # about each time eval, translate or fusion opens a checkpoint.
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, max_to_keep=None, save_interval_steps=0
    ) if read_only else ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=every or 1,
        create=True,
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=options,
        item_handlers=_handlers(),
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: Any,
    config: ml_collections.ConfigDict,
    tokenizer_ref: dict,
    force: bool = False,
) -> bool:
    """Saves asynchronously; `force` saves off the `every` grid (end of run, SIGTERM)."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
        tokenizer=ocp.args.JsonSave(tokenizer_ref),
    )
    return manager.save(step, args=args, force=force)


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any, step: int | None = None
) -> tuple[Any, int]:
    """Restores state (against `abstract_state`) and the iterator in place; returns (state, step)."""
    step = manager.latest_step() if step is None else step
    # Compare shapes first: a failed Orbax restore leaves async tasks that spew at exit.
    mismatch = _shape_mismatch(manager, step, abstract_state)
    if mismatch:
        raise LmfuseError(mismatch)
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
    except (ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmfuseError(
            f"checkpoint step {step} does not fit this model ({first_line}); "
            "use a fresh --workdir or the config that made it"
        ) from None
    return restored.state, step


def read_json_item(workdir: str | Path, item: str, step: int | None = None) -> dict:
    """Reads the `config` or `tokenizer` item of a checkpoint without building anything."""
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise LmfuseError(f"no checkpoints in workdir {workdir}; train first with lmfuse train")
    manager = make_manager(workdir, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise LmfuseError(f"workdir {workdir} has no finished checkpoint")
    restored = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
    manager.close()
    return restored[item]


def _shape_mismatch(manager, step, abstract_state) -> str | None:
    """Names the first parameter whose stored shape differs from the model's, if any."""
    stored = manager.item_metadata(step).state
    stored_leaves = {
        _path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
    }
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
        have = stored_leaves.get(_path_names(path))
        shape = getattr(have, "shape", None)
        if shape is not None and tuple(shape) != tuple(leaf.shape):
            return (
                f"checkpoint step {step} does not fit this model: {'/'.join(_path_names(path))} "
                f"is stored as {tuple(shape)} but the config gives {tuple(leaf.shape)}; "
                "use a fresh --workdir or the config that made it"
            )
    return None


def _path_names(path) -> tuple[str, ...]:
    """Key path as plain names: stored metadata uses dict keys where the state has attributes."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return tuple(names)
