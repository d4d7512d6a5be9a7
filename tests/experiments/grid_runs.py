"""Running study scripts (experiments/<study>.py) in the tests: tiny overrides, a fast
subprocess, the tables it writes, and the checkpoints it leaves (to tell whether a rerun trained
anything)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli, tiny_s2s_overrides

# Tiny models spend most of their time compiling; LLVM's optimisation level changes only how
# fast the compiled code runs, not what it computes.
FAST = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}


def tiny_grid_overrides(corpus: dict[str, str], **extra) -> list[str]:
    """tiny_s2s_overrides for every run of a grid; the study spaces checkpoints itself."""
    overrides = tiny_s2s_overrides(corpus, **extra)
    return [o for o in overrides if not o.startswith("--config.train.checkpoint_every=")]


def run_study(script: str, args: list[str], env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Runs `python experiments/<study>.py ...` from the repository root, as a user would."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True)


def fast_study(script: str, args: list[str]) -> subprocess.CompletedProcess:
    return run_study(script, args, env=FAST)


def fast_cli(args: list[str]) -> subprocess.CompletedProcess:
    return run_cli(args, env=FAST)


def run_grid(script: str, args: list[str]) -> tuple[int, str]:
    """(exit status, stdout) of a grid run that finished (0: every cell ok, 1: some failed)."""
    result = fast_study(script, args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stdout


def read_csv(path: Path, key: str = "method") -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f)}


def checkpoint_mtimes(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns
            for p in work.glob("*/checkpoints/**/*") if p.is_file()}


def rerun_committed_cell(script: str, args: list[str], tmp_path: Path) -> dict[str, str]:
    """Runs a study script's one cell from nothing at the CPU budget (as the committed table
    was made) into `tmp_path`, and returns its row of the csv it writes."""
    name = Path(script).stem
    env = {} if "LMFUSE_DATA_DIR" in os.environ else {"LMFUSE_DATA_DIR": str(tmp_path / "data")}
    results = tmp_path / "results"
    result = run_study(script, ["--budget", "cpu", *args, "--workdir", str(tmp_path / "work"),
                                "--results", str(results)], env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (results / f"{name}.csv").open(encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    return row
