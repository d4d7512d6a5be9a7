"""What made a workdir: its resolved config and one provenance entry per run, at its root.

    record_run(workdir, config, start_step)   # each fresh start and each resume, process 0
    lines = describe(workdir)                 # what `lmfuse inspect` prints

* `config.json`: the resolved config (a fused model's includes its LM's model config), as the
  checkpoints store it; `ml_collections.ConfigDict(json.load(f))` rebuilds it.
* `config.txt`: the same config in ml_collections' text form, for reading.
* `provenance.json`: `{"runs": [...]}`, one entry per run that trained in the workdir, oldest
  first: the command line, the git commit of the lmfuse source tree and whether it had
  uncommitted changes (null when it is no git checkout or git is missing), the versions of
  lmfuse and of the libraries that decide the numbers, the devices and the host's processor
  model (no hostname), the step the run started from and a UTC timestamp. The processor is
  kept because XLA's CPU kernels differ in the last bits between processors: a CPU run
  repeated on another one trains a slightly different model.

Every file is written beside its place and renamed over it, so a kill never leaves half a file.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections

CONFIG_JSON = "config.json"
CONFIG_TEXT = "config.txt"
PROVENANCE = "provenance.json"
# Distributions whose versions decide what a run computes and how it is stored.
DISTRIBUTIONS = ("lmfuse", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")


def record_run(workdir: str | Path, config: ml_collections.ConfigDict, start_step: int
               ) -> dict | None:
    """Writes config.json and config.txt, and appends this run to provenance.json (an
    unreadable one is started afresh rather than failing the run). Returns the entry; on
    every process but process 0 it writes nothing and returns None."""
    if jax.process_index() != 0:
        return None
    workdir = Path(workdir)
    _write_atomic(workdir / CONFIG_JSON, config.to_json(indent=2) + "\n")
    _write_atomic(workdir / CONFIG_TEXT, str(config))
    entry = run_entry(start_step)
    runs = read_runs(workdir)
    _write_atomic(workdir / PROVENANCE, json.dumps({"runs": [*runs, entry]}, indent=2) + "\n")
    return entry


def run_entry(start_step: int) -> dict[str, Any]:
    """This process's provenance: command line, source commit, versions, devices, time."""
    devices = jax.devices()
    return {
        "command": list(sys.argv),
        "start_step": int(start_step),
        "git": git_state(),
        "versions": {**{name: _version(name) for name in DISTRIBUTIONS},
                     "python": platform.python_version()},
        "devices": {
            "platform": devices[0].platform,
            "device_kind": devices[0].device_kind,
            "count": len(devices),
            "process_count": jax.process_count(),
            "cpu": cpu_model(),
        },
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def cpu_model() -> str:
    """The host processor's model name (Linux's /proc/cpuinfo, else `platform.processor()`)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown CPU"


def git_state() -> dict[str, Any] | None:
    """{"commit": sha, "dirty": bool} of the git checkout lmfuse is imported from; None when
    lmfuse is not tracked there (an installed copy) or git is missing or refuses. Dirty means
    tracked files differ from the commit; untracked files (workdirs, data) do not count."""
    source = Path(__file__).resolve().parents[1]  # the lmfuse package directory

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=source, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # lmfuse itself is in this checkout
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def read_runs(workdir: str | Path) -> list[dict]:
    """The runs provenance.json lists ([] when there is none, or it cannot be read)."""
    path = Path(workdir) / PROVENANCE
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return runs if isinstance(runs, list) else []


def describe(workdir: str | Path) -> list[str]:
    """Lines saying where the config is and what the first and latest runs were made with."""
    workdir = Path(workdir)
    config = workdir / CONFIG_JSON
    lines = [f"config: {config}" if config.is_file()
             else "config: no config.json (the checkpoints hold the config)"]
    runs = read_runs(workdir)
    if not runs:
        lines.append(f"provenance: none recorded (no {PROVENANCE} in this workdir)")
        return lines
    latest = runs[-1]
    lines.append(f"provenance: {len(runs)} run(s) in {workdir / PROVENANCE}")
    labelled = [("first run", runs[0]), ("latest run", latest)] if len(runs) > 1 else \
        [("run", latest)]
    for label, run in labelled:
        lines.append(f"  {label}: {run.get('utc')} from step {run.get('start_step')}: "
                     f"{shlex.join(map(str, run.get('command') or []))}")
    git = latest.get("git")
    lines.append("  commit: " + (f"{git['commit']}" + (" (dirty)" if git.get("dirty") else "")
                                 if git else "unknown (not a git checkout, or no git)"))
    versions = latest.get("versions") or {}
    lines.append("  versions: " + ", ".join(f"{name} {version}"
                                            for name, version in versions.items()))
    devices = latest.get("devices") or {}
    lines.append(f"  devices: {devices.get('count')} x {devices.get('device_kind')} "
                 f"({devices.get('platform')}), {devices.get('process_count')} process(es)"
                 + (f", host CPU {devices['cpu']}" if devices.get("cpu") else ""))
    return lines


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
