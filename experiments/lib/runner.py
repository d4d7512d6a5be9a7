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
- Cells share expensive artifacts (trained models) through `RunContext.shared`: made once per
  run, with the time spent on them kept out of the asking cell's own time.

`main` is a study script's command line: --budget, --workdir, --results, --report_only and
--config.key=value overrides (for every training run), plus the script's own settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmfuse.config import split_override_args
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
            stored = json.loads(path.read_text(encoding="utf-8"))
            stored["settings"] = {k: v for k, v in stored.get("settings", {}).items()
                                  if k not in cell_settings}
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
    if report_only and not (workdir / "experiment.json").is_file():
        raise LmfuseError(f"workdir {workdir} holds no results of this experiment to report; "
                          "run it without --report_only first (or pass its --workdir)")
    ledger.claim(_identity(study, overrides), study.cell_settings)
    results_dir = Path(results_dir)
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
    if final:
        for path in paths:
            print(f"wrote {path}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# A study script's command line


def study_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The options every study has; the script adds its settings."""
    parser = argparse.ArgumentParser(
        prog=f"{name}.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--config.key=value overrides go to every training run whose config has the key.",
    )
    parser.add_argument("--budget", default="cpu", choices=BUDGETS,
                        help="cpu: reduced sizes and evaluation subsets; gpu: full configs and "
                             "splits (default cpu)")
    parser.add_argument("--workdir", default=None,
                        help=f"trained models and the cell ledger (default workdirs/{name}_<budget>)")
    parser.add_argument("--results", default=DEFAULT_RESULTS,
                        help=f"tables and plots go here (default {DEFAULT_RESULTS})")
    parser.add_argument("--report_only", action="store_true",
                        help="train and decode nothing: write the report of the finished cells")
    return parser


def add_protocol_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any],
                       weights: Sequence[str]) -> None:
    """The evaluation protocol's settings (`lmfuse.evaluate.protocol`): the decode-time weight
    grids named in `weights` (0 is always added), the seeded validation and test samples, the
    training seeds, and the checkpoints kept per model. Help texts show `defaults` (the
    budget's, {name: value or {budget: value}})."""
    def shown(name: str) -> str:
        value = defaults[name]
        if isinstance(value, dict):
            return ", ".join(f"{budget} {_words(v)}" for budget, v in value.items())
        return _words(value)

    grids = {
        "lambdas": "λ, the target LM's weight",
        "source_lm_weights": "λ_src, density ratio's source-LM weight",
        "ilm_weights": "μ, ILME's internal-LM weight",
        "length_rewards": "β, the reward per output token",
    }
    for name in weights:
        parser.add_argument(f"--{name}", nargs="*", type=float, default=None, metavar="W",
                            help=f"grid of {grids[name]}, chosen on validation; 0 is always "
                                 f"added (default: {shown(name)})")
    parser.add_argument("--val_sample", type=int, default=None, metavar="N",
                        help="validation pairs every choice is made on: a seeded sample over "
                             f"every book, 0: the whole split (default: {shown('val_sample')})")
    parser.add_argument("--test_sample", type=int, default=None, metavar="N",
                        help="test pairs scored: a seeded sample over every book, 0: the "
                             f"whole split (default: {shown('test_sample')})")
    parser.add_argument("--sample_seed", type=int, default=None,
                        help="seed of both samples and of the paired bootstrap (default: "
                             f"{shown('sample_seed')})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="training seeds of every encoder-decoder; several are summarised "
                             f"as mean ± sd (default: {shown('seeds')})")
    parser.add_argument("--checkpoints", type=int, default=None,
                        help="checkpoints kept per encoder-decoder, chosen among on validation "
                             f"(default: {shown('checkpoints')})")


def _words(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return str(value)


def check_protocol(settings: dict[str, Any]) -> None:
    """The protocol's settings are usable: samples >= 0, weights >= 0, seeds distinct."""
    for name in ("val_sample", "test_sample"):
        if settings[name] < 0:
            raise LmfuseError(f"--{name}={settings[name]} must be >= 0 (0: the whole split)")
    for name in ("lambdas", "source_lm_weights", "ilm_weights"):
        negative = [w for w in settings.get(name, ()) if w < 0]
        if negative:
            raise LmfuseError(f"--{name} {negative[0]:g}: LM weights are >= 0 (each term's sign "
                              "is the method's)")
    if len(set(settings["seeds"])) != len(settings["seeds"]):
        raise LmfuseError(f"--seeds {' '.join(map(str, settings['seeds']))} repeats a seed")
    check_at_least(settings, {"checkpoints": 1})


def settings_from(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Each setting as given on the command line, else its default; lists become tuples."""
    settings = {}
    for name, default in defaults.items():
        value = getattr(args, name)
        value = default if value is None else value
        settings[name] = tuple(value) if isinstance(value, list) else value
    return settings


def check_at_least(settings: dict[str, Any], least: dict[str, int]) -> None:
    """Each named numeric setting is at least its bound."""
    for name, bound in least.items():
        if settings[name] < bound:
            raise LmfuseError(f"--{name}={settings[name]} must be at least {bound}")


def main(parser: argparse.ArgumentParser, make_study: Callable[[argparse.Namespace], Study],
         argv: Sequence[str] | None = None) -> int:
    """Runs a study from its command line. Exit status 0 when every cell finished, 1 when some
    failed (each is in the report), 2 for a user mistake (one line on stderr)."""
    from lmfuse.cli import quiet_library_logs
    from lmfuse.cli.compilation_cache import enable_compilation_cache

    quiet_library_logs()
    enable_compilation_cache()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        records, report_only = run_command_line(parser, make_study, argv)
    except LmfuseError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0 if report_only or all(r.status != FAILED for r in records) else 1


def run_command_line(parser: argparse.ArgumentParser,
                     make_study: Callable[[argparse.Namespace], Study],
                     argv: Sequence[str]) -> tuple[list[CellRecord], bool]:
    """(records, report_only) of a study's command line; user mistakes raise LmfuseError."""
    overrides, rest = split_override_args(argv)
    args = parser.parse_args(rest)
    study = make_study(args)
    # The report names the command that runs (or finishes) its cells: without --report_only.
    command = shlex.join(["python", f"experiments/{study.name}.py",
                          *(a for a in argv if a != "--report_only")])
    records = run_study(study, args.workdir, args.results, overrides, command, args.report_only)
    return records, args.report_only
