"""The evaluation protocol: seeded samples over every book, selection over grids holding 0,
and intervals that are sacrebleu's own paired bootstrap, number for number."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.errors import LmfuseError
from lmfuse.evaluate import protocol

BOOKS = {"Judges": 618, "1 Samuel": 810, "Philippians": 104, "Hebrews": 303}  # test split
IDS = [f"{book} {1 + v // 40}:{1 + v % 40}" for book, n in BOOKS.items() for v in range(n)]


def test_a_sample_is_seeded_sorted_and_spread_over_every_book_in_proportion():
    sample = protocol.seeded_sample(IDS, 1000, seed=0)
    assert sample == sorted(set(sample)) and len(sample) == 1000
    assert sample == protocol.seeded_sample(IDS, 1000, seed=0)
    assert sample != protocol.seeded_sample(IDS, 1000, seed=1)
    counts = Counter(protocol.group_of(IDS[i]) for i in sample)
    for book, n in BOOKS.items():
        assert abs(counts[book] - 1000 * n / len(IDS)) <= 1
    assert sample[:50] != list(range(50))  # not "the first N"


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6), size=st.integers(0, 400),
       seed=st.integers(0, 2**16))
def test_every_group_gets_its_share_within_one(sizes, size, seed):
    ids = [f"Book{g} 1:{v + 1}" for g, n in enumerate(sizes) for v in range(n)]
    sample = protocol.seeded_sample(ids, size, seed)
    if size == 0 or size >= len(ids):
        assert sample == list(range(len(ids)))
        return
    assert len(sample) == size
    counts = Counter(protocol.group_of(ids[i]) for i in sample)
    for g, n in enumerate(sizes):
        assert abs(counts[f"Book{g}"] - size * n / len(ids)) < 1


def test_a_negative_sample_is_a_one_line_error():
    with pytest.raises(LmfuseError, match="must be >= 0"):
        protocol.seeded_sample(IDS, -1, 0)


def test_selection_always_tries_zero_and_never_loses_to_it():
    seen = []

    def score(weights):
        seen.append(weights)
        return -abs(weights["lm"] - 0.25) - weights["length_reward"] ** 2  # best near 0.3, 0

    best, value = protocol.select_on_validation({"lm": (0.1, 0.3, 0.5), "length_reward": (0.2,)},
                                                score)
    assert {"lm": 0.0, "length_reward": 0.0} in seen
    assert best == {"lm": 0.3, "length_reward": 0.0}
    assert value >= score({"lm": 0.0, "length_reward": 0.0})

    flat, _ = protocol.select_on_validation({"lm": (0.1, 0.2)}, lambda w: 1.0)
    assert flat == {"lm": 0.0}  # a tie goes to no fusion


def test_intervals_are_what_sacrebleu_prints_for_the_same_files_and_seed(tmp_path):
    references = ["the cat sat on the mat", "and it came to pass", "he said unto them go",
                  "the land of egypt", "in the beginning god created the heaven"]
    base = ["the cat sat on mat", "it came to pass", "he said to them go", "the land egypt",
            "in beginning god created heaven"]
    system = ["the cat sat on the mat", "and it came to pass", "he said them go",
              "land of egypt", "in the beginning god made the heaven"]
    for name, lines in (("ref", references), ("base", base), ("sys", system)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    ours = protocol.paired_bootstrap({"base": base, "sys": system}, references, "base", seed=7)
    env = {**os.environ, "SACREBLEU_SEED": "7"}
    cli = Path(sys.executable).with_name("sacrebleu")
    printed = subprocess.run([str(cli), "ref.txt", "-i", "base.txt", "sys.txt", "--paired-bs",
                              "-m", "bleu", "chrf", "-f", "text"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True).stdout
    # Rows: "score (mean ± ci)" for BLEU then chrF, baseline first; then the system's p-values.
    triples = re.findall(r"([\d.]+) \(([\d.]+) ± ([\d.]+)\)", printed)
    p_values = re.findall(r"\(p = ([\d.]+)\)", printed)
    want = [ours[name][f"{m}{suffix}"] for name in ("base", "sys") for m in ("bleu", "chrf")
            for suffix in ("", "_mean", "_ci")]
    got = [float(x) for triple in triples for x in triple]
    assert got == pytest.approx([round(w, 1) for w in want], abs=0.051)
    assert [float(p) for p in p_values] == pytest.approx(
        [ours["sys"]["bleu_p"], ours["sys"]["chrf_p"]], abs=5e-5)
    assert ours["base"]["bleu_p"] is None


def test_seed_zero_is_reproducible_though_sacrebleu_reads_it_as_no_seed():
    """sacrebleu's paired test turns SACREBLEU_SEED=0 into an unseeded draw; lmfuse's seed 0
    (the studies' sample seed) must still give the same p-values and intervals every run."""
    references = [f"and the word of the lord came unto {n} saying" for n in range(40)]
    base = [f"the word of the lord came to {n} saying" for n in range(40)]
    system = [r if n % 3 else b for n, (r, b) in enumerate(zip(references, base, strict=True))]
    runs = [protocol.paired_bootstrap({"base": base, "sys": system}, references, "base",
                                      seed=0, resamples=200) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert protocol.sacrebleu_seed(0) != 0 and protocol.sacrebleu_seed(7) == 7


def test_a_system_identical_to_its_baseline_has_p_one_not_sacrebleus_one_over_n():
    # Validation may choose weight 0, whose output is the baseline's, line for line.
    references = ["the cat sat on the mat", "and it came to pass", "he said unto them go"]
    base = ["the cat sat on mat", "it came to pass", "he said to them go"]
    other = ["the cat sat on the mat", "it came to pass", "he said them go"]
    report = protocol.paired_bootstrap({"base": base, "same": list(base), "other": other},
                                       references, "base", seed=7, resamples=200)
    assert report["same"]["bleu"] == report["base"]["bleu"]
    assert report["same"]["bleu_p"] == report["same"]["chrf_p"] == 1.0
    assert report["other"]["bleu_p"] < 1.0  # a system that differs keeps sacrebleu's p


def test_the_baseline_must_be_a_system():
    with pytest.raises(LmfuseError, match="baseline"):
        protocol.paired_bootstrap({"a": ["x"]}, ["x"], "none")


def test_a_system_of_another_length_than_the_references_is_a_one_line_error():
    # The metrics hold the references' n-grams; sacrebleu would pair the first lines silently.
    references = ["the cat sat on the mat", "and it came to pass"]
    systems = {"base": list(references), "short": ["the cat sat on the mat"]}
    with pytest.raises(LmfuseError, match="1 lines of 'short' against 2 references"):
        protocol.paired_bootstrap(systems, references, "base")


def test_seeds_are_summarised_as_mean_and_sample_sd():
    assert protocol.mean_sd([20.0]) == (20.0, 0.0)
    mean, sd = protocol.mean_sd([1.0, 2.0, 3.0])
    assert mean == 2.0 and sd == pytest.approx(1.0)


@pytest.mark.parametrize("differences, p_values, expected", [
    ([0.8, 1.1, 0.5], [0.01, 0.002, 0.04], "gain"),
    ([-0.8, -1.1], [0.01, 0.002], "loss"),
    ([0.8, 1.1, 0.5], [0.01, 0.20, 0.04], "no clear difference"),  # one seed not significant
    ([0.8, -1.1], [0.01, 0.01], "no clear difference"),  # significant both ways
    ([0.8, 0.0], [0.01, None], "no clear difference"),  # one seed compared with itself
    ([2.8], [0.001], protocol.ONE_SEED),  # however large, one seed's difference is not called
    ([-0.9], [0.003], protocol.ONE_SEED),
])
def test_a_gain_needs_the_same_sign_and_significance_in_every_seed(differences, p_values,
                                                                   expected):
    assert protocol.verdict(differences, p_values) == expected


def test_a_verdict_needs_a_p_value_per_seed():
    with pytest.raises(LmfuseError, match="one difference and one p-value per seed"):
        protocol.verdict([0.5, 0.2], [0.01])
