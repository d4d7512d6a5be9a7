"""The committed Carlson table reproduces: one row's `none` cell (the encoder-decoder trained
until validation BLEU stops improving, its checkpoint chosen on validation, the whole test split
decoded) rerun end to end from nothing lands at the committed checkpoint and within the
committed row's 95% bootstrap interval. The CPU budget trains one seed per row, so there is no
seed spread to compare with; the interval is the tolerance. About 35 minutes on a 2-core CPU,
so it is slow; `make test-slow` runs it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import REPO
from grid_runs import rerun_committed_cell

COMMITTED = REPO / "experiments" / "results" / "carlson_table.csv"
PREFERRED = ("ylt_asv", "kjv_asv", "bbe_asv", "ylt_bbe")  # the cheaper rows: no 'public'


def committed_plain_row() -> dict[str, str] | None:
    """The committed `none` row of seed 0 to rerun, the cheapest row first; None if none."""
    with COMMITTED.open(encoding="utf-8") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)
                if r["method"] == "none" and r["seed"] == "0" and r["status"] == "ok"}
    return next((rows[name] for name in PREFERRED if name in rows), None)


@pytest.mark.slow
def test_one_committed_row_reruns_within_its_interval(tmp_path: Path):
    row = committed_plain_row()
    if row is None:
        pytest.fail("experiments/results/carlson_table.csv holds no finished `none` row of "
                    "seed 0; run the table first")
    rerun = rerun_committed_cell("experiments/carlson_table.py",
                                 ["--rows", row["row"], "--methods", "none"], tmp_path)
    assert int(rerun["step"]) == int(row["step"])  # the same checkpoint chosen on validation
    assert rerun["test_sentences"] == row["test_sentences"]  # the same whole test split
    tolerance = max(float(row["test_bleu_ci"]), 0.5)
    assert abs(float(rerun["test_bleu"]) - float(row["test_bleu"])) <= tolerance, \
        (rerun["test_bleu"], row["test_bleu"], tolerance)
