"""`python experiments/demo.py` end to end on the real Bible data with tiny budgets: it trains
the LM, the 5%-pairs encoder-decoder and its deep fusion, prints the four systems with their
intervals and p-values, writes the picture, the results and the samples' ids, and a rerun
decodes nothing again. Slow (it prepares the Bible data): `make test-slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

TINY = ["--lm_steps", "30", "--s2s_epochs", "1", "--fusion_steps", "10", "--val_sample", "12",
        "--test_sample", "20", "--beam", "2"]


def run_demo(workdir, data_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMFUSE_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "experiments/demo.py", "--workdir", str(workdir), *TINY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_reuses_its_outputs(tmp_path):
    first = run_demo(tmp_path / "demo", tmp_path / "data")
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    for system in ("copy the source", "| seq2seq ", "seq2seq + LM, shallow",
                   "seq2seq + LM, deep fusion"):
        assert system in out, out[-3000:]
    assert "YLT -> ASV, seq2seq models on 5% of the training pairs; 20 test verses" in out
    assert "validation BLEU (12 verses): λ=0:" in out
    results = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert set(results["results"]) == {"none", "shallow", "deep"}
    assert results["lm_weight"] in (0.0, 0.1, 0.3, 0.5)
    assert set(results["confidence"]["copy"]) == {"copy", "none", "shallow", "deep"}
    for name in ("none", "shallow", "deep"):
        assert len(results["results"][name]["hypotheses"]) == 20
    ids = (tmp_path / "demo" / "demo_test_ids.txt").read_text().split()
    assert len(ids) == len(set(ids)) == 20
    assert (tmp_path / "demo" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "demo" / "fusion_deep" / "training.json").read_text())
    assert record["steps"] == 10

    second = run_demo(tmp_path / "demo", tmp_path / "data")
    assert second.returncode == 0 and "decoded outputs reused" in second.stdout
