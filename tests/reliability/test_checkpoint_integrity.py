"""Checkpoints are never saved diverged, and a damaged one is skipped, never a traceback.

* Divergence: a tiny LSTM at optimizer.learning_rate=1e30 makes its parameters nan/inf while
  the loss it reports (of the state before the update) is still finite; no checkpoint may hold
  that state, and rotation (keep_checkpoints=1) must keep the newest finite one.
* Damage: each kind (an emptied array file, a removed item, a corrupt config JSON, a garbage
  data-iterator JSON, 64 flipped bytes in the largest params or optimizer file, the other
  checkpoint's intact params or optimizer state put in its place) on the newer of two
  checkpoints makes `lmfuse inspect`, `lmfuse eval` and resuming `lmfuse train` use the older
  one with exactly one warning line; with every checkpoint damaged they print one error line,
  exit 2 and leave every file as it was.

The CLI calls of a group run in one fresh interpreter (`run_batch`), each through
`lmfuse.cli.main` with its own stdout/stderr, as the console script runs it, and every run
shares one JAX compilation cache: the interpreter starts, and each step compiles, once
instead of 30 times.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli, tiny_lm_overrides

LM_CONFIG = "configs/lm_transformer.py:tiny"
LSTM_CONFIG = "configs/lm_rnn.py:lstm,tiny"
COMMANDS = ("inspect", "eval", "resume")

# Runs [(name, argv), ...] from a JSON file through lmfuse.cli.main, one at a time, and writes
# {name: {code, stdout, stderr, seconds}} after each; what main lets escape is printed as the
# traceback it is.
BATCH = r"""
import contextlib, io, json, sys, time, traceback
from lmfuse.cli import main
calls = json.loads(open(sys.argv[1]).read())
results = {}
for name, argv in calls:
    out, err, start = io.StringIO(), io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
    results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                     "seconds": time.perf_counter() - start}
    open(sys.argv[2], "w").write(json.dumps(results))
