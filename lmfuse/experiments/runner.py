"""Running an experiment file's grid: load it, run each unfinished cell, report.

    lmfuse experiment experiments/E.py --budget cpu --set methods=none,shallow --config.k=v
      -> experiments/E.py: get_experiment('cpu', {'methods': 'none,shallow'}) -> Experiment
      -> for each cell: skip it if the ledger says ok, else run it (an exception marks the cell
         failed with its one-line error, the traceback goes to a log, and the grid goes on)
      -> experiment.report(...) writes the tables and plots

Cells share trained models through `RunContext.shared`: made once per run (and, being
workdirs, once for all runs), with the time spent on them kept out of the cells' own times.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmfuse.errors import LmfuseError
from lmfuse.experiments.ledger import FAILED, OK, PENDING, CellRecord, Ledger

BUDGETS = ("cpu", "gpu")
DEFAULT_RESULTS = "experiments/results"


@dataclasses.dataclass
class RunContext:
    """What a cell sees: where to write, the user's --config overrides, and shared artifacts."""

    workdir: Path
    budget: str
    settings: dict[str, Any]
    overrides: tuple[str, ...]  # --config.key=value, for every training run
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)
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


@dataclasses.dataclass(frozen=True)
class ReportInput:
    experiment: Experiment
    records: list[CellRecord]  # one per cell, in grid order (PENDING: not run yet)
    context: RunContext
    results_dir: Path
    command: str  # the `lmfuse experiment ...` command line of this run
    date: str


@dataclasses.dataclass
class Experiment:
    name: str
    budget: str
    settings: dict[str, Any]
    cells: list[Cell]
    report: Callable[[ReportInput], list[Path]]  # writes the outputs, returns their paths
    # Settings that only choose cells (fractions, methods, ...): every other setting changes
    # results, so a workdir holds the results of one value of each.
    grid_settings: tuple[str, ...] = ()
    check: Callable[[RunContext], None] | None = None  # fails fast on bad overrides


def load_experiment_file(path: str | Path):
    """Imports an experiment file by path; it must define get_experiment(budget, settings)."""
    path = Path(path)
    if not path.is_file():
        raise LmfuseError(f"experiment file {str(path)!r} not found; e.g. "
                          "lmfuse experiment experiments/fusion_ablation.py")
    spec = importlib.util.spec_from_file_location(f"lmfuse_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise LmfuseError(f"experiment file {str(path)!r} has a syntax error at line {e.lineno}") from None
    if not callable(getattr(module, "get_experiment", None)):
        raise LmfuseError(f"experiment file {str(path)!r} has no get_experiment(budget, settings)")
    return module


def run_experiment(
    path: str | Path,
    budget: str = "cpu",
    workdir: str | Path | None = None,
    results_dir: str | Path = DEFAULT_RESULTS,
    settings: dict[str, str] | None = None,
    overrides: Sequence[str] = (),
    command: str = "",
    report_only: bool = False,
) -> list[CellRecord]:
    """Runs every unfinished cell of the experiment in `path`, then writes its report
    (`report_only`: runs nothing, and reports the cells the workdir's ledger holds)."""
    if budget not in BUDGETS:
        raise LmfuseError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    experiment = load_experiment_file(path).get_experiment(budget, dict(settings or {}))
    workdir = Path(workdir or f"workdirs/{experiment.name}_{budget}")
    context = RunContext(workdir, budget, experiment.settings, tuple(overrides))
    if experiment.check is not None:
        experiment.check(context)
    ledger = Ledger(workdir)
    if report_only and not (workdir / "experiment.json").is_file():
        raise LmfuseError(f"workdir {workdir} holds no results of this experiment to report; "
                          "run it without --report_only first (or pass its --workdir)")
    ledger.claim(_identity(experiment, overrides))
    command = command or shlex.join(["lmfuse", "experiment", str(path), "--budget", budget])
    if report_only:
        records = [ledger.read(cell.key) or _pending(cell) for cell in experiment.cells]
        _report(experiment, records, context, Path(results_dir), command, final=True)
        done = sum(r.status == OK for r in records)
        print(f"{experiment.name}: reported {done}/{len(records)} cells finished")
        return records
    records = _run_cells(experiment, context, ledger, Path(results_dir), command)
    failed = sum(r.status == FAILED for r in records)
    print(f"{experiment.name}: {len(records) - failed}/{len(records)} cells ok"
          + (f", {failed} failed (tracebacks in {ledger.cells}/*.log)" if failed else ""))
    return records


def _identity(experiment: Experiment, overrides: Sequence[str]) -> dict[str, Any]:
    kept = {k: list(v) if isinstance(v, tuple) else v for k, v in experiment.settings.items()
            if k not in experiment.grid_settings}
    return {"experiment": experiment.name, "budget": experiment.budget, "settings": kept,
            "overrides": list(overrides)}


def _run_cells(experiment: Experiment, context: RunContext, ledger: Ledger, results_dir: Path,
               command: str) -> list[CellRecord]:
    keys = [cell.key for cell in experiment.cells]
    if len(set(keys)) != len(keys):
        raise LmfuseError(f"experiment {experiment.name} has duplicate cell keys")
    records: list[CellRecord] = []
    total = len(experiment.cells)
    for index, cell in enumerate(experiment.cells, 1):
        head = f"[{index}/{total}] {cell.key}"
        done = ledger.read(cell.key)
        if done is not None and done.status == OK:
            print(f"{head}: skipped (finished in {done.seconds:.1f}s)", flush=True)
            records.append(done)
            continue
        print(f"{head}: running" + (" (retrying a failed cell)" if done else ""), flush=True)
        record = _run_cell(cell, context, ledger)
        status = "ok" if record.status == OK else f"FAILED: {record.error}"
        print(f"{head}: {status} ({record.seconds:.1f}s)", flush=True)
        records.append(record)
        # Written after every cell, so a long grid's partial results are always on disk.
        pending = [_pending(c) for c in experiment.cells[index:]]
        _report(experiment, records + pending, context, results_dir, command, final=False)
    _report(experiment, records, context, results_dir, command, final=True)
    return records


def _pending(cell: Cell) -> CellRecord:
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
    record = CellRecord(cell.key, dict(cell.labels), status, round(own, 1), values, error)
    ledger.write(record, trace)
    return record


def one_line_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(error, LmfuseError):
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _report(experiment: Experiment, records: list[CellRecord], context: RunContext,
            results_dir: Path, command: str, final: bool) -> None:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    paths = experiment.report(ReportInput(experiment, records, context, results_dir, command,
                                          date))
    if final:
        for path in paths:
            print(f"wrote {path}")
    sys.stdout.flush()
