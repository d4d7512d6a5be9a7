"""What a checkpoint records of itself, and how a reader tells an intact one from a damaged one.

Each checkpoint (`lmfuse.train.checkpoint`) carries an `integrity` item, written with it:

    {"version": 1, "algorithm": "sha256", "items": [the items saved],
     "digests": {"params": ..., "optimizer": ...,            arrays: SHA-256 over each leaf's
                 "config": ..., "tokenizer": ..., ...}}       path, dtype, shape and bytes, in
                                                              sorted path order; JSON items:
                                                              SHA-256 of their sorted-key JSON

The array digests come from a host copy of the state taken when the save starts (the next step
donates the device buffers) and are hashed in Orbax's commit thread, so training goes on while
they are computed and the item commits together with the arrays. The step's
`_CHECKPOINT_METADATA` marks the checkpoint as carrying the item (`MARKER`), so a removed
`integrity` item is damage too, while a checkpoint written before lmfuse kept digests is read as
before, unchecked. A digest is absent where arrays span processes (multi-host runs): no process
holds their bytes.

`check_step` is the cheap check every reader runs (all items present, JSON items parse and
match); `check_arrays` is the one a restore runs on the arrays it read anyway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

ITEM = "integrity"
MARKER = {"lmfuse_integrity": 1}  # the step's custom metadata: "this checkpoint has an ITEM"
JSON_FILE = "metadata"  # what ocp.JsonCheckpointHandler names its file
ARRAY_ITEMS = ("params", "optimizer")


class Damaged(Exception):
    """A checkpoint that cannot be trusted; the reason reads after "checkpoint N is damaged"."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"checkpoint {step} is damaged ({reason})")
        self.step, self.reason = step, reason


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


def host_leaves(tree: Any, copy: bool = False) -> list[tuple[str, np.ndarray]] | None:
    """(path, host array) per leaf, sorted by path; None where a leaf spans processes. `copy`:
    own the bytes, so they outlive a donated device buffer."""
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        host = np.array(leaf, copy=True) if copy else np.asarray(jax.device_get(leaf))
        leaves.append(("/".join(path_names(path)), host))
    return sorted(leaves, key=lambda pair: pair[0])


def array_digest(leaves: list[tuple[str, np.ndarray]]) -> str:
    """SHA-256 over each (path, array)'s path, dtype, shape and raw bytes, in the given order."""
    digest = hashlib.sha256()
    for name, array in leaves:
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def json_digest(value: Any) -> str:
    """SHA-256 of the value's sorted-key JSON: the same for a value and its JSON round trip."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def data_file(step_dir: Path) -> Path:
    """This process's data-iterator state, as Grain's checkpoint handler names it."""
    return step_dir / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class IntegrityHandler(ocp.JsonCheckpointHandler):
    """Writes the integrity record as JSON, hashing the arrays' host copies in the commit thread."""

    async def _save_fn(self, x, directory):
        record = dict(x["record"])
        record["digests"] = {**record["digests"], **{
            item: array_digest(leaves) for item, leaves in x["arrays"].items() if leaves is not None
        }}
        if jax.process_index() == 0:
            (directory / JSON_FILE).write_text(json.dumps(record))


@ocp.args.register_with_handler(IntegrityHandler, for_save=True)
@dataclasses.dataclass
class IntegritySave(ocp.args.CheckpointArgs):
    item: dict


@ocp.args.register_with_handler(IntegrityHandler, for_restore=True)
@dataclasses.dataclass
class IntegrityRestore(ocp.args.CheckpointArgs):
    """Orbax wants a restore type per handler; readers read the JSON file itself (`check_step`)."""

    item: Any = None


def save_args(arrays: dict[str, Any], json_items: dict[str, Any], data_state: Any) -> IntegritySave:
    """The `integrity` item of a checkpoint holding `arrays` (item -> pytree), `json_items`
    (item -> JSON value) and the data iterator's `data_state` (its `get_state()`)."""
    digests = {item: json_digest(json.loads(json.dumps(value))) for item, value in json_items.items()}
    if jax.process_count() == 1 and isinstance(data_state, dict):  # else one file per process
        digests["data"] = json_digest(json.loads(json.dumps(data_state)))
    record = {"version": 1, "algorithm": "sha256", "digests": digests,
              "items": sorted([*arrays, *json_items, "data"])}
    # Copied now, hashed later: the next train step donates these device buffers.
    return IntegritySave({"record": record,
                          "arrays": {item: host_leaves(tree, copy=True) for item, tree in arrays.items()}})


def read_json(path: Path, step: int, what: str) -> Any:
    """The JSON file at `path`, or `Damaged` naming `what` (e.g. "its 'config' item")."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise Damaged(step, f"{what} is missing") from None
    except (UnicodeDecodeError, ValueError):
        raise Damaged(step, f"{what} is not valid JSON") from None
    except OSError as e:
        raise Damaged(step, f"{what} cannot be read ({e.strerror})") from None


def check_step(step_dir: Path, step: int) -> dict | None:
    """The checkpoint's integrity record after the cheap checks (every item present, every JSON
    item and the data-iterator state matching its digest), or None for a checkpoint written
    before lmfuse kept one; raises `Damaged`."""
    meta = read_json(step_dir / "_CHECKPOINT_METADATA", step, "its _CHECKPOINT_METADATA")
    marked = isinstance(meta, dict) and (meta.get("custom_metadata") or {}).get("lmfuse_integrity")
    if not marked and not (step_dir / ITEM).is_dir():
        return None
    record = read_json(step_dir / ITEM / JSON_FILE, step, "its integrity record")
    if not isinstance(record, dict) or not isinstance(record.get("digests"), dict):
        raise Damaged(step, "its integrity record is malformed")
    for item in record.get("items", ()):
        if not (step_dir / item).is_dir():
            raise Damaged(step, f"its '{item}' item is missing")
    for item, expected in record["digests"].items():
        if item in ARRAY_ITEMS:
            continue
        if item == "data":
            if jax.process_count() == 1:
                value = read_json(data_file(step_dir), step, "its data-iterator state")
                if json_digest(value) != expected:
                    raise Damaged(step, "its data-iterator state does not match its digest")
            continue
        value = read_json(step_dir / item / JSON_FILE, step, f"its '{item}' item")
        if json_digest(value) != expected:
            raise Damaged(step, f"its '{item}' item does not match its digest")
    return record


def check_arrays(record: dict | None, step: int, item: str, tree: Any) -> None:
    """Raises `Damaged` if the arrays read for `item` differ from the digest saved with them or
    hold nan/inf (no finite run saves those; an older lmfuse could)."""
    leaves = host_leaves(tree)
    if leaves is None:  # spread over processes: no one process holds the bytes
        return
    expected = (record or {}).get("digests", {}).get(item)
    if expected is not None and array_digest(leaves) != expected:
        raise Damaged(step, f"its '{item}' arrays do not match their SHA-256 digest")
    for name, array in leaves:
        if jnp.issubdtype(array.dtype, jnp.inexact) and not np.isfinite(array).all():
            raise Damaged(step, f"its '{item}' array {name} holds nan/inf")


def cause(error: BaseException, limit: int = 160) -> str:
    """The innermost message of an exception chain, first line, shortened: TensorStore's own
    text ('OUT_OF_RANGE: ...') says more than Orbax's wrapper."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r' in OCDBT database at local file "[^"]*"', "", text)  # the step is named already
    return text if len(text) <= limit else text[: limit - 3] + "..."
