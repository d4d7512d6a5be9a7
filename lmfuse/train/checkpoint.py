"""Checkpoints: train state + data-iterator state + config + tokenizer reference, with Orbax.

One `CheckpointManager` per workdir (`<workdir>/checkpoints`) holds seven items per step:

* `params`:    the model parameters, saved asynchronously (all that inference restores);
* `optimizer`: {'step', 'opt_state'}: the rest of the TrainState, which only resuming reads;
* `data`:      the Grain iterator state, so a resumed run sees exactly the next batch;
* `config`:    the full config as JSON (what `lmfuse eval/sample` rebuild the model from);
* `tokenizer`: the SentencePiece model path and its SHA-256 (fusion compares these);
* `progress`:  the run's wall time and early-stopping state (`lmfuse.train.budget`), so a
               resumed run stops where an uninterrupted one would (absent before it existed);
* `integrity`: SHA-256 digests of the others (`lmfuse.train.integrity`; absent before it existed).

Restore always goes against an abstract target (shapes, dtypes and shardings of a freshly built
state), so Optax state types survive and arrays land sharded as the mesh says.

Every reader takes the newest intact checkpoint: one that is damaged (an item missing or
unreadable, a digest that differs, nan/inf in its arrays) is skipped with one warning line on
stderr, and resuming moves it aside to `<workdir>/damaged_checkpoints/` so training can write
that step again. With none intact, or a damaged `step` asked for by number, a one-line
`LmfuseError`; nothing is deleted. Inference checks the digests of what it reads (config,
tokenizer, params); resuming checks every item.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from lmfuse.errors import LmfuseError
from lmfuse.train import integrity
from lmfuse.train.integrity import Damaged, path_names

ITEMS = ("params", "optimizer", "data", "config", "tokenizer", "progress", integrity.ITEM)
DAMAGED_DIR = "damaged_checkpoints"
T = TypeVar("T")
_warned: set[tuple[str, int]] = set()  # one warning per damaged checkpoint per process


class NoCheckpointError(LmfuseError):
    """The workdir holds no checkpoint at all (as opposed to only damaged ones)."""


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
        integrity.ITEM: integrity.IntegrityHandler(),
    }


def make_manager(
    workdir: str | Path, keep: int = 3, every: int | None = None, read_only: bool = False
) -> ocp.CheckpointManager:
    if not read_only and keep < 1:  # Orbax's max_to_keep=0 deletes every checkpoint it writes
        raise LmfuseError(f"train.keep_checkpoints={keep} would delete every checkpoint; set it >= 1")
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
    """Saves asynchronously; `force` saves off the `every` grid (end of run, SIGTERM). The
    caller saves finite states only (the loop checks the train step's `finite` flag first)."""
    if not force and not manager.should_save(step):
        return False  # before the integrity item copies the state to the host for nothing
    optimizer = {"step": state.step, "opt_state": state.opt_state}
    json_items = {"config": json.loads(config.to_json()), "tokenizer": tokenizer_ref}
    if progress is not None:
        json_items["progress"] = progress
    items = dict(
        params=ocp.args.StandardSave(state.params),
        optimizer=ocp.args.StandardSave(optimizer),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        **{item: ocp.args.JsonSave(value) for item, value in json_items.items()},
    )
    items[integrity.ITEM] = integrity.save_args(
        {"params": state.params, "optimizer": optimizer}, json_items, data_iterator.get_state()
    )
    return manager.save(step, args=ocp.args.Composite(**items), force=force,
                        custom_metadata=integrity.MARKER)


def _step_dir(manager: ocp.CheckpointManager, step: int) -> Path:
    return Path(manager.directory) / str(step)


def json_item(manager: ocp.CheckpointManager, step: int, item: str) -> Any:
    """A JSON item (`config`, `tokenizer`, `progress`) of checkpoint `step`, after the cheap
    integrity check of the whole step; raises `Damaged`."""
    step_dir = _step_dir(manager, step)
    integrity.check_step(step_dir, step)
    return integrity.read_json(step_dir / item / integrity.JSON_FILE, step, f"its '{item}' item")


def read_progress(manager: ocp.CheckpointManager, step: int) -> dict:
    """The `progress` item of checkpoint `step` ({} for a checkpoint saved without one)."""
    if not (_step_dir(manager, step) / "progress").exists():  # JSON items have no metadata
        integrity.check_step(_step_dir(manager, step), step)  # a removed one is damage
        return {}
    return dict(json_item(manager, step, "progress"))


def _read(manager: ocp.CheckpointManager, step: int, what: str, **args) -> Any:
    """Orbax's restore of `args`; what it raises on damaged files (TensorStore raises a bare
    Exception) becomes `Damaged`, after `_check_fits` has ruled out a model that differs."""
    # Before the read, not after its failure: an orphaned read can fail in TensorStore's thread
    # between the first failure and the except clause, and print its traceback.
    _drop_orphaned_read_errors()
    try:
        return manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - any failure to read checked, fitting files is damage
        raise Damaged(step, f"its {what} cannot be read: {integrity.cause(e)}") from None


def _drop_orphaned_read_errors() -> None:
    """Orbax reads arrays with asyncio.gather and closes its event loop when the first read
    fails; the reads still in flight then fail too, later, and Python prints each as an
    "Exception ignored" traceback (dozens for one truncated file). A failure is reported as one
    line, so once a checkpoint is read those two messages, and only they, are dropped."""
    previous = sys.unraisablehook
    if getattr(previous, "lmfuse_drops_orphaned_reads", False):
        return

    def hook(unraisable) -> None:
        text = str(unraisable.exc_value)
        if text == "Event loop is closed" or text.startswith("Encountered error while reading array"):
            return
        previous(unraisable)

    hook.lmfuse_drops_orphaned_reads = True
    sys.unraisablehook = hook


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any, step: int | None = None
) -> tuple[Any, int]:
    """Restores state (against `abstract_state`) and the iterator in place from the newest
    intact checkpoint (or `step`), moving damaged newer ones aside; returns (state, step)."""
    abstract_optimizer = {"step": abstract_state.step, "opt_state": abstract_state.opt_state}

    def attempt(at: int) -> Any:
        record = integrity.check_step(_step_dir(manager, at), at)
        _check_fits(manager, at, {"params": abstract_state.params, "optimizer": abstract_optimizer})
        # One item per read, so the warning names the one that failed.
        params = _read(manager, at, "'params' arrays",
                       params=ocp.args.StandardRestore(abstract_state.params)).params
        integrity.check_arrays(record, at, "params", params)
        optimizer = _read(manager, at, "'optimizer' arrays",
                          optimizer=ocp.args.StandardRestore(abstract_optimizer)).optimizer
        integrity.check_arrays(record, at, "optimizer", optimizer)
        _read(manager, at, "data-iterator state", data=grain.checkpoint.CheckpointRestore(data_iterator))
        return abstract_state.replace(step=optimizer["step"], params=params,
                                      opt_state=optimizer["opt_state"])

    return _first_intact(manager, attempt, step, set_aside=True)


