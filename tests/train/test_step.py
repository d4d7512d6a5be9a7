"""The train step: gradient accumulation equals the full batch; padding never counts."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
from conftest import tiny_lm_spec

from lmfuse.config import load_config
from lmfuse.train import sharding
from lmfuse.train.trainer import build_trainer

VOCAB = 97


def tiny_trainer(model: str, **extra):
    overrides = {"model.emb_dim": 32, "model.hidden_dim": 32, "model.num_layers": 2,
                 "model.num_heads": 2, "model.mlp_dim": 64, "model.dropout": 0.0,
                 "data.seq_len": 16, "data.max_length": 16, "model.max_len": 16,
                 "train.batch_size": 8, **extra}
    config = load_config(tiny_lm_spec(model),
                         [f"--config.{k}={v}" for k, v in overrides.items()])
    # build_trainer needs only the vocabulary size from the tokenizer.
    return build_trainer(config, types.SimpleNamespace(vocab_size=VOCAB))


def random_batch(seed: int, rows: int = 8, length: int = 16, pad_from: int = 12):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, VOCAB, size=(rows, length + 1)).astype(np.int32)
    segments = np.ones((rows, length), np.int32)
    segments[:, pad_from:] = 0  # a padded tail
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy()
    inputs, targets = tokens[:, :-1] * segments, tokens[:, 1:] * segments
    return {"inputs": inputs, "targets": targets, "inputs_segment_ids": segments,
            "targets_segment_ids": segments, "inputs_positions": positions,
            "targets_positions": positions}


def run_steps(trainer, batches):
    state = trainer.init_fn(jax.random.key(0))
    losses = []
    with sharding.activate(trainer.mesh, trainer.rules):
        for batch in batches:
            state, metrics = trainer.train_step(
                state, sharding.global_batch(batch, trainer.mesh, trainer.rules), jax.random.key(1))
            losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.parametrize("model", ["transformer", "lstm"])
def test_gradient_accumulation_equals_the_full_batch(model):
    batches = [random_batch(seed) for seed in range(3)]
    full_state, full_losses = run_steps(tiny_trainer(model), batches)
    accum_state, accum_losses = run_steps(tiny_trainer(model, **{"train.accum_steps": 4}), batches)
    np.testing.assert_allclose(accum_losses, full_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(accum_state.params), jax.tree.leaves(full_state.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_padding_tokens_do_not_change_the_loss():
    trainer = tiny_trainer("transformer")
    batch = random_batch(0)
    noisy = {k: v.copy() for k, v in batch.items()}
    noisy["targets"][:, 12:] = 7  # garbage where segment id is 0
    _, clean_losses = run_steps(trainer, [batch])
    _, noisy_losses = run_steps(trainer, [noisy])
    assert clean_losses == pytest.approx(noisy_losses, rel=1e-6)


def test_train_step_donates_the_state():
    trainer = tiny_trainer("transformer")
    state = trainer.init_fn(jax.random.key(0))
    with sharding.activate(trainer.mesh, trainer.rules):
        trainer.train_step(state, sharding.global_batch(random_batch(0), trainer.mesh, trainer.rules),
                           jax.random.key(1))
    assert jax.tree.leaves(state.params)[0].is_deleted()
