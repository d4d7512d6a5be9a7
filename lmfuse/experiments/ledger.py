"""The resumable record of an experiment's cells, kept in its workdir.

    <workdir>/experiment.json     what the results depend on (settings, overrides): a rerun with
                                  other values refuses the workdir instead of mixing results
    <workdir>/cells/<key>.json    one finished cell: status 'ok' or 'failed', its values, time
    <workdir>/cells/<key>.log     the traceback of a failed cell

Files are written whole (temp file + rename), so an interrupted run never leaves half a record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from lmfuse.errors import LmfuseError

OK, FAILED, PENDING = "ok", "failed", "pending"  # pending: not run yet (partial reports)


@dataclasses.dataclass
class CellRecord:
    key: str
    labels: dict[str, Any]  # the cell's coordinates in the grid (fraction, method, ...)
    status: str  # OK, FAILED or PENDING
    seconds: float
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""  # FAILED: the one-line error


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Ledger:
    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.cells = self.workdir / "cells"

    def claim(self, identity: dict[str, Any]) -> None:
        """Records what results here depend on; refuses a workdir made with other values."""
        path = self.workdir / "experiment.json"
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            for name in sorted(set(stored) | set(identity)):
                if stored.get(name) != identity.get(name):
                    raise LmfuseError(
                        f"workdir {self.workdir} holds results made with {name}="
                        f"{stored.get(name)!r}, this run has {identity.get(name)!r}; use another "
                        "--workdir (or delete that one)"
                    )
            return
        write_json(path, identity)

    def read(self, key: str) -> CellRecord | None:
        path = self.cells / f"{key}.json"
        if not path.is_file():
            return None
        return CellRecord(**json.loads(path.read_text(encoding="utf-8")))

    def write(self, record: CellRecord, traceback_text: str = "") -> None:
        log = self.cells / f"{record.key}.log"
        if traceback_text:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback_text, encoding="utf-8")
        elif log.exists():
            log.unlink()  # a retried cell that now succeeds leaves no stale traceback
        write_json(self.cells / f"{record.key}.json", dataclasses.asdict(record))

    def log_path(self, key: str) -> Path:
        return self.cells / f"{key}.log"
