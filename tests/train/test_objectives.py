"""Objectives through the train loop: masked LM and span corruption train on real text, the
objective follows the model and data settings, and adversarial (FGSM) training is wired in."""

from __future__ import annotations

import json
import types

import jax
import numpy as np
import pytest
from conftest import run_cli, tiny_lm_overrides

from lmfuse.config import load_config
from lmfuse.errors import LmfuseError
from lmfuse.train import sharding
from lmfuse.train.objectives import objective_for
from lmfuse.train.trainer import build_trainer


def _losses(workdir) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("config", ["configs/mlm_bert.py:tiny", "configs/t5_span.py:tiny"])
def test_self_supervised_objectives_learn_on_real_text(config, text_corpus, tmp_path):
    workdir = tmp_path / "run"
    result = run_cli(["train", "--config", config, "--workdir", str(workdir), "--no_progress",
                      *tiny_lm_overrides(text_corpus, **{"train.steps": 60,
                                                         "train.checkpoint_every": 60})])
    assert result.returncode == 0, result.stderr
    losses = _losses(workdir)
    assert losses[-1] < losses[0] - 1.0  # from ~ln(512) = 6.2 down by more than a nat
    evaluated = run_cli(["eval", "--workdir", str(workdir)])
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((workdir / "eval_validation.json").read_text())
    assert 0.0 < report["accuracy"] < 1.0 and report["tokens"] > 0
    if config.startswith("configs/mlm"):
        assert "masked-token accuracy" in evaluated.stdout
        assert "perplexity_per_word" not in report  # only ~15% of the tokens are scored


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.name": "masked_lm"}, "set data.noising='bert_mask'"),
        ({"model.name": "s2s_transformer"}, "is an encoder-decoder"),
        ({"data.noising": "bert_mask"}, "needs a masked LM"),
        ({"data.view": "translate"}, "reads monolingual text"),
    ],
)
def test_objective_mismatches_are_one_line_errors(overrides, message):
    config = load_config("configs/lm_transformer.py:tiny",
                         [f"--config.{k}={v}" for k, v in overrides.items()])
    with pytest.raises(LmfuseError, match=message.replace("(", r"\(").replace(".", r"\.")):
        objective_for(config)


def test_z_loss_on_a_copy_output_model_is_a_one_line_error():
    config = load_config("configs/s2s_transformer.py:tiny", ["--config.train.z_loss=1e-4"])
    assert config.model.copy_source
    with pytest.raises(LmfuseError, match="set train.z_loss=0 or model.copy_source=False"):
        build_trainer(config, types.SimpleNamespace(vocab_size=61))
    config.model.copy_source = False  # without the copy output the penalty applies
    assert build_trainer(config, types.SimpleNamespace(vocab_size=61)).config.train.z_loss == 1e-4


def _s2s_trainer(epsilon: float):
    overrides = {"model.emb_dim": 32, "model.num_layers": 1, "model.num_encoder_layers": 1,
                 "model.num_heads": 2, "model.mlp_dim": 64, "model.dropout": 0.0,
                 "model.copy_source": False,  # not under test here, and one less head to compile
                 "data.max_length": 12, "model.max_len": 12, "train.batch_size": 4,
                 "train.adversarial_epsilon": epsilon, "optimizer.warmup_steps": 0,
                 # Plain SGD: the update is the gradient itself (Adam's first step is its sign).
                 "optimizer.schedule": "constant", "optimizer.name": "sgd",
                 "optimizer.momentum": 0.0, "optimizer.learning_rate": 1.0}
    config = load_config("configs/s2s_transformer.py:tiny",
                         [f"--config.{k}={v}" for k, v in overrides.items()])
    return build_trainer(config, types.SimpleNamespace(vocab_size=61))


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 61, size=(4, 12)).astype(np.int32)
    ones = np.ones((4, 12), np.int32)
    positions = np.broadcast_to(np.arange(12, dtype=np.int32), (4, 12)).copy()
    return {"inputs": ids, "targets": ids[:, ::-1].copy(), "inputs_segment_ids": ones,
            "targets_segment_ids": ones, "inputs_positions": positions,
            "targets_positions": positions}


def _one_step(trainer):
    state = trainer.init_fn(jax.random.key(0))
    with sharding.activate(trainer.mesh, trainer.rules):
        state, metrics = trainer.train_step(state, sharding.global_batch(_batch(), trainer.mesh, trainer.rules),
                                            jax.random.key(1))
    return state, float(metrics["loss"])


def test_adversarial_training_perturbs_the_embeddings_only_by_epsilon():
    (clean, clean_loss), (tiny, tiny_loss), (fgsm, fgsm_loss) = (
        _one_step(_s2s_trainer(eps)) for eps in (0.0, 1e-9, 0.5))
    # Reported losses are the clean ones; a vanishing epsilon gives the clean update.
    assert clean_loss == pytest.approx(tiny_loss, rel=1e-6) == pytest.approx(fgsm_loss, rel=1e-6)
    for a, b in zip(jax.tree.leaves(clean.params), jax.tree.leaves(tiny.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # A real epsilon changes the update (the adversarial half of the loss has its own gradient).
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(clean.params), jax.tree.leaves(fgsm.params), strict=True)]
    assert max(moved) > 1e-5