def verify(manager: ocp.CheckpointManager, step: int) -> None:
    """Reads every item of checkpoint `step` (arrays without a model to restore them into) and
    checks it against its digests; raises `Damaged`. For deciding whether a run is finished."""
    record = integrity.check_step(_step_dir(manager, step), step)
    for item in integrity.ARRAY_ITEMS:
        restored = _read(manager, step, f"'{item}' arrays", **{item: ocp.args.StandardRestore()})
        integrity.check_arrays(record, step, item, restored[item])


def params_at(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
    """The params of checkpoint `step`, restored against `abstract_params` (shapes, dtypes,
    shardings) and checked against their digest; raises `Damaged`."""
    record = integrity.check_step(_step_dir(manager, step), step)
    _check_fits(manager, step, {"params": abstract_params})
    restored = _read(manager, step, "'params' arrays", params=ocp.args.StandardRestore(abstract_params))
    integrity.check_arrays(record, step, "params", restored.params)
    return restored.params


def newest_intact(
    workdir: str | Path, attempt: Callable[[ocp.CheckpointManager, int], T], step: int | None = None,
    warn: bool = True,
) -> tuple[T, int]:
    """(attempt(manager, step), step) for the newest checkpoint where `attempt` raises no
    `Damaged` (or exactly `step`), with one warning line per damaged checkpoint skipped."""
    directory = checkpoint_dir(workdir)
    if Path(workdir).exists() and not Path(workdir).is_dir():  # e.g. fusion.lm_workdir=<a file>
        raise LmfuseError(f"workdir {workdir} is a file, not a directory; pass the workdir "
                          "lmfuse train wrote")
    if not directory.is_dir():
        raise NoCheckpointError(f"no checkpoints in workdir {workdir}; train first with lmfuse train")
    manager = make_manager(workdir, read_only=True)
    try:
        return _first_intact(manager, lambda at: attempt(manager, at), step, warn=warn)
    finally:
        manager.close()


def restore_params(workdir: str | Path, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """The params of a workdir's newest intact checkpoint (or `step`), restored against
    `abstract_params` (shapes, dtypes, shardings): (params, step). The one way inference reads
    a model; the optimizer state is never read."""
    return newest_intact(workdir, lambda manager, at: params_at(manager, at, abstract_params), step)


def read_json_item(workdir: str | Path, item: str, step: int | None = None) -> dict:
    """Reads the `config` or `tokenizer` item of a checkpoint (newest intact, or `step`) without
    building anything. It skips damaged checkpoints quietly: these items are the run's, alike in
    each checkpoint, and the reader of the state that follows names the checkpoint it uses."""
    return newest_intact(workdir, lambda manager, at: json_item(manager, at, item), step, warn=False)[0]


def stored_param_shapes(workdir: str | Path, step: int | None = None) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{parameter path: stored shape} of a checkpoint (newest intact, or `step`), from metadata."""

    def shapes(manager: ocp.CheckpointManager, at: int) -> dict:
        integrity.check_step(_step_dir(manager, at), at)
        return {names: tuple(leaf.shape) for names, leaf in _stored_leaves(manager, at, "params").items()}

    return newest_intact(workdir, shapes, step, warn=False)[0]  # quiet, as read_json_item


def _stored_leaves(manager: ocp.CheckpointManager, step: int, item: str) -> dict[tuple[str, ...], Any]:
    """{path names: stored metadata leaf} of an array item; raises `Damaged` if unreadable."""
    try:
        stored = manager.item_metadata(step)[item]
    except KeyError:
        stored = None
    except Exception as e:  # noqa: BLE001 - TensorStore and JSON errors alike: damaged metadata
        raise Damaged(step, f"its '{item}' metadata cannot be read: {integrity.cause(e)}") from None
    if stored is None:
        raise Damaged(step, f"its '{item}' item is missing")
    return {path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}


def _check_fits(manager: ocp.CheckpointManager, step: int, abstract: dict[str, Any]) -> None:
    """A one-line `LmfuseError` naming the first leaf whose stored shape (or presence) differs
    from the model's: a config that differs is the user's to fix, not damage to skip."""
    for item, tree in abstract.items():
        stored = _stored_leaves(manager, step, item)
        wanted = {path_names(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
        for names in sorted(stored.keys() | wanted.keys()):
            have = getattr(stored.get(names), "shape", None)
            want = getattr(wanted.get(names), "shape", None)
            if names in stored and names in wanted and (have is None or tuple(have) == tuple(want)):
                continue
            where = "/".join(names)
            found = (f"is stored as {tuple(have)} but the config gives {tuple(want)}"
                     if names in stored and names in wanted else
                     "is not in the checkpoint" if names in wanted else "is not in this model")
            raise LmfuseError(f"checkpoint step {step} does not fit this model: {item} {where} "
                              f"{found}; use a fresh --workdir or the config that made it")


def _first_intact(manager: ocp.CheckpointManager, attempt: Callable[[int], T], step: int | None,
                  set_aside: bool = False, warn: bool = True) -> tuple[T, int]:
    directory = Path(manager.directory)
    steps = sorted(manager.all_steps(), reverse=True)
    kept = ", ".join(map(str, sorted(steps))) or "none"
    if step is not None:
        if step not in steps:
            raise LmfuseError(f"{directory.parent} has no checkpoint at step {step} (kept steps: {kept})")
        try:
            return attempt(step), step
        except Damaged as e:
            raise LmfuseError(f"checkpoint {step} in {directory} is damaged ({e.reason}); pick "
                              f"another step (kept: {kept})") from None
    if not steps:
        raise NoCheckpointError(f"workdir {directory.parent} has no finished checkpoint")
    damaged: list[Damaged] = []
    for at in steps:
        try:
            result = attempt(at)
        except Damaged as e:
            damaged.append(e)
            continue
        for e in damaged:
            _skip(manager, e, at, set_aside, warn)
        if damaged and set_aside:
            manager.reload()
        return result, at
    reasons = "; ".join(f"{e.step}: {e.reason}" for e in damaged)
    raise LmfuseError(f"every checkpoint in {directory} is damaged ({reasons}); nothing was moved "
                      "or deleted: train again in a fresh --workdir, or put back an intact copy")


def _skip(manager: ocp.CheckpointManager, damaged: Damaged, used: int, set_aside: bool,
          warn: bool) -> None:
    """One warning line; with `set_aside`, moves the checkpoint out of Orbax's sight, so the
    resumed run can write that step again (Orbax never saves at or below its latest step)."""
    directory = Path(manager.directory)
    action = f"using checkpoint {used}"
    if set_aside and jax.process_index() == 0:
        target = directory.parent / DAMAGED_DIR / str(damaged.step)
        suffix = 0
        while target.exists():
            suffix += 1
            target = target.with_name(f"{damaged.step}.{suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(_step_dir(manager, damaged.step), target)
        action = f"moved it to {target}; resuming from checkpoint {used}"
    if warn and (str(directory), damaged.step) not in _warned and jax.process_index() == 0:
        _warned.add((str(directory), damaged.step))
        print(f"lmfuse: warning: checkpoint {damaged.step} in {directory} is damaged "
              f"({damaged.reason}); {action}", file=sys.stderr)
