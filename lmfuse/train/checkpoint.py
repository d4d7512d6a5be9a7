"""Checkpoints: train state + data-iterator state + config + tokenizer reference, with Orbax.

One `CheckpointManager` per workdir (`<workdir>/checkpoints`) holds six items per step:

* `params`:    the model parameters, saved asynchronously (all that inference restores);
* `optimizer`: {'step', 'opt_state'}: the rest of the TrainState, which only resuming reads;
* `data`:      the Grain iterator state, so a resumed run sees exactly the next batch;
* `config`:    the full config as JSON (what `lmfuse eval/sample` rebuild the model from);
* `tokenizer`: the SentencePiece model path and its SHA-256 (fusion compares these);
* `progress`:  the run's wall time and early-stopping state (`lmfuse.train.budget`), so a
               resumed run stops where an uninterrupted one would (absent before it existed).

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

ITEMS = ("params", "optimizer", "data", "config", "tokenizer", "progress")


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def _handlers() -> dict:
    # Registered up front so item metadata (stored shapes) is readable before any restore.
    return {
        "params": ocp.StandardCheckpointHandler(),
        "optimizer": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        "tokenizer": ocp.JsonCheckpointHandler(),
        "progress": ocp.JsonCheckpointHandler(),
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
    progress: dict | None = None,
) -> bool:
    """Saves asynchronously; `force` saves off the `every` grid (end of run, SIGTERM)."""
    items = dict(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(json.loads(config.to_json())),
        tokenizer=ocp.args.JsonSave(tokenizer_ref),
    )
    if progress is not None:
        items["progress"] = ocp.args.JsonSave(progress)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def read_progress(manager: ocp.CheckpointManager, step: int) -> dict:
    """The `progress` item of checkpoint `step` ({} for a checkpoint saved without one)."""
    if not (manager.directory / str(step) / "progress").exists():  # JSON items have no metadata
        return {}
    restored = manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
    return dict(restored.progress)


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any, step: int | None = None
) -> tuple[Any, int]:
    """Restores state (against `abstract_state`) and the iterator in place; returns (state, step)."""
    step = manager.latest_step() if step is None else step
    # Compare shapes first: a failed Orbax restore leaves async tasks that spew at exit.
    mismatch = _shape_mismatch(manager, step, abstract_state.params)
    if mismatch:
        raise LmfuseError(mismatch)
    optimizer = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state.params),
                optimizer=ocp.args.StandardRestore(optimizer),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
    except (ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmfuseError(
            f"checkpoint step {step} does not fit this model ({first_line}); "
            "use a fresh --workdir or the config that made it"
        ) from None
    state = abstract_state.replace(
        step=restored.optimizer["step"], params=restored.params,
        opt_state=restored.optimizer["opt_state"],
    )
    return state, step


def restore_params(workdir: str | Path, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """The params of a workdir's checkpoint (latest, or `step`), restored against
    `abstract_params` (shapes, dtypes, shardings): (params, step). The one way inference reads
    a model; the optimizer state is never read."""
    manager = make_manager(workdir, read_only=True)
    try:
        steps = manager.all_steps()
        step = manager.latest_step() if step is None else step
        if step is None or step not in steps:
            kept = ", ".join(map(str, steps)) or "none"
            raise LmfuseError(f"{workdir} has no checkpoint at step {step} (kept steps: {kept})")
        mismatch = _shape_mismatch(manager, step, abstract_params)
        if mismatch:
            raise LmfuseError(mismatch)
        restored = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )
    finally:
        manager.close()
    return restored.params, step


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


def stored_param_shapes(workdir: str | Path, step: int | None = None) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{parameter path: stored shape} of a checkpoint (latest, or `step`), read from metadata."""
    manager = make_manager(workdir, read_only=True)
    try:
        step = manager.latest_step() if step is None else step
        stored = manager.item_metadata(step).params
    finally:
        manager.close()
    return {path_names(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}


def _shape_mismatch(manager, step, abstract_params) -> str | None:
    """Names the first parameter whose stored shape differs from the model's, if any."""
    stored = manager.item_metadata(step).params
    if stored is None:
        return (f"checkpoint step {step} holds no 'params' item (written by an older lmfuse, "
                "or damaged); train again in a fresh --workdir")
    stored_leaves = {
        path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
    }
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        have = stored_leaves.get(path_names(path))
        shape = getattr(have, "shape", None)
        if shape is not None and tuple(shape) != tuple(leaf.shape):
            return (
                f"checkpoint step {step} does not fit this model: {'/'.join(path_names(path))} "
                f"is stored as {tuple(shape)} but the config gives {tuple(leaf.shape)}; "
                "use a fresh --workdir or the config that made it"
            )
    return None


def path_names(path) -> tuple[str, ...]:
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
