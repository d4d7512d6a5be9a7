"""Budgets in epochs, early stopping on validation loss or BLEU (also across a resume), and
the training record a run leaves in its workdir."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import tiny_lm_overrides, tiny_lm_spec, tiny_s2s_overrides

from lmfuse.config import load_config
from lmfuse.data import corpora
from lmfuse.errors import LmfuseError
from lmfuse.evaluate.validation import translation_hook
from lmfuse.train import budget
from lmfuse.train.loop import train, training_record
from lmfuse.train.optim import build_schedule
from lmfuse.train.workdir import load_model, params_digest

# Learning fades out (lr x 0.01 every 10 steps): the validation loss improves by more than
# min_delta until about step 20, then by less, so patience runs out a few evaluations later.
FADING = {"train.eval_every": 5, "train.patience": 3, "train.min_delta": 1e-4,
          "train.checkpoint_every": 10, "optimizer.schedule": "exponential",
          "optimizer.learning_rate": 0.01, "optimizer.transition_steps": 10,
          "optimizer.decay_rate": 0.01}


def tiny_config(corpus, **extra):
    return load_config(tiny_lm_spec("transformer"), tiny_lm_overrides(corpus, **extra))


def digest(workdir: Path) -> str:
    return params_digest(load_model(workdir)[1])


def validation_steps(workdir: Path) -> list[int]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if row["split"] == "validation"]


def test_epochs_set_the_step_budget_from_the_rows_of_one_pass(text_corpus):
    examples = len(Path(text_corpus["train"]).read_text().splitlines())
    unpacked = tiny_config(text_corpus, **{"data.pack": False, "train.epochs": 2.5})
    tokenizer = corpora.prepare(unpacked)
    plan = budget.step_budget(unpacked, tokenizer)
    assert plan.rows_per_epoch == examples  # one row per verse
    assert plan.steps_per_epoch == examples / 8
    assert plan.steps == math.ceil(2.5 * examples / 8)

    packed = tiny_config(text_corpus, **{"train.epochs": 1.0})
    rows = budget.step_budget(packed, tokenizer).rows_per_epoch
    # A row holds 32 tokens: at least the tokens over 32, at most one verse per row.
    lengths = [min(len(ids), 31) + 1 for ids in tokenizer.encode_batch(
        Path(text_corpus["train"]).read_text().splitlines())]
    assert math.ceil(sum(lengths) / 32) <= rows < examples

    assert budget.step_budget(tiny_config(text_corpus), tokenizer) == budget.Budget(40)


def test_an_epoch_budget_trains_that_many_steps_and_records_them(text_corpus, tmp_path):
    config = tiny_config(text_corpus, **{"data.pack": False, "train.epochs": 0.05})
    summary = train(config, tmp_path, progress=False)
    per_epoch = len(Path(text_corpus["train"]).read_text().splitlines()) / 8
    steps = math.ceil(0.05 * per_epoch)
    record = training_record(tmp_path)
    assert record == {k: summary[k] for k in record}
    assert record["steps"] == record["step_budget"] == steps != config.train.steps
    assert record["epochs"] == pytest.approx(steps / per_epoch)
    assert record["finished"] and not record["stopped_early"]
    assert record["wall_seconds"] > 0 and record["best_validation_step"] is None
    # The learning-rate schedule spans the budget, not train.steps.
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["lr"] == pytest.approx(float(build_schedule(config.optimizer, steps)(steps - 1)))
    # A checkpoint saved before checkpoints kept their progress (and digests): finished, its
    # time unknown. Only dropping `progress` would be damage: the digests list it.
    step_dir = tmp_path / "checkpoints" / str(steps)
    shutil.rmtree(step_dir / "progress")
    shutil.rmtree(step_dir / "integrity")
    metadata = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
    (step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps({**metadata, "custom_metadata": {}}))
    assert train(config, tmp_path, progress=False) == {**record, "wall_seconds": None}


def test_patience_stops_after_that_many_evaluations_without_improvement(text_corpus, tmp_path,
                                                                       capsys):
    # A learning rate of 1e-30 changes no parameter a float32 can see: the loss never improves.
    config = tiny_config(text_corpus, **{
        "train.eval_every": 5, "train.patience": 2, "optimizer.schedule": "constant",
        "optimizer.learning_rate": 1e-30})
    summary = train(config, tmp_path, progress=False)
    assert summary["steps"] == 15 < summary["step_budget"] == 40  # evaluations at 5, 10, 15
    assert summary["stopped_early"] and summary["finished"]
    assert summary["best_validation_step"] == 5
    assert validation_steps(tmp_path) == [5, 10, 15]
    assert load_model(tmp_path)[2] == 15  # the final checkpoint is at the stopping step
    record = training_record(tmp_path)
    assert "stopped early" in capsys.readouterr().out

    # Training the stopped workdir again trains nothing.
    again = train(config, tmp_path, progress=False)
    assert "is finished" in capsys.readouterr().out
    assert again == record == training_record(tmp_path)
    assert validation_steps(tmp_path) == [5, 10, 15]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["15"]


@pytest.fixture(scope="module")
def straight_run(text_corpus, tmp_path_factory) -> tuple[dict, str]:
    workdir = tmp_path_factory.mktemp("straight")
    summary = train(tiny_config(text_corpus, **{**FADING, "train.steps": 80}), workdir,
                    progress=False)
    return summary, digest(workdir)


def test_a_resumed_run_stops_where_an_uninterrupted_one_stops(text_corpus, tmp_path, straight_run):
    straight, straight_digest = straight_run
    # The interruption must fall between the best evaluation and the stop, so the restored
    # early-stopping state decides where the resumed run stops.
    assert straight["stopped_early"] and straight["best_validation_step"] < 30 < straight["steps"]
    first = train(tiny_config(text_corpus, **{**FADING, "train.steps": 30}), tmp_path,
                  progress=False)
    assert first["steps"] == 30 and not first["stopped_early"]
    resumed = train(tiny_config(text_corpus, **{**FADING, "train.steps": 80}), tmp_path,
                    progress=False)
    assert resumed["start_step"] == 30
    for key in ("steps", "stopped_early", "best_validation_step", "best_validation_value"):
        assert resumed[key] == straight[key]
    assert digest(tmp_path) == straight_digest
    assert resumed["wall_seconds"] > first["wall_seconds"]  # summed over both runs


def test_patience_without_evaluations_is_a_one_line_error(text_corpus, tmp_path):
    config = tiny_config(text_corpus, **{"train.patience": 3, "train.eval_every": 0})
    with pytest.raises(LmfuseError, match="train.patience=3 needs validation") as error:
        train(config, tmp_path, progress=False)
    assert "\n" not in str(error.value) and "train.eval_every" in str(error.value)
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(LmfuseError, match="train.epochs=-1.0 must be >= 0"):
        train(tiny_config(text_corpus, **{"train.epochs": -1.0}), tmp_path, progress=False)
    assert training_record(tmp_path) is None


def test_a_score_stops_when_it_stops_rising():
    # BLEU is higher-is-better: 12.5 at step 40 is the best; two evaluations without beating
    # it by more than min_delta=0.2 stop the run (12.6 at step 50 is within min_delta).
    train_cfg = load_config("configs/s2s_transformer.py:tiny").train
    train_cfg.update(stop_metric="bleu", patience=2, min_delta=0.2)
    run = budget.Progress()
    for step, bleu in ((10, 10.0), (20, 12.0), (30, 11.0), (40, 12.5), (50, 12.6)):
        run.observe(step, {"bleu": bleu, "nll": 1.0}, train_cfg)
        assert not run.stopped_early
    run.observe(60, {"bleu": 12.4, "nll": 1.0}, train_cfg)
    assert run.stopped_early and (run.best_step, run.best_value) == (40, 12.5)
    # A checkpoint saved when only the nll stopped runs keeps its best under the old name.
    assert budget.Progress.from_json({"best_loss": 2.5, "best_step": 7}).best_value == 2.5


def test_early_stopping_on_validation_bleu_of_an_encoder_decoder(pair_corpus, tmp_path):
    # An unchanging model (learning rate 1e-30) never raises its sample BLEU: stopped after
    # `patience` evaluations, the first being best; the record names the metric.
    config = load_config("configs/s2s_transformer.py:tiny", tiny_s2s_overrides(pair_corpus, **{
        "train.steps": 40, "train.eval_every": 5, "train.patience": 2,
        "train.stop_metric": "bleu", "train.eval_translate_sample": 8,
        "optimizer.schedule": "constant", "optimizer.learning_rate": 1e-30}))
    summary = train(config, tmp_path, progress=False, extra_eval=translation_hook(config))
    assert summary["steps"] == 15 and summary["stopped_early"]
    assert summary["stop_metric"] == "bleu" and summary["best_validation_step"] == 5
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bleu = [row["bleu"] for row in rows if row["split"] == "validation"]
    assert summary["best_validation_value"] == bleu[0] and len(bleu) == 3
    assert training_record(tmp_path)["stop_metric"] == "bleu"


@pytest.mark.parametrize("metric, match", [
    ("bleu", "train.stop_metric=bleu needs bleu at each evaluation"),
    ("loss", "train.stop_metric='loss' is not one of nll, bleu, chrf"),
])
def test_a_stop_metric_the_run_cannot_give_is_a_one_line_error(text_corpus, tmp_path, metric,
                                                                match):
    # An LM's evaluations have no BLEU; either way nothing is written.
    config = tiny_config(text_corpus, **{"train.stop_metric": metric, "train.eval_every": 5})
    with pytest.raises(LmfuseError, match=match) as error:
        train(config, tmp_path, progress=False)
    assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("extra", "in_memory"), [
    ({"train.epochs": 1.0}, True),  # a whole pass: the split is read in one go
    ({"train.epochs": 0.5}, False),  # half a pass: record by record, as far as it goes
    ({"train.steps": 3}, False),  # a step budget: the split's size is never counted
])
def test_a_run_of_at_least_one_epoch_reads_the_split_in_memory(
        text_corpus, tmp_path, monkeypatch, extra, in_memory):
    """Which way the training loop reads its split (the examples are the same either way:
    tests/data/test_corpora.py); counting an epoch's rows always reads it whole."""
    asked = []
    load_examples = corpora.load_examples

    def spy(config, split, in_memory=False):
        asked.append((split, in_memory))
        return load_examples(config, split, in_memory=in_memory)

    monkeypatch.setattr(corpora, "load_examples", spy)
    config = tiny_config(text_corpus, **{"train.eval_every": 0, "data.train_fraction": 0.25,
                                         **extra})
    train(config, tmp_path, progress=False)
    reads = [flag for split, flag in asked if split == "train"]
    assert reads[-1] == in_memory  # the loop's, after the tokenizer's and the budget's reads
    if "train.epochs" in extra:
        assert reads[-2] is True  # budget.rows_per_epoch's pass over the split