"""


def run_batch(calls: list[tuple[str, list[str]]], folder: Path, env: dict[str, str]) -> dict[str, dict]:
    """{name: result} of each call, and under "process" what the interpreter printed outside
    every call (late errors of Orbax's reads, say) and its exit status."""
    spec, out = folder / "calls.json", folder / "results.json"
    spec.write_text(json.dumps(calls))
    process = subprocess.run([sys.executable, "-c", BATCH, str(spec), str(out)], cwd=REPO,
                             env={**os.environ, "PYTHONHASHSEED": "0", **env}, capture_output=True,
                             text=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["process"] = {"code": process.returncode, "stderr": process.stderr}
    return results


def train_args(workdir: Path, corpus: dict[str, str], config: str = LM_CONFIG, **extra) -> list[str]:
    return ["train", "--config", config, "--workdir", str(workdir), "--no_progress",
            *tiny_lm_overrides(corpus, **extra)]


def command_args(command: str, workdir: Path, corpus: dict[str, str]) -> list[str]:
    if command == "resume":  # the same 40-step run: resumes from the newest intact checkpoint
        return train_args(workdir, corpus)
    return [command, "--workdir", str(workdir)]


def result_of(results: dict, name: str) -> dict:
    assert name in results, f"the batch ended before {name}: {results['process']['stderr'][-3000:]}"
    return results[name]


def stderr_lines(result: dict) -> list[str]:
    return result["stderr"].strip().splitlines()


def digest(result: dict) -> str:
    """'step:params sha256' from `lmfuse inspect`'s output."""
    step = re.search(r"step (\d+)", result["stdout"]).group(1)
    return f"{step}:{re.search(r'params sha256: ([0-9a-f]{64})', result['stdout']).group(1)}"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its SHA-256 (folders: their sorted entries)."""
    state = {}
    for folder, dirs, names in os.walk(root):
        state[folder] = " ".join(sorted(dirs + names))
        for name in names:
            path = Path(folder) / name
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


# --- damage, done to a checkpoint's step folder --------------------------------------------


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def swap_in_other_step(step_dir: Path, item: str) -> None:
    """Replaces the item with the other checkpoint's intact copy: every file reads, only the
    digest saved with this step can tell (stale or mixed-up files)."""
    other = next(p for p in step_dir.parent.iterdir() if p.name != step_dir.name)
    shutil.rmtree(step_dir / item)
    shutil.copytree(other / item, step_dir / item)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "emptied_array_file": lambda step_dir: largest_file(step_dir / "params").write_bytes(b""),
    "removed_item": lambda step_dir: shutil.rmtree(step_dir / "params"),
    "corrupt_config_json": lambda step_dir: (step_dir / "config" / "metadata").write_text('{"model": '),
    "garbage_iterator_json": lambda step_dir: next((step_dir / "data").glob("process_*.json"))
    .write_text("\x00garbage{"),
    "flipped_params_bytes": lambda step_dir: flip_bytes(largest_file(step_dir / "params")),
    "swapped_params": lambda step_dir: swap_in_other_step(step_dir, "params"),
    # Only resuming reads the optimizer state; inference uses this checkpoint's intact params.
    "flipped_optimizer_bytes": lambda step_dir: flip_bytes(largest_file(step_dir / "optimizer")),
    "swapped_optimizer": lambda step_dir: swap_in_other_step(step_dir, "optimizer"),
}
# Flipped bytes land in compressed array chunks or in OCDBT b-tree nodes of the same file,
# depending on the order of the concurrent writes: the read fails, or it decodes to other
# values that the digest catches. Either is reported; the swapped items always reach the digest.
FLIPPED = r"its '{item}' arrays (cannot be read: .+|do not match their SHA-256 digest)"
REASON = {
    "emptied_array_file": re.escape("its 'params' arrays cannot be read: OUT_OF_RANGE"),
    "removed_item": re.escape("its 'params' item is missing"),
    "corrupt_config_json": re.escape("its 'config' item is not valid JSON"),
    "garbage_iterator_json": re.escape("its data-iterator state is not valid JSON"),
    "flipped_params_bytes": FLIPPED.format(item="params"),
    "swapped_params": re.escape("its 'params' arrays do not match their SHA-256 digest"),
    "flipped_optimizer_bytes": FLIPPED.format(item="optimizer"),
    "swapped_optimizer": re.escape("its 'optimizer' arrays do not match their SHA-256 digest"),
}
CASES = [(kind, command) for kind in DAMAGE for command in COMMANDS
         if "optimizer" not in kind or command == "resume"]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> dict[str, str]:
    """Environment for a JAX compilation cache the module's runs share (same programs)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def two_checkpoints(text_corpus, tmp_path_factory, compile_cache) -> Path:
    """A 40-step run with checkpoints 20 and 40 (what test_resume's straight run makes)."""
    workdir = tmp_path_factory.mktemp("intact") / "run"
    result = run_cli(train_args(workdir, text_corpus), env=compile_cache)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["20", "40"]
    return workdir


@pytest.fixture(scope="module")
def damaged(two_checkpoints, text_corpus, tmp_path_factory, compile_cache) -> dict:
    """Every case on its own copy, run in one batch; `all-<command>` has every checkpoint
    damaged; `digest-*` inspect the intact run and each resumed one."""
    root = tmp_path_factory.mktemp("damaged")
    calls = [("digest-intact", ["inspect", "--workdir", str(two_checkpoints)])]
    for kind, command in CASES:
        workdir = root / f"{kind}-{command}"
        shutil.copytree(two_checkpoints, workdir)
        DAMAGE[kind](workdir / "checkpoints" / "40")
        calls.append((f"{kind}-{command}", command_args(command, workdir, text_corpus)))
        if command == "resume":
            calls.append((f"digest-{kind}", ["inspect", "--workdir", str(workdir)]))
    before = {}
    for command in COMMANDS:
        workdir = root / f"all-{command}"
        shutil.copytree(two_checkpoints, workdir)
        DAMAGE["swapped_params"](workdir / "checkpoints" / "20")  # while 40 is intact
        DAMAGE["emptied_array_file"](workdir / "checkpoints" / "40")
        before[command] = snapshot(workdir)
        calls.append((f"all-{command}", command_args(command, workdir, text_corpus)))
    results = run_batch(calls, root, compile_cache)
    return {"root": root, "results": results, "before": before}


@pytest.mark.parametrize(("kind", "command"), CASES)
def test_damage_on_the_newest_checkpoint_falls_back_with_one_warning(damaged, kind, command):
    result = result_of(damaged["results"], f"{kind}-{command}")
    assert result["code"] == 0, result["stderr"]
    assert "Traceback" not in result["stderr"]
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("lmfuse: warning: checkpoint 40 in ") and " is damaged (" in lines[0]
    assert re.search(REASON[kind], lines[0]), lines[0]
    workdir = damaged["root"] / f"{kind}-{command}"
    if command == "resume":
        # Moved aside (not deleted), so the resumed run could write step 40 again: exactly.
        assert f"moved it to {workdir / 'damaged_checkpoints' / '40'}; resuming from checkpoint 20" \
            in lines[0]
        assert (workdir / "damaged_checkpoints" / "40").is_dir()
        assert f"resuming {workdir} from step 20" in result["stdout"]
        resumed = result_of(damaged["results"], f"digest-{kind}")
        assert resumed["stderr"] == ""
        assert digest(resumed) == digest(result_of(damaged["results"], "digest-intact"))
    else:
        assert lines[0].endswith("; using checkpoint 20")
        assert re.search(r"\bstep 20\b", result["stdout"]), result["stdout"]
        assert (workdir / "checkpoints" / "40").is_dir()  # a reader moves nothing


def test_nothing_reaches_the_terminal_outside_the_calls(damaged, diverged):
    # Orbax's reads still in flight when one fails end later; none may print a traceback.
    for batch in (damaged, diverged):
        assert batch["results"]["process"]["code"] == 0
        assert batch["results"]["process"]["stderr"] == "", batch["results"]["process"]["stderr"][-3000:]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_checkpoint_damaged_is_one_error_line_and_changes_nothing(damaged, command):
    result = result_of(damaged["results"], f"all-{command}")
    assert result["code"] == 2
    assert "Traceback" not in result["stderr"]
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("lmfuse: error: every checkpoint in ")
    assert "40: its 'params' arrays cannot be read" in lines[0]
    assert "20: its 'params' arrays do not match their SHA-256 digest" in lines[0]
    assert "nothing was moved or deleted" in lines[0]
    assert snapshot(damaged["root"] / f"all-{command}") == damaged["before"][command]


def test_a_damaged_step_asked_for_by_number_is_an_error_not_another_step(two_checkpoints, tmp_path):
    from lmfuse.errors import LmfuseError
    from lmfuse.train.workdir import load_model

    workdir = tmp_path / "run"
    shutil.copytree(two_checkpoints, workdir)
    DAMAGE["swapped_params"](workdir / "checkpoints" / "40")
    with pytest.raises(LmfuseError) as error:
        load_model(workdir, step=40)
    message = str(error.value)
    assert "\n" not in message
    assert "checkpoint 40 in" in message and "do not match their SHA-256 digest" in message
    assert "kept: 20, 40" in message
    assert load_model(workdir, step=20)[2] == 20


# --- divergence ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diverged(text_corpus, tmp_path_factory, compile_cache) -> dict:
    """LSTM runs at learning rate 1e30: its state turns nan/inf at step 3, while the loss of
    step 3 (of the state before it) is finite. `rotating` checkpoints every step and keeps
    one; `fresh` has saved nothing when it diverges."""
    root = tmp_path_factory.mktemp("diverged")
    runs = {"rotating": {"train.checkpoint_every": 1, "train.keep_checkpoints": 1},
            "fresh": {"train.checkpoint_every": 40}}
    calls = [(name, train_args(root / name, text_corpus, LSTM_CONFIG,
                               **{"optimizer.learning_rate": 1e30, "train.log_every": 1, **extra}))
             for name, extra in runs.items()]
    return {"root": root, "results": run_batch(calls, root, compile_cache)}


def stored_arrays(workdir: Path, step: int) -> list[np.ndarray]:
    """Every params and optimizer array of a checkpoint, read with Orbax, unchecked."""
    import jax
    import orbax.checkpoint as ocp

    from lmfuse.train import checkpoint

    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(), optimizer=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return [np.asarray(leaf) for leaf in jax.tree.leaves([restored.params, restored.optimizer])]


def test_a_diverged_state_is_never_saved_and_rotation_keeps_the_newest_finite(diverged):
    result = result_of(diverged["results"], "rotating")
    workdir = diverged["root"] / "rotating"
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [2]  # keep_checkpoints=1 dropped 1 for 2, and nothing replaced 2
    for array in stored_arrays(workdir, 2):
        assert np.isfinite(array).all()
    assert result["code"] == 2 and "Traceback" not in result["stderr"]
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("lmfuse: error: the parameters or optimizer state became nan/inf "
                               "at step 3"), lines[0]
    assert "the newest checkpoint, step 2, is finite and kept" in lines[0]
    assert "Lower optimizer.learning_rate (now 1e+30)" in lines[0]
    assert "clip_norm" not in lines[0]  # on by default (1.0): no fix to suggest there


def test_divergence_before_any_checkpoint_says_none_was_written(diverged):
    result = result_of(diverged["results"], "fresh")
    assert result["code"] == 2 and "Traceback" not in result["stderr"]
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    assert "at step 3" in lines[0] and "no checkpoint was written" in lines[0]
    assert "None" not in lines[0] and "clip_norm" not in lines[0]
    checkpoints = diverged["root"] / "fresh" / "checkpoints"
    assert not checkpoints.exists() or not any(p.name.isdigit() for p in checkpoints.iterdir())


def test_the_train_step_reports_whether_its_new_state_is_finite():
    import jax.numpy as jnp

    from lmfuse.train.step import all_finite

    assert bool(all_finite({"a": jnp.ones(3), "n": jnp.arange(3)}))
    assert not bool(all_finite({"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])}))
    assert not bool(all_finite([jnp.zeros(2, jnp.bfloat16), jnp.array(jnp.nan)]))
