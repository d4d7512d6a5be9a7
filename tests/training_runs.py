"""`lmfuse train` in fresh interpreters, for the resume and crash tests: start, watch, kill, read.

Runs go through the command line as a user's would; the helpers watch the workdir from outside.
Orbax writes checkpoint N into `checkpoints/N.orbax-checkpoint-tmp` and renames it to
`checkpoints/N` once every item is committed, so a temporary directory that outlives a killed
process is a save that process had in flight. (Orbax removes such a leftover when a later run
saves step N again.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import REPO, run_cli, tiny_lm_overrides

CONFIG = "configs/lm_transformer.py:tiny"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax.checkpoint's TMP_DIR_SUFFIX


def train_args(workdir: Path, corpus: dict[str, str], **extra) -> list[str]:
    args = ["train", "--config", CONFIG, "--workdir", str(workdir), "--no_progress"]
    return args + tiny_lm_overrides(corpus, **extra)


def train(workdir: Path, corpus, env: dict | None = None, **extra) -> subprocess.CompletedProcess:
    return run_cli(train_args(workdir, corpus, **extra), env=env)


def start_training(workdir: Path, corpus, env: dict | None = None, log: Path | None = None,
                   **extra) -> subprocess.Popen:
    """Starts `lmfuse train`; its output goes to pipes, or unbuffered into `log` (what a process
    killed with SIGKILL printed is then all there)."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    if log is not None:
        full_env["PYTHONUNBUFFERED"] = "1"
        output = {"stdout": open(log, "w", encoding="utf-8"), "stderr": subprocess.STDOUT}
    process = subprocess.Popen(
        [sys.executable, "-m", "lmfuse.cli", *train_args(workdir, corpus, **extra)],
        cwd=REPO, env=full_env, text=True, **output,
    )
    if log is not None:
        output["stdout"].close()  # the child holds its own copy
    return process


def wait_for(condition, process: subprocess.Popen, timeout: float = 240.0,
             until_exit: bool = False, interval: float = 0.05) -> bool:
    """Polls `condition` every `interval` seconds until it holds (True). If training ends first:
    False with `until_exit`, else an AssertionError with the end of its stderr."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            if until_exit:
                return False
            raise AssertionError(f"training ended early: {_tail(process)}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for training")
        time.sleep(interval)
    return True


def _tail(process: subprocess.Popen) -> str:
    return process.communicate()[1][-2000:] if process.stderr is not None else ""


def kill9(process: subprocess.Popen) -> bool:
    """SIGKILL and reap; True if the process was still running (so the kill interrupted it)."""
    running = process.poll() is None
    if running:
        process.send_signal(signal.SIGKILL)
    process.wait()
    return running and process.returncode == -signal.SIGKILL


def complete_steps(workdir: Path) -> list[int]:
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def saves_in_flight(workdir: Path, since_ns: int = 0) -> dict[int, Path]:
    """{step: temporary directory} of saves begun (or redone) at or after `since_ns` (wall clock)
    and not committed; a leftover of an earlier process, untouched since, is not counted."""
    directory = Path(workdir) / "checkpoints"
    found = {}
    for path in directory.glob(f"*{TMP_SUFFIX}*") if directory.is_dir() else ():
        try:
            if path.stat().st_mtime_ns >= since_ns:
                found[int(path.name.split(".")[0])] = path
        except FileNotFoundError:  # committed (renamed) between the listing and the stat
            continue
    return found


def finished_items(tmp_dir: Path) -> list[str]:
    """The items of an unfinished save that Orbax had finished: it writes each item into
    `<item>.orbax-checkpoint-tmp` inside the step's temporary directory and renames it to
    `<item>` once written, then renames the step's directory once every item is."""
    return sorted(p.name for p in tmp_dir.iterdir() if p.is_dir() and TMP_SUFFIX not in p.name)


def resumed_from(output: str) -> int | None:
    match = re.search(r"resuming \S+ from step (\d+)", output)
    return int(match.group(1)) if match else None


def digest(workdir: Path) -> str:
    """'step:sha256 of the params', as `lmfuse inspect` reports them."""
    result = run_cli(["inspect", "--workdir", str(workdir)])
    assert result.returncode == 0, result.stderr
    match = re.search(r"params sha256: ([0-9a-f]{64})", result.stdout)
    assert match, result.stdout
    step = re.search(r"step (\d+)", result.stdout).group(1)
    return f"{step}:{match.group(1)}"


def final_state(workdir: Path) -> dict[str, object]:
    """The newest checkpoint's params, optimizer state (with the step) and data-iterator state,
    read straight from its files: {'params/<path>': array, 'optimizer/<path>': array, 'data':
    the iterator state, 'step': N}."""
    import jax
    import orbax.checkpoint as ocp

    step = max(complete_steps(workdir))
    directory = Path(workdir).absolute() / "checkpoints" / str(step)
    state: dict[str, object] = {"step": step}
    with ocp.StandardCheckpointer() as checkpointer:
        for item in ("params", "optimizer"):
            tree = checkpointer.restore(directory / item)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
                state[f"{item}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    state["data"] = [json.loads(p.read_text()) for p in sorted((directory / "data").glob("*.json"))]
    return state


def assert_bitwise_equal(got: dict[str, object], want: dict[str, object]) -> None:
    """Same keys, and every array the same dtype, shape and bytes (NaN payloads included)."""
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())
    differ = []
    for key, value in want.items():
        other = got[key]
        if isinstance(value, np.ndarray):
            same = (other.dtype == value.dtype and other.shape == value.shape
                    and other.tobytes() == value.tobytes())
            if not same:
                gap = np.max(np.abs(other.astype(np.float64) - value.astype(np.float64)))
                differ.append(f"{key} (max |difference| {gap:.3g})")
        elif other != value:
            differ.append(f"{key}: {other!r} != {value!r}")
    assert not differ, f"{len(differ)} of {len(want)} differ: " + "; ".join(differ[:5])
