"""A small resumable runner: a study is a list of cells, each a function that returns its
result values; finished cells are kept on disk and skipped when the study runs again.

    study = Study('fusion_study', 'cpu', settings, cells, report=write_report)
    records = run_study(study, workdir, results_dir, overrides, command)

- <workdir>/experiment.json holds what the results depend on (settings, overrides): a rerun
  with other values refuses the workdir instead of mixing results. Settings that only some
  cells read (`Study.cell_settings`, e.g. a decode-time method's weight grids) are recorded in
  those cells' records instead: a cell made with other values is rerun, seeing its old record
  as `RunContext.previous` so it can keep what still holds (the points a wider grid shares).
- <workdir>/cells/<key>.json holds one cell's record (status 'ok' or 'failed', values, time);
  <key>.log the traceback of a failed cell, whose one-line error goes to the report. A failed
  cell does not stop the others, and a rerun retries it.
- The report is rewritten after every cell, so a long grid's partial results are always on
  disk; `report_only` rewrites it from the ledger alone, unfinished cells marked pending.
- Beside the report, <results>/<name>_ledger.json keeps the ledger itself (identity, every
  finished cell's record, the workdir's other json files such as artifacts.json), so it can be
  committed with the tables: a run whose workdir lacks a cell the results' ledger holds, made
  with the same identity and cell settings, takes that record instead of rerunning it (models
  a new cell needs are retrained where their workdirs are gone).
- Cells share expensive artifacts (trained models) through `RunContext.shared`: made once per
  run, with the time spent on them kept out of the asking cell's own time.

A study script's command line (--budget, --workdir, --results, --report_only, the protocol's
flags and --config.key=value overrides) is `lib.study_cli`'s.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmfuse.errors import LmfuseError

OK, FAILED, PENDING = "ok", "failed", "pending"  # pending: not run yet (partial reports)
NOT_APPLICABLE = "n/a"  # equal to another cell by construction: reported, never run
BUDGETS = ("cpu", "gpu")
DEFAULT_RESULTS = "experiments/results"


@dataclasses.dataclass
class CellRecord:
    key: str
    labels: dict[str, Any]  # the cell's coordinates in the grid (fraction, method, ...)
    status: str  # OK, FAILED, PENDING or NOT_APPLICABLE
    seconds: float
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""  # FAILED: the one-line error; NOT_APPLICABLE: why
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # of Cell.settings


@dataclasses.dataclass
class RunContext:
    """What a cell sees: where to write, the user's --config overrides, and shared artifacts."""

    workdir: Path
    budget: str
    settings: dict[str, Any]
    overrides: tuple[str, ...]  # --config.key=value, for every training run
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)
    # While a cell reruns because its settings changed: its record made with the old ones.
    previous: CellRecord | None = None
    shared_seconds: float = 0.0  # time spent making shared artifacts, so far
    _depth: int = 0  # shared() calls in progress (an artifact may need another one)

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """`make()` once per run for `name`; its time is not charged to the cell asking."""
        if name not in self.memo:
            start = time.perf_counter()
            self._depth += 1
            try:
                self.memo[name] = make()
            finally:
                self._depth -= 1
                if not self._depth:  # nested artifacts are inside the outer one's time
                    self.shared_seconds += time.perf_counter() - start
        return self.memo[name]


@dataclasses.dataclass(frozen=True)
class Cell:
    key: str  # unique and file-name safe, e.g. 'f5-transformer-shallow'
    labels: dict[str, Any]  # its coordinates in the grid, for tables
    run: Callable[[RunContext], dict[str, Any]]  # -> the result values
    # Set when the cell equals another by construction (e.g. density ratio with the same LM
    # twice is no fusion): the report marks it N/A with this reason, and it is never run.
    not_applicable: str = ""
    # The Study.cell_settings this cell reads: its record keeps their values, and a record
    # made with other values is rerun.
    settings: tuple[str, ...] = ()


@dataclasses.dataclass
class Study:
    name: str
    budget: str
    settings: dict[str, Any]
    cells: list[Cell]
    report: Callable[[Report], list[Path]]  # writes the outputs, returns their paths
    # Settings that only choose cells (fractions, methods, ...): every other setting changes
    # results, so a workdir holds the results of one value of each.
    grid_settings: tuple[str, ...] = ()
    # Settings only some cells read (each cell names its own in Cell.settings): kept out of
    # the workdir's identity, so changing one reruns just the cells that read it.
    cell_settings: tuple[str, ...] = ()
    check: Callable[[RunContext], None] | None = None  # fails fast on bad overrides


