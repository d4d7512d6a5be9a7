"""The validation points of a decode-time cell's weight sweep, kept so that no point is decoded
twice: each is appended to `<workdir>/cells/<cell>.sweep.jsonl` as it is decoded (a sweep cut
short resumes at its first missing point), and a cell rerun for a wider grid reuses the points
of its old record. A point counts only for the same checkpoint fused with the same trained
models (their `lmfuse train` commands)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lib.runner import RunContext

# The weights each decode-time method takes, by the name `select_on_validation` grids use.
METHOD_WEIGHTS = {
    "shallow": ("lm", "length_reward"),
    "density_ratio": ("lm", "source_lm", "length_reward"),
    "ilme": ("lm", "ilm", "length_reward"),
    "rescore": ("lm", "length_reward"),
}

# The command line's grid settings and the weight of the fusion formula each one holds.
WEIGHT_GRIDS = {"lambdas": "lm", "source_lm_weights": "source_lm", "ilm_weights": "ilm",
                "length_rewards": "length_reward"}


def grids_read_by(method: str) -> tuple[str, ...]:
    """The grid settings a method's cell reads (none for trained methods): a change to one of
    them reruns only the cells that read it."""
    weights = METHOD_WEIGHTS.get(method, ())
    return tuple(name for name, weight in WEIGHT_GRIDS.items() if weight in weights)


def weights_key(weights: Mapping[str, float]) -> tuple:
    """A point's weights as a dictionary key, whatever their order."""
    return tuple(sorted(weights.items()))


@dataclasses.dataclass(frozen=True)
class SweepLog:
    """Each validation point of a sweep, appended as it is decoded: a sweep cut short (a
    killed run) resumes at the first point it lacks. A line counts only for the same
    checkpoint fused with the same trained models."""

    path: Path
    step: int
    commands: Sequence[str]

    def read(self) -> dict[tuple, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        points = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed write
            if entry.get("step") == self.step and entry.get("commands") == list(self.commands):
                points[weights_key(entry["weights"])] = entry["val"]
        return points

    def append(self, weights: Mapping[str, float], val: Mapping[str, Any]) -> None:
        entry = {"step": self.step, "commands": list(self.commands), "weights": dict(weights),
                 "val": dict(val)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # After a killed write the file ends mid-line: start on a line of its own.
        cut = self.path.is_file() and not self.path.read_bytes().endswith(b"\n")
        with self.path.open("a", encoding="utf-8") as f:
            f.write(("\n" if cut and self.path.stat().st_size else "") + json.dumps(entry) + "\n")


def previous_sweep(ctx: RunContext, step: int, commands: Sequence[str]) -> dict[str, Any]:
    """When the cell reruns because its grids changed: the validation points its old record
    decoded, and its values, if it fused the same checkpoint with the same trained models
    (a point then decodes to the same scores); else nothing."""
    old = ctx.previous.values if ctx.previous is not None else {}
    same = (old.get("step") == step and old.get("weights") is not None
            and old.get("commands", [])[:-1] == list(dict.fromkeys(commands)))
    if not same:
        return {"points": {}, "values": None}
    return {"points": {weights_key(p["weights"]): p["val"] for p in old["sweep"]},
            "values": old}
