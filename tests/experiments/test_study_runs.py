"""How the studies train their models (`experiments/lib/runs.py`): as `lmfuse train` does, with
BLEU at each evaluation of an encoder-decoder, and a finished workdir reused when its config
differs only by a key the schema gained later at its default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_s2s_overrides
from lib.runs import TrainRun, ensure_trained, override

from lmfuse.errors import LmfuseError
from lmfuse.train import integrity


def s2s_run(corpus: dict[str, str], workdir: Path, **extra) -> TrainRun:
    overrides = tiny_s2s_overrides(corpus, **{"train.steps": 10, "train.eval_every": 10,
                                              "train.checkpoint_every": 10,
                                              "train.eval_translate_sample": 8, **extra})
    return TrainRun("configs/s2s_transformer.py:tiny", str(workdir), tuple(overrides))


def test_a_study_run_trains_with_bleu_and_reuses_a_workdir_from_before_a_new_key(
        pair_corpus, tmp_path):
    run = s2s_run(pair_corpus, tmp_path / "s2s")
    assert ensure_trained(run)["trained_seconds"] > 0
    rows = [json.loads(line) for line in (tmp_path / "s2s" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [row["step"] for row in rows if "bleu" in row] == [10]  # the hook ran

    # The workdir as one trained before train.stop_metric existed: the default is what it
    # trained with, so it is reused as finished, untouched.
    # (Its checkpoint consistent, as that lmfuse wrote it: the config's digest matches.)
    step_dir = tmp_path / "s2s" / "checkpoints" / "10"
    for path in (tmp_path / "s2s" / "config.json", step_dir / "config" / "metadata"):
        stored = json.loads(path.read_text())
        del stored["train"]["stop_metric"]
        path.write_text(json.dumps(stored))
    record = json.loads((step_dir / "integrity" / "metadata").read_text())
    record["digests"]["config"] = integrity.json_digest(stored)
    (step_dir / "integrity" / "metadata").write_text(json.dumps(record))
    assert ensure_trained(run) == {"trained_seconds": 0.0, "steps": [10]}

    # A run that wants another value than the default is refused, in one line.
    other = TrainRun(run.config, run.workdir,
                     (*run.overrides, override("train.stop_metric", "chrf")))
    with pytest.raises(LmfuseError, match=r"was trained with train.stop_metric=None, this run "
                                          r"has 'chrf'") as error:
        ensure_trained(other)
    assert "\n" not in str(error.value)