@dataclasses.dataclass(frozen=True)
class Report:
    study: Study
    records: list[CellRecord]  # one per cell, in grid order (PENDING: not run yet)
    context: RunContext
    results_dir: Path
    command: str  # the command line that runs (or finishes) these cells
    date: str


# ---------------------------------------------------------------------------------------------
# The ledger


def write_json(path: Path, data: Any) -> None:
    """Written whole (temp file + rename), so an interrupted run never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Ledger:
    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.cells = self.workdir / "cells"

    def claim(self, identity: dict[str, Any], cell_settings: Sequence[str] = ()) -> None:
        """Records what results here depend on; refuses a workdir made with other values.
        `cell_settings` are checked per cell instead (a workdir may list them from before)."""
        path = self.workdir / "experiment.json"
        if path.is_file():
            stored = without_cell_settings(json.loads(path.read_text(encoding="utf-8")),
                                           cell_settings)
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

    def snapshot(self) -> dict[str, Any]:
        """The ledger as one json value: identity, finished cells, the workdir's other json."""
        def load(path: Path) -> Any:
            return json.loads(path.read_text(encoding="utf-8"))

        files = {p.name: load(p) for p in sorted(self.workdir.glob("*.json"))
                 if p.name != "experiment.json"}
        cells = {p.stem: load(p) for p in sorted(self.cells.glob("*.json"))}
        return {"identity": load(self.workdir / "experiment.json"), "files": files,
                "cells": {key: r for key, r in cells.items()
                          if isinstance(r, dict) and r.get("status") == OK}}

    def restore(self, snapshot: dict[str, Any]) -> int:
        """Takes from `snapshot` (`read_snapshot`'s) the finished cells this workdir lacks, and
        the entries its json files lack; returns how many cells were restored. Cell settings
        are checked per cell by the run, as for the workdir's own records."""
        missing = {key: r for key, r in snapshot["cells"].items()
                   if not (self.cells / f"{key}.json").is_file()}
        for key, record in missing.items():
            write_json(self.cells / f"{key}.json", record)
        for name, content in snapshot["files"].items():
            target = self.workdir / name
            current = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
            if isinstance(content, dict) and isinstance(current, dict):
                write_json(target, {**content, **current})  # the workdir's own entries win
        return len(missing)


def read_snapshot(path: Path, identity: dict[str, Any], cell_settings: Sequence[str]
                  ) -> dict[str, Any] | None:
    """The ledger snapshot at `path` if it was made with `identity` (cell settings aside),
    else None: another experiment's, or another setting's, results are never taken."""
    if not path.is_file():
        return None
    snapshot = json.loads(path.read_text(encoding="utf-8"))
    same = (without_cell_settings(snapshot["identity"], cell_settings)
            == without_cell_settings(identity, cell_settings))
    return snapshot if same else None


def without_cell_settings(identity: dict[str, Any], cell_settings: Sequence[str]
                          ) -> dict[str, Any]:
    """An experiment identity without the settings checked per cell (a workdir or a snapshot
    may list them from before)."""
    settings = {k: v for k, v in identity.get("settings", {}).items() if k not in cell_settings}
    return {**identity, "settings": settings}


def snapshot_path(study: Study, results_dir: Path) -> Path:
    return results_dir / f"{study.name}_ledger.json"


# ---------------------------------------------------------------------------------------------
# Running


def run_study(
    study: Study,
    workdir: str | Path | None,
    results_dir: str | Path,
    overrides: Sequence[str],
    command: str,
    report_only: bool = False,
) -> list[CellRecord]:
    """Runs every unfinished cell, then writes the report (`report_only`: runs nothing, and
    reports the cells the workdir's ledger holds)."""
    workdir = Path(workdir or f"workdirs/{study.name}_{study.budget}")
    context = RunContext(workdir, study.budget, study.settings, tuple(overrides))
    if study.check is not None:
        study.check(context)
    ledger = Ledger(workdir)
    results_dir = Path(results_dir)
    identity = _identity(study, overrides)
    snapshot = read_snapshot(snapshot_path(study, results_dir), identity, study.cell_settings)
    if report_only and not (workdir / "experiment.json").is_file() and snapshot is None:
        raise LmfuseError(f"workdir {workdir} holds no results of this experiment to report; "
                          "run it without --report_only first (or pass its --workdir)")
    ledger.claim(identity, study.cell_settings)
    if snapshot is not None and (restored := ledger.restore(snapshot)):
        print(f"{study.name}: {restored} finished cell(s) restored from "
              f"{snapshot_path(study, results_dir)} (the workdir did not hold them)", flush=True)
    if report_only:
        records = [_current(ledger.read(cell.key), cell, context) for cell in study.cells]
        _report(study, records, context, results_dir, command, final=True)
        done = sum(r.status == OK for r in records)
        print(f"{study.name}: reported {done}/{len(records)} cells finished")
        return records
    records = _run_cells(study, context, ledger, results_dir, command)
    failed = sum(r.status == FAILED for r in records)
    skipped = sum(r.status == NOT_APPLICABLE for r in records)
    print(f"{study.name}: {len(records) - failed - skipped}/{len(records)} cells ok"
          + (f", {skipped} N/A" if skipped else "")
          + (f", {failed} failed (tracebacks in {ledger.cells}/*.log)" if failed else ""))
    return records


