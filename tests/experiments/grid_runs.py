"""Running `lmfuse experiment` grids in the tests: tiny overrides, a fast subprocess, the
tables it writes, and the checkpoints it leaves (to tell whether a rerun trained anything)."""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import run_cli, tiny_s2s_overrides


def tiny_grid_overrides(corpus: dict[str, str], **extra) -> list[str]:
    """tiny_s2s_overrides for every run of a grid; the experiment spaces checkpoints itself."""
    overrides = tiny_s2s_overrides(corpus, **extra)
    return [o for o in overrides if not o.startswith("--config.train.checkpoint_every=")]


def fast_cli(args: list[str]):
    # Tiny models spend most of their time compiling; LLVM's optimisation level changes only
    # how fast the compiled code runs, not what it computes.
    return run_cli(args, env={"XLA_FLAGS": "--xla_backend_optimization_level=0"})


def run_grid(args: list[str]) -> tuple[int, str]:
    """(exit status, stdout) of a grid run that finished (0: every cell ok, 1: some failed)."""
    result = fast_cli(args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stdout


def read_csv(path: Path, key: str = "method") -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f)}


def checkpoint_mtimes(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns
            for p in work.glob("*/checkpoints/**/*") if p.is_file()}
