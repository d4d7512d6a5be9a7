"""Exact resume after SIGKILL and SIGTERM, NaN stops, and mismatched checkpoints."""

from __future__ import annotations

import math
import re
import signal
from pathlib import Path

import pytest
from conftest import run_cli
from training_runs import digest, start_training, train, wait_for


@pytest.fixture(scope="module")
def straight_digest(text_corpus, tmp_path_factory) -> str:
    workdir = tmp_path_factory.mktemp("straight")
    result = train(workdir, text_corpus, **{"train.steps": 40})
    assert result.returncode == 0, result.stderr
    return digest(workdir)


def test_sigkill_then_resume_matches_a_straight_run(text_corpus, tmp_path, straight_digest):
    workdir = tmp_path / "killed"
    # Slow the run down at step 20 is not possible from outside, so save every 20 and kill as
    # soon as step 20 is committed: whatever ran past it is lost, as in a real crash.
    process = start_training(workdir, text_corpus, **{"train.steps": 40})
    committed = workdir / "checkpoints" / "20"
    wait_for(lambda: (committed / "_CHECKPOINT_METADATA").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed = train(workdir, text_corpus, **{"train.steps": 40})
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert digest(workdir) == straight_digest


def test_sigterm_saves_the_current_step_and_resume_matches(text_corpus, tmp_path, straight_digest):
    workdir = tmp_path / "terminated"
    process = start_training(workdir, text_corpus, **{"train.steps": 40})
    metrics = workdir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    saved = re.search(r"SIGTERM: saved a checkpoint at step (\d+)", out)
    assert saved, out
    assert (workdir / "checkpoints" / saved.group(1)).is_dir()
    resumed = train(workdir, text_corpus, **{"train.steps": 40})
    assert resumed.returncode == 0, resumed.stderr
    assert digest(workdir) == straight_digest


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(text_corpus, tmp_path):
    workdir = tmp_path / "nan"
    result = train(workdir, text_corpus, **{
        "optimizer.learning_rate": 1e12, "optimizer.clip_norm": 0.0, "optimizer.name": "sgd",
        "optimizer.schedule": "constant", "train.checkpoint_every": 1, "train.log_every": 1,
    })
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    step = int(re.search(r"at step (\d+)", message).group(1))
    assert re.search(r"loss became (nan|inf)", message)
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and max(kept) < step  # nothing saved from the diverged state


@pytest.fixture(scope="module")
def trained_workdir(text_corpus, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("shape")
    assert train(workdir, text_corpus, **{"train.steps": 20}).returncode == 0
    return workdir


def test_a_model_config_change_on_resume_is_a_one_line_error(text_corpus, trained_workdir):
    result = train(trained_workdir, text_corpus, **{"train.steps": 30, "model.mlp_dim": 48})
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    assert "model.mlp_dim=64" in message and "48" in message


def test_a_checkpoint_of_different_shape_names_the_parameter(text_corpus, trained_workdir):
    # Same model config, other vocabulary: the embedding no longer fits.
    result = train(trained_workdir, text_corpus, **{"train.steps": 30, "tokenizer.vocab_size": 480})
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0, message
    assert "does not fit this model" in message and "embed" in message
    assert "512" in message and "480" in message


def test_eval_writes_json_with_all_perplexities(text_corpus, trained_workdir):
    import json

    result = run_cli(["eval", "--workdir", str(trained_workdir), "--split", "test"])
    assert result.returncode == 0, result.stderr
    report = json.loads((trained_workdir / "eval_test.json").read_text())
    assert report["step"] == 20
    assert report["perplexity_per_word"] > report["perplexity"] > report["perplexity_per_char"] > 1
    assert f"{report['perplexity']:.3f}" in result.stdout


def test_a_read_only_manager_has_no_save_options_for_orbax_to_override(trained_workdir, caplog):
    from lmfuse.train import checkpoint

    # Readers (eval, sample, translate, fusion) open every checkpoint this way; options that
    # contradict read_only make Orbax log a warning per option, per checkpoint opened.
    with caplog.at_level("WARNING", logger="absl"):
        manager = checkpoint.make_manager(trained_workdir, read_only=True)
        assert manager.latest_step() == 20
        manager.close()
    assert not [r for r in caplog.records if "CheckpointManagerOptions" in r.getMessage()]


def test_eval_on_a_missing_workdir_is_a_one_line_error(tmp_path):
    result = run_cli(["eval", "--workdir", str(tmp_path / "nowhere")])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no checkpoints" in result.stderr


def test_training_writes_metrics_jsonl_and_tensorboard_events(trained_workdir):
    import json

    records = [json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [5, 10, 15, 20]
    for key in ("loss", "perplexity", "lr", "grad_norm", "tokens_per_sec", "mfu"):
        assert key in train_records[-1]
    assert train_records[-1]["perplexity"] == pytest.approx(math.exp(train_records[-1]["loss"]))
    assert list((trained_workdir / "tensorboard").glob("events.out.tfevents.*"))