def _identity(study: Study, overrides: Sequence[str]) -> dict[str, Any]:
    kept = {k: _plain(v) for k, v in study.settings.items()
            if k not in study.grid_settings and k not in study.cell_settings}
    return {"experiment": study.name, "budget": study.budget, "settings": kept,
            "overrides": list(overrides)}


def _plain(value: Any) -> Any:
    """As JSON gives it back (tuples as lists), so stored and current values compare equal."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _cell_settings(cell: Cell, context: RunContext) -> dict[str, Any]:
    return {name: _plain(context.settings[name]) for name in cell.settings}


def _current(record: CellRecord | None, cell: Cell, context: RunContext) -> CellRecord:
    """The ledger's record of `cell` if made with the current settings, else pending."""
    if record is None or record.settings != _cell_settings(cell, context):
        return _pending(cell)
    return record


def _run_cells(study: Study, context: RunContext, ledger: Ledger, results_dir: Path,
               command: str) -> list[CellRecord]:
    keys = [cell.key for cell in study.cells]
    if len(set(keys)) != len(keys):
        raise LmfuseError(f"{study.name} has duplicate cells; give each setting value once")
    records: list[CellRecord] = []
    total = len(study.cells)
    for index, cell in enumerate(study.cells, 1):
        head = f"[{index}/{total}] {cell.key}"
        if cell.not_applicable:
            print(f"{head}: N/A ({cell.not_applicable})", flush=True)
            records.append(_pending(cell))
            continue
        done = ledger.read(cell.key)
        changed = sorted(name for name, value in _cell_settings(cell, context).items()
                         if done is None or done.settings.get(name) != value)
        if done is not None and done.status == OK and not changed:
            print(f"{head}: skipped (finished in {done.seconds:.1f}s)", flush=True)
            records.append(done)
            continue
        why = ("" if done is None else " (retrying a failed cell)" if done.status != OK
               else f" (again: {', '.join(changed)} changed)")
        print(f"{head}: running{why}", flush=True)
        context.previous = done if done is not None and done.status == OK else None
        try:
            record = _run_cell(cell, context, ledger)
        finally:
            context.previous = None
        status = "ok" if record.status == OK else f"FAILED: {record.error}"
        print(f"{head}: {status} ({record.seconds:.1f}s)", flush=True)
        records.append(record)
        pending = [_pending(c) for c in study.cells[index:]]
        _report(study, records + pending, context, results_dir, command, final=False)
    _report(study, records, context, results_dir, command, final=True)
    return records


def _pending(cell: Cell) -> CellRecord:
    """The record of a cell not run (yet), or never run because it is N/A."""
    if cell.not_applicable:
        return CellRecord(cell.key, dict(cell.labels), NOT_APPLICABLE, 0.0,
                          error=cell.not_applicable)
    return CellRecord(cell.key, dict(cell.labels), PENDING, 0.0)


def _run_cell(cell: Cell, context: RunContext, ledger: Ledger) -> CellRecord:
    start, shared_before = time.perf_counter(), context.shared_seconds
    try:
        values = cell.run(context)
        status, error, trace = OK, "", ""
    except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the grid goes on
        values, status, trace = {}, FAILED, traceback.format_exc()
        error = one_line_error(e)
    own = time.perf_counter() - start - (context.shared_seconds - shared_before)
    record = CellRecord(cell.key, dict(cell.labels), status, round(own, 1), values, error,
                        _cell_settings(cell, context))
    ledger.write(record, trace)
    return record


def one_line_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(error, LmfuseError):
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _report(study: Study, records: list[CellRecord], context: RunContext, results_dir: Path,
            command: str, final: bool) -> None:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    paths = study.report(Report(study, records, context, results_dir, command, date))
    paths.append(snapshot_path(study, results_dir))
    write_json(paths[-1], Ledger(context.workdir).snapshot())
    if final:
        for path in paths:
            print(f"wrote {path}")
    sys.stdout.flush()
