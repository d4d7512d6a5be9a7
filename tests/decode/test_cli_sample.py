"""`lmfuse sample` as a user runs it: prompts and samples, seeds, greedy equivalences, prompt
files, and one-line errors for bad input."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli, tiny_lm_overrides

CONFIG = "configs/lm_transformer.py:tiny"
PROMPTS = ("In the beginning", "And God said")
PROMPT_ARGS = tuple(arg for prompt in PROMPTS for arg in ("--prompt", prompt))
NUM = 3
NEW_TOKENS = 12  # + the prompt stays within the tiny model's 32 learned positions
# Starts a sample: "[i.j] " (beam search: "[i.j] score s: "). A sample may span lines, since a
# tiny model's text can hold newlines.
SAMPLE_START = re.compile(r"^\[(\d+)\.(\d+)\] (?:score (?:-?[\d.]+|-inf): )?", re.M)


@pytest.fixture(scope="module")
def workdir(text_corpus, tmp_path_factory) -> Path:
    """A tiny transformer LM trained for 40 steps on Genesis-Exodus."""
    workdir = tmp_path_factory.mktemp("lm")
    args = ["train", "--config", CONFIG, "--workdir", str(workdir), "--no_progress"]
    result = run_cli(args + tiny_lm_overrides(text_corpus, **{"train.steps": 40}))
    assert result.returncode == 0, result.stderr
    return workdir


def sample_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(["sample", "--workdir", str(workdir), "--max_len", str(NEW_TOKENS), *args])


@pytest.fixture(scope="module")
def runs(workdir, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every successful invocation the tests compare, two at a time (each is a fresh
    interpreter that loads the workdir and compiles its decoder)."""
    prompts_file = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    sampled = (*PROMPT_ARGS, "--num", str(NUM), "--seed", "0")
    invocations = {
        "sampled": sampled,
        "sampled_again": sampled,
        "other_seed": (*PROMPT_ARGS, "--num", str(NUM), "--seed", "1"),
        "prompts_file": ("--prompts_file", str(prompts_file), "--num", str(NUM), "--seed", "0"),
        "temperature_0": (*PROMPT_ARGS, "--temperature", "0"),
        "top_k_1": (*PROMPT_ARGS, "--top_k", "1", "--seed", "7"),
        "beam_1": (*PROMPT_ARGS, "--beam", "1"),
        "greedy_no_repeat": (*PROMPT_ARGS, "--temperature", "0", "--no_repeat_ngram_size", "1"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(sample_cli, workdir, *args) for name, args in invocations.items()}
    results = {name: future.result() for name, future in futures.items()}
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    return results


def texts(result: subprocess.CompletedProcess) -> dict[tuple[int, int], str]:
    """{(prompt index, sample index): text} of `lmfuse sample`'s output, which must be the
    samples, in order, then the closing "(workdir W, step S)" line."""
    footer = re.search(r"^\(workdir .+, step 40\)\n\Z", result.stdout, re.M)
    assert footer, result.stdout[-300:]
    body = result.stdout[: footer.start()]
    starts = list(SAMPLE_START.finditer(body))
    assert starts and starts[0].start() == 0, body[:300]
    out = {}
    for start, end in zip(starts, [*starts[1:], None], strict=True):
        key = (int(start.group(1)), int(start.group(2)))
        assert key not in out, f"{key} printed twice"
        out[key] = body[start.end() : end.start() if end else len(body)].removesuffix("\n")
    return out


def test_each_prompt_gets_num_samples_that_start_with_it(runs):
    samples = texts(runs["sampled"])
    assert sorted(samples) == [(i, j) for i in range(len(PROMPTS)) for j in range(NUM)]
    for (i, _), text in samples.items():
        assert text.startswith(PROMPTS[i]), text
    for i in range(len(PROMPTS)):  # independent draws, not one sample printed NUM times
        assert len({samples[(i, j)] for j in range(NUM)}) > 1


def test_the_same_seed_repeats_and_another_seed_does_not(runs):
    assert runs["sampled_again"].stdout == runs["sampled"].stdout
    first, other = texts(runs["sampled"]), texts(runs["other_seed"])
    assert sorted(other) == sorted(first)
    # Each sample is a fresh 12-token draw; two seeds may agree on one by chance (e.g. both
    # end at once with EOS), not on more.
    assert sum(other[key] == first[key] for key in first) <= 1


def test_prompts_file_equals_repeated_prompt_flags(runs):
    assert runs["prompts_file"].stdout == runs["sampled"].stdout


def test_zero_temperature_top_k_1_and_beam_1_are_the_same_greedy_text(runs):
    greedy = texts(runs["temperature_0"])
    assert sorted(greedy) == [(i, 0) for i in range(len(PROMPTS))]
    assert all(greedy[(i, 0)].startswith(prompt) for i, prompt in enumerate(PROMPTS))
    assert texts(runs["top_k_1"]) == greedy
    assert texts(runs["beam_1"]) == greedy
    assert re.search(r"^\[0\.0\] score -?\d", runs["beam_1"].stdout, re.M)  # beam's own format


def test_the_ngram_ban_changes_a_greedy_text_that_repeats_itself(runs):
    greedy, banned = texts(runs["temperature_0"]), texts(runs["greedy_no_repeat"])
    assert sorted(banned) == sorted(greedy)
    for key, text in greedy.items():
        assert banned[key].startswith(PROMPTS[key[0]])
        words = text[len(PROMPTS[key[0]]):].split()
        if len(set(words)) < len(words):  # a word twice: some token twice, which n=1 bans
            assert banned[key] != text


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty prompts file", "at least one --prompt or a non-empty --prompts_file"),
        ("missing workdir", "no checkpoints in workdir"),
        ("top_p above 1", "--top_p=1.5 must be in (0, 1]"),
        ("negative n-gram size", "--no_repeat_ngram_size=-1 must be >= 0 (0 disables it)"),
    ],
)
def test_bad_input_is_a_one_line_error(case, message, workdir, tmp_path):
    if case == "empty prompts file":
        (tmp_path / "empty.txt").write_text("", encoding="utf-8")
        result = sample_cli(workdir, "--prompts_file", str(tmp_path / "empty.txt"))
    elif case == "missing workdir":
        result = sample_cli(tmp_path / "missing", *PROMPT_ARGS)
    elif case == "negative n-gram size":
        result = sample_cli(workdir, *PROMPT_ARGS, "--no_repeat_ngram_size", "-1")
    else:
        result = sample_cli(workdir, *PROMPT_ARGS, "--top_p", "1.5")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.count("\n") == 0 and error.startswith("lmfuse: error: "), error
    assert message in error
    assert result.stdout == ""
