"""Every bad input is one line: the CLI run as a user runs it, on tiny real workdirs.

Each parametrised case runs `lmfuse ...` in a fresh interpreter and asserts that it exits 2
(a user mistake), prints exactly one line on stderr (`lmfuse...: error: ...`) holding the
expected cause, no traceback, and leaves every existing checkpoint, output and data file as it
was (bytes, mtimes, and the folders' entries), writing no file into a workdir it refused.
Beside the cases: bad input that is handled rather than refused (invalid UTF-8), read-only
workdirs that are still read, and metrics.jsonl across a resume.

Read-only workdirs are made with chmod; a root user ignores file modes, so when the tests run
as root the child process drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH first (prctl), as a
plain user's process never had them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli, tiny_lm_overrides, tiny_s2s_overrides

LM_CONFIG = "configs/lm_transformer.py:tiny"
S2S_CONFIG = "configs/s2s_transformer.py:tiny"
# Training cadence of the fixtures: checkpoints at 2 and 4 (the LM; the encoder-decoder stops at
# 2), a metrics row every step.
CADENCE = {"train.steps": 4, "train.checkpoint_every": 2, "train.log_every": 1}


def _drop_file_mode_override() -> None:
    """In the child, before exec: root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH obeys
    file modes. PR_CAPBSET_DROP = 24; the capabilities are 1 and 2."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_as_user(args: list[str]) -> subprocess.CompletedProcess:
    """`run_cli`, with file modes enforced even for root."""
    preexec = _drop_file_mode_override if os.geteuid() == 0 else None
    return run_cli(args, preexec_fn=preexec)


