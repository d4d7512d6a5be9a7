"""The committed fusion study reproduces: one cell (5% of the pairs, Transformer, `none`, seed
0) rerun end to end from nothing (the encoder-decoder trained until validation BLEU stops
improving, its checkpoint chosen on validation, the test decode) lands within the seed-to-seed
spread of the committed rows, at the same checkpoint. About 20 minutes on a 2-core CPU, so it
is slow; `make test-slow` runs it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import REPO
from grid_runs import rerun_committed_cell

COMMITTED = REPO / "experiments" / "results" / "fusion_study.csv"


def committed_rows(method: str) -> dict[int, dict[str, str]]:
    """{seed: row} of the committed 5% Transformer rows of `method` that finished."""
    with COMMITTED.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("seed", "") != ""]
    return {int(r["seed"]): r for r in rows
            if float(r["fraction"]) == 5 and r["backbone"] == "transformer"
            and r["method"] == method and r["status"] == "ok"}


@pytest.mark.slow
def test_one_committed_cell_reruns_within_the_seed_spread(tmp_path: Path):
    rows = committed_rows("none")
    if 0 not in rows or len(rows) < 2:
        pytest.fail("experiments/results/fusion_study.csv holds no 5% Transformer `none` "
                    "rows for seed 0 and another seed; run the study first")
    rerun = rerun_committed_cell(
        "experiments/fusion_study.py",
        ["--fractions", "5", "--backbones", "transformer", "--methods", "none", "--seeds", "0"],
        tmp_path)
    bleus = [float(r["test_bleu"]) for r in rows.values()]
    spread = max(max(bleus) - min(bleus), 0.5)  # a floor for seeds that happen to agree
    committed = float(rows[0]["test_bleu"])
    assert abs(float(rerun["test_bleu"]) - committed) <= spread, (rerun["test_bleu"], committed, bleus)
    assert int(rerun["step"]) == int(rows[0]["step"])  # the same checkpoint chosen on validation
