"""`lmfuse translate` and `lmfuse eval` with stderr a pipe (a log file, a batch job): progress as
plain lines (count, rate, ETA), never carriage-return redraws; and --no_repeat_ngram_size."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli, tiny_s2s_overrides

# translate: 8/12 (67%), 3.1 verse/s, elapsed 00:02, ETA 00:01
LINE = re.compile(r"^translate: (\d+)/(\d+) \(\d+%\), [\d.?]+ verse/s, "
                  r"elapsed [\d:]+, ETA [\d:?]+$")
FAST = {"LMFUSE_PROGRESS_SECONDS": "0"}


@pytest.fixture(scope="module")
def workdir(pair_corpus, tmp_path_factory):
    """A barely trained encoder-decoder that decodes 4 verses per batch."""
    workdir = tmp_path_factory.mktemp("s2s")
    overrides = tiny_s2s_overrides(pair_corpus, **{"train.steps": 2, "train.checkpoint_every": 2,
                                                   "decode.batch_size": 4})
    result = run_cli(["train", "--config", "configs/s2s_rnn.py:tiny", "--workdir", str(workdir),
                      "--no_progress", *overrides])
    assert result.returncode == 0, result.stderr
    return workdir


def progress_lines(stderr: str) -> list[tuple[int, int]]:
    assert "\r" not in stderr
    return [(int(m[1]), int(m[2])) for m in map(LINE.match, stderr.splitlines()) if m]


def test_translate_prints_a_line_per_batch_of_verses(workdir, tmp_path):
    result = run_cli(["translate", "--workdir", str(workdir), "--split", "test", "--sample", "10",
                      "--beam", "1", "--max_len", "6", "--output", str(tmp_path / "out.txt")],
                     env=FAST)
    assert result.returncode == 0, result.stderr
    assert progress_lines(result.stderr) == [(4, 10), (8, 10), (10, 10)]


def test_eval_prints_progress_lines_of_its_translation_pass(workdir, tmp_path):
    result = run_cli(["eval", "--workdir", str(workdir), "--split", "test", "--sample", "6",
                      "--beam", "1", "--no_repeat_ngram_size", "2",
                      "--output", str(tmp_path / "eval.json")], env=FAST)
    assert result.returncode == 0, result.stderr
    assert progress_lines(result.stderr) == [(4, 6), (6, 6)]


@pytest.mark.parametrize("command", ["translate", "eval"])
def test_a_negative_ngram_size_is_a_one_line_error(workdir, command):
    result = run_cli([command, "--workdir", str(workdir), "--no_repeat_ngram_size", "-1"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lmfuse: error: --no_repeat_ngram_size=-1 must be >= 0 (0 disables it)"]