def make_read_only(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for path in [Path(folder), *(Path(folder) / n for n in names)]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for path in [Path(folder), *(Path(folder) / n for n in names)]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file's (size, mtime, SHA-256) and every folder's sorted entries under the roots."""
    state: dict[str, tuple] = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            state[folder] = ("dir", tuple(sorted(dirs + names)))
            for name in names:
                path = Path(folder) / name
                info = path.stat()
                state[str(path)] = (info.st_size, info.st_mtime_ns,
                                    hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def train_args(workdir: Path | str, corpus: dict[str, str], config: str = LM_CONFIG,
               overrides: Callable = tiny_lm_overrides, **extra) -> list[str]:
    return ["train", "--config", config, "--workdir", str(workdir), "--no_progress",
            *overrides(corpus, **{**CADENCE, **extra})]


@pytest.fixture(scope="module")
def empty_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("empty") / "empty.txt"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def lm_workdir(text_corpus, empty_file, tmp_path_factory) -> Path:
    """A 4-step Transformer LM whose validation split is an empty file (training never reads
    it: train.eval_every=0), so `eval` on it meets an empty split."""
    workdir = tmp_path_factory.mktemp("lm")
    result = run_cli(train_args(workdir, lm_corpus(text_corpus, empty_file)))
    assert result.returncode == 0, result.stderr
    return workdir


def lm_corpus(text_corpus: dict[str, str], empty_file: Path) -> dict[str, str]:
    return {**text_corpus, "validation": str(empty_file)}


@pytest.fixture(scope="module")
def s2s_workdir(pair_corpus, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("s2s")
    result = run_cli(train_args(workdir, pair_corpus, S2S_CONFIG, tiny_s2s_overrides,
                                **{"train.steps": 2}))
    assert result.returncode == 0, result.stderr
    return workdir


def modes_bind(folder: Path) -> bool:
    """Whether a child process (run as `run_as_user` runs it) is refused a write in `folder`."""
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"], capture_output=True,
        preexec_fn=_drop_file_mode_override if os.geteuid() == 0 else None,
    )
    return probe.returncode != 0


@pytest.fixture(scope="module")
def read_only_places(lm_workdir, s2s_workdir, tmp_path_factory):
    """Read-only copies of both workdirs, and a read-only empty folder."""
    root = tmp_path_factory.mktemp("read_only")
    places = {"ro_lm": root / "lm", "ro_s2s": root / "s2s", "ro_dir": root / "folder"}
    shutil.copytree(lm_workdir, places["ro_lm"])
    shutil.copytree(s2s_workdir, places["ro_s2s"])
    places["ro_dir"].mkdir()
    make_read_only(root)
    try:
        if not modes_bind(places["ro_dir"]):
            pytest.skip("file modes do not bind this user: no read-only folder can be made")
        yield places
    finally:
        make_writable(root)  # so pytest can remove it


@pytest.fixture(scope="module")
def places(tmp_path_factory, text_corpus, pair_corpus, lm_workdir, s2s_workdir
           ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("places")
    a_file = root / "a_file.txt"
    a_file.write_text("not a workdir\n")
    (root / "a_dir").mkdir()
    return {"root": root, "file": a_file, "dir": root / "a_dir", "lm": lm_workdir,
            "s2s": s2s_workdir, "text": Path(text_corpus["train"]).parent,
            "pairs": Path(pair_corpus["train"].split("|")[0]).parent}


# (id, argv with {place} fields and @lm_train / @s2s_train for a full training command on a
# fresh {new} workdir, the fragment the one stderr line must hold). Cases whose id starts with
# "ro_" run with file modes enforced. Checks that need no process of their own (every budget
# key, mesh rules, paths under a file) are tested in-process in test_checks_in_process.py.
CASES = [
    # Config files and overrides.
    ("misspelt_key", ["@lm_train", "--config.trian.steps=1"], "unknown config key 'trian'"),
    ("wrong_value_type", ["@lm_train", "--config.train.batch_size=big"],
     "'train.batch_size' expects int"),
    ("unknown_variant", ["train", "--config", "configs/lm_transformer.py:huge", "--workdir",
                         "{new}"], "unknown variant 'huge'"),
    ("missing_config_file", ["train", "--config", "configs/nope.py", "--workdir", "{new}"],
     "config file 'configs/nope.py' not found"),
    ("bad_mesh_shape", ["@lm_train", "--config.mesh.fsdp=-1"],
     "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1"),
    ("unknown_trained_fusion", ["@s2s_train", "--config.fusion.method=deeper"],
     "unknown fusion.method 'deeper'"),
    ("missing_data_file", ["@lm_train", "--config.data.files.train={root}/nope.txt"],
     "text file not found: {root}/nope.txt"),
    # Budget and cadence (lmfuse.train.budget.check_config): these exited 0 having saved no
    # or an untrained checkpoint, or with a ZeroDivisionError traceback.
    ("keep_no_checkpoints", ["@lm_train", "--config.train.keep_checkpoints=0"],
     "train.keep_checkpoints=0 must be >= 1"),
    ("zero_steps", ["@lm_train", "--config.train.steps=0"], "train.steps=0 must be >= 1"),
    ("negative_steps", ["@lm_train", "--config.train.steps=-5"], "train.steps=-5 must be >= 1"),
    ("zero_checkpoint_every", ["@lm_train", "--config.train.checkpoint_every=0"],
     "train.checkpoint_every=0 must be >= 1"),
    # The training workdir.
    ("train_workdir_is_a_file", ["@lm_train", "--workdir", "{file}"],
     "--workdir {file} is a file, not a directory"),
    ("ro_train_workdir", ["@s2s_train", "--workdir", "{ro_s2s}"],
     "--workdir {ro_s2s} is not writable"),
    ("resume_with_another_model", ["@lm_train", "--workdir", "{lm}", "--config.model.emb_dim=64"],
     "holds a model with model.emb_dim=32, but the config says 64"),
    # The command line itself (argparse, now one line).
    ("unknown_command", ["evl", "--workdir", "{lm}"], "invalid choice: 'evl'"),
    ("missing_workdir_flag", ["eval"], "the following arguments are required: --workdir"),
    ("unknown_split", ["eval", "--workdir", "{lm}", "--split", "train"],
     "invalid choice: 'train'"),
    ("misspelt_flag", ["translate", "--workdir", "{s2s}", "--beems", "3"],
     "unrecognized arguments: --beems"),
    ("flag_of_wrong_type", ["translate", "--workdir", "{s2s}", "--beam", "four"],
     "invalid int value: 'four'"),
    ("override_for_a_stored_config", ["eval", "--workdir", "{lm}", "--config.seed=1"],
     "eval reads the config stored in the workdir"),
    # Workdirs that are read.
    ("eval_nonexistent_workdir", ["eval", "--workdir", "{root}/nowhere"],
     "no checkpoints in workdir {root}/nowhere"),
    ("eval_workdir_is_a_file", ["eval", "--workdir", "{file}"],
     "--workdir {file} is a file, not a directory"),
    ("inspect_workdir_is_a_file", ["inspect", "--workdir", "{file}"], "is a file, not a directory"),
    ("sample_workdir_is_a_file", ["sample", "--workdir", "{file}", "--prompt", "In"],
     "is a file, not a directory"),
    ("translate_workdir_is_a_file", ["translate", "--workdir", "{file}", "--split", "test"],
     "is a file, not a directory"),
    ("eval_an_empty_split", ["eval", "--workdir", "{lm}", "--split", "validation"],
     "the validation split has no tokens to score"),
    ("eval_negative_sample", ["eval", "--workdir", "{s2s}", "--sample", "-1"], "must be >= 0"),
    # Outputs, checked before any model loads.
    ("ro_eval_default_output", ["eval", "--workdir", "{ro_s2s}", "--split", "test"],
     "cannot write {ro_s2s}/eval_test.json: {ro_s2s} is not writable; pass --output"),
    ("eval_output_is_a_directory", ["eval", "--workdir", "{s2s}", "--output", "{dir}"],
     "cannot write {dir}: it is a directory"),
    ("ro_translate_default_output", ["translate", "--workdir", "{ro_s2s}", "--split", "test"],
     "cannot write {ro_s2s}/translate_test.txt: {ro_s2s} is not writable; pass --output"),
    ("ro_translate_output_folder", ["translate", "--workdir", "{s2s}", "--input", "{file}",
                                    "--output", "{ro_dir}/out.txt"],
     "cannot write {ro_dir}/out.txt: {ro_dir} is not writable"),
    ("translate_output_is_the_input", ["translate", "--workdir", "{s2s}", "--input", "{file}",
                                       "--output", "{file}"], "is the --input file"),
    ("translate_output_is_a_directory", ["translate", "--workdir", "{s2s}", "--input", "{file}",
                                         "--output", "{dir}"], "it is a directory"),
    # Translation inputs and flags.
    ("translate_missing_input", ["translate", "--workdir", "{s2s}", "--input", "{root}/no.txt"],
     "--input {root}/no.txt does not exist"),
    ("translate_input_is_a_directory", ["translate", "--workdir", "{s2s}", "--input", "{dir}"],
     "--input {dir} is not a file"),
    ("sample_with_input", ["translate", "--workdir", "{s2s}", "--input", "{file}", "--sample",
                           "3"], "use it with --split, not --input"),
    ("missing_step", ["translate", "--workdir", "{s2s}", "--split", "test", "--step", "99"],
     "has no checkpoint at step 99 (kept steps: 2)"),
    ("negative_beam", ["translate", "--workdir", "{s2s}", "--beam", "-1"], "--beam=-1 must be >= 0"),
    ("unknown_fusion_method", ["translate", "--workdir", "{s2s}", "--fusion", "deepish", "--lm",
                               "{lm}"], "unknown fusion method 'deepish'"),
    ("fusion_missing_lm", ["translate", "--workdir", "{s2s}", "--fusion", "shallow"],
     "--fusion shallow needs --lm"),
    ("lm_without_fusion", ["translate", "--workdir", "{s2s}", "--lm", "{lm}"],
     "--lm needs --fusion"),
    ("ilme_without_weight", ["translate", "--workdir", "{s2s}", "--fusion", "ilme"],
     "needs --ilm_weight"),
    ("fusion_lm_is_a_file", ["translate", "--workdir", "{s2s}", "--fusion", "shallow", "--lm",
                             "{file}"], "--lm {file} is a file, not a directory"),
    ("lm_of_another_vocabulary", ["translate", "--workdir", "{s2s}", "--split", "test",
                                  "--fusion", "shallow", "--lm", "{lm}"], "vocab mismatch"),
    ("translate_with_an_lm", ["translate", "--workdir", "{lm}", "--split", "test"],
     "translate needs an encoder-decoder"),
    # Sampling.
    ("sample_with_a_seq2seq_model", ["sample", "--workdir", "{s2s}", "--prompt", "In"],
     "sample needs a decoder-only LM"),
    ("sample_without_prompt", ["sample", "--workdir", "{lm}"], "give at least one --prompt"),
    ("sample_top_p_zero", ["sample", "--workdir", "{lm}", "--prompt", "In", "--top_p", "0"],
     "--top_p=0.0 must be in (0, 1]"),
]


def expand(argv: list[str], places: dict[str, Path], corpora: dict[str, dict]) -> list[str]:
    fields = {name: str(path) for name, path in places.items()}
    out: list[str] = []
    for arg in argv:
        if arg == "@lm_train":
            out += train_args("{new}", corpora["lm"])
        elif arg == "@s2s_train":
            out += train_args("{new}", corpora["s2s"], S2S_CONFIG, tiny_s2s_overrides)
        else:
            out.append(arg)
    # A later --workdir wins in argparse; drop the default one so the command reads plainly.
    if out.count("--workdir") > 1:
        first = out.index("--workdir")
        del out[first:first + 2]
    return [arg.format(**fields) for arg in out]


@pytest.fixture(scope="module")
def corpora(text_corpus, pair_corpus, empty_file) -> dict[str, dict]:
    return {"lm": lm_corpus(text_corpus, empty_file), "s2s": pair_corpus}


@pytest.mark.parametrize("case, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_changes_nothing(case, argv, fragment, places, corpora,
                                                     tmp_path, request):
    read_only = case.startswith("ro_")
    extra = request.getfixturevalue("read_only_places") if read_only else {}
    places = {**places, **extra, "new": tmp_path / "new_workdir"}
    args = expand(argv, places, corpora)
    watched = [places[name] for name in ("lm", "s2s", "text", "pairs", "root", *extra)]
    before = snapshot(*watched)
    result = run_as_user(args) if read_only else run_cli(args)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == 2, result.stderr
    assert lines[0].startswith("lmfuse") and ": error: " in lines[0], lines[0]
    assert fragment.format(**{k: str(v) for k, v in places.items()}) in lines[0], lines[0]
    assert snapshot(*watched) == before  # no checkpoint, output or data file touched
    # A refused training run writes no file. (A data error is found after lmfuse.train.loop
    # has made the workdir, which then stays empty.)
    new = places["new"]
    assert not new.exists() or not any(new.iterdir())


def test_the_suite_has_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


# Bad input that is not an error, handled as the README says; read-only workdirs still serve.

def test_invalid_utf8_from_a_read_only_workdir_is_translated_line_for_line(read_only_places,
                                                                          tmp_path):
    """Bytes that are not UTF-8 go in as U+FFFD and are counted; the hypotheses go to
    --output although the workdir is read-only; the workdir is untouched."""
    workdir = read_only_places["ro_s2s"]
    source = tmp_path / "latin1.txt"
    # A Latin-1 byte, stray continuation bytes, a good line, an empty one, CRLF and no final
    # newline.
    source.write_bytes(b"In the beginning\r\nAnd Jonah said: caf\xe9\n\x80\x81 the LORD\n\n"
                       b"And it came to pass")
    out = tmp_path / "new" / "out.txt"
    before = snapshot(workdir)
    result = run_as_user(["translate", "--workdir", str(workdir), "--input", str(source),
                          "--output", str(out), "--beam", "1", "--max_len", "6"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "2 input line(s) held bytes that are not UTF-8" in result.stderr
    outputs = out.read_text(encoding="utf-8").split("\n")
    assert len(outputs) == 6 and outputs[-1] == ""  # five lines in, five out
    assert outputs[3] == ""  # the empty line stays empty
    assert snapshot(workdir) == before


def test_eval_of_a_read_only_workdir_writes_where_output_says(read_only_places, tmp_path):
    workdir = read_only_places["ro_lm"]
    before = snapshot(workdir)
    out = tmp_path / "scores" / "eval.json"
    result = run_as_user(["eval", "--workdir", str(workdir), "--split", "test", "--output",
                          str(out)])
    assert result.returncode == 0, result.stderr
    assert "test at step 4: perplexity" in result.stdout
    report = json.loads(out.read_text())
    assert report["step"] == 4 and report["perplexity"] > 1 and report["tokens"] > 0
    assert snapshot(workdir) == before


def test_metrics_hold_each_step_once_after_resumes(lm_workdir, corpora, tmp_path):
    """A run that died after checkpoint 2 had logged steps 3 and 4; the resumed run logs them
    again, and the file keeps one row per step."""
    workdir = tmp_path / "resumed"
    shutil.copytree(lm_workdir, workdir)
    logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4]
    shutil.rmtree(workdir / "checkpoints" / "4")  # the crash: checkpoint 4 never committed
    result = run_cli(train_args(workdir, corpora["lm"]))
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    assert [row["step"] for row in rows if row["split"] == "train"] == [1, 2, 3, 4]
