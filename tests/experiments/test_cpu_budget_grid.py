"""The CPU-budget fusion study as committed in experiments/results/fusion_study.md: the
5% Transformer slice (every method) at the budget's sizes on the prepared Bible data. Two to
three hours on a 2-core CPU (every model trained from scratch stops on validation BLEU, and
density ratio and ILME sweep 18 weight pairs each), so it is slow; `make test-slow` runs it."""

from __future__ import annotations

import csv
import math
import os

import pytest
from fusion_study import METHODS
from grid_runs import read_csv, run_study

DECODE_TIME = ("shallow", "density_ratio", "ilme", "rescore")


@pytest.mark.slow
def test_cpu_budget_slice_scores_every_method_and_chooses_on_validation(tmp_path, monkeypatch):
    if "LMFUSE_DATA_DIR" not in os.environ:  # else the Bible is prepared into ~/.cache
        monkeypatch.setenv("LMFUSE_DATA_DIR", str(tmp_path / "data"))
    results = tmp_path / "results"
    # run_study, not the grid tests' fast_study: hours of training want optimised code.
    result = run_study("experiments/fusion_study.py",
                       ["--budget", "cpu", "--fractions", "5", "--backbones", "transformer",
                        "--workdir", str(tmp_path / "work"), "--results", str(results)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = read_csv(results / "fusion_study.csv")
    assert set(rows) == set(METHODS)
    for method, row in rows.items():
        assert row["status"] == "ok", (method, row["error"])
        for key in ("val_bleu", "test_bleu", "test_chrf", "test_pinc"):
            assert 0 <= float(row[key]) <= 100, (method, key, row[key])
        assert "lmfuse train" in row["commands"] and "lmfuse translate" in row["commands"]
    # Decode-time methods fuse the plain model's chosen checkpoint with weights from the sweep
    # (0 in every grid: validation may choose no fusion), and never lose to none there.
    for method in DECODE_TIME:
        assert rows[method]["step"] == rows["none"]["step"]
        assert rows[method]["weights"] != ""
        assert float(rows[method]["val_bleu"]) >= float(rows["none"]["val_bleu"])
        assert math.isfinite(float(rows[method]["lm_perplexity"]))
    with (results / "fusion_study_sweeps.csv").open(encoding="utf-8") as f:
        sweeps = list(csv.DictReader(f))
    for method in rows:
        points = [p for p in sweeps if p["method"] == method]
        (chosen,) = [p for p in points if p["chosen"] == "yes"]
        assert float(chosen["val_bleu"]) == max(float(p["val_bleu"]) for p in points)
