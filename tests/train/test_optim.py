"""The optimizer builder: every optimizer and schedule from config, clipping, decay mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmfuse.errors import LmfuseError
from lmfuse.schema import optimizer_config
from lmfuse.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, decay_mask
from lmfuse.train.step import LossOptions, token_losses


def cfg(**kw):
    c = optimizer_config()
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_optimizer_and_schedule_minimises_a_quadratic(name, schedule):
    # Adagrad's steps shrink as 1/sqrt(sum g^2), so it needs a larger base rate.
    rate = 0.5 if name == "adagrad" else 0.05
    tx, lr = build_optimizer(cfg(name=name, schedule=schedule, learning_rate=rate,
                                 warmup_steps=5, transition_steps=50), total_steps=200)
    params = {"w": jnp.array([3.0, -2.0])}

    def loss(p):
        return jnp.sum(p["w"] ** 2)

    @jax.jit
    def run(params):
        def body(_, carry):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            return optax.apply_updates(params, updates), state

        return jax.lax.fori_loop(0, 200, body, (params, tx.init(params)))[0]

    assert float(loss(run(params))) < 0.5 * 13.0
    assert float(lr(0)) >= 0.0 and float(lr(100)) > 0.0


def test_schedules_are_optax_own():
    _, lr = build_optimizer(cfg(schedule="warmup_cosine", learning_rate=1.0, warmup_steps=10,
                                end_learning_rate_factor=0.1), total_steps=100)
    reference = optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, end_value=0.1)
    for step in (0, 5, 10, 50, 100):
        assert float(lr(step)) == pytest.approx(float(reference(step)))
    _, rsqrt = build_optimizer(cfg(schedule="warmup_rsqrt", learning_rate=1.0, warmup_steps=100),
                               total_steps=1000)
    assert float(rsqrt(50)) == pytest.approx(0.5)
    assert float(rsqrt(400)) == pytest.approx(0.5)  # sqrt(100 / 400)


def test_global_norm_clipping_applies_first():
    tx, _ = build_optimizer(cfg(name="sgd", momentum=0.0, schedule="constant", learning_rate=1.0,
                                clip_norm=1.0), total_steps=10)
    params = {"w": jnp.zeros(2)}
    updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-0.6, -0.8], rtol=1e-6)


def test_weight_decay_skips_norms_biases_and_embeddings():
    params = {"wte": {"embedding": jnp.ones((5, 4))}, "ln_1": {"scale": jnp.ones(4)},
              "mlp": {"fc": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones(8)}}}
    mask = decay_mask(params)
    assert mask["mlp"]["fc"]["kernel"] is True
    assert not mask["mlp"]["fc"]["bias"] and not mask["ln_1"]["scale"]
    assert not mask["wte"]["embedding"]
    tx, _ = build_optimizer(cfg(schedule="constant", learning_rate=0.1, weight_decay=0.5),
                            total_steps=10)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["mlp"]["fc"]["kernel"]).max()) > 0  # decayed
    assert float(jnp.abs(updates["mlp"]["fc"]["bias"]).max()) == 0.0  # untouched


@pytest.mark.parametrize("override, fragment", [
    ({"name": "lion"}, "unknown optimizer.name 'lion'"),
    ({"schedule": "cyclic"}, "unknown optimizer.schedule 'cyclic'"),
    ({"learning_rate": -1.0}, "must be positive"),
])
def test_bad_optimizer_settings_are_one_line_errors(override, fragment):
    with pytest.raises(LmfuseError, match=fragment):
        build_optimizer(cfg(**override), total_steps=10)


def test_label_smoothing_and_z_loss_have_their_textbook_values():
    logits = jax.random.normal(jax.random.key(0), (3, 7, 11)) * 3
    targets = jax.random.randint(jax.random.key(1), (3, 7), 0, 11)
    plain, nll = token_losses(logits, targets, LossOptions())
    np.testing.assert_allclose(
        plain, optax.softmax_cross_entropy_with_integer_labels(logits, targets), rtol=1e-5)
    np.testing.assert_allclose(plain, nll)
    smoothed, _ = token_losses(logits, targets, LossOptions(label_smoothing=0.1))
    soft = optax.smooth_labels(jax.nn.one_hot(targets, 11), 0.1)
    np.testing.assert_allclose(smoothed, optax.softmax_cross_entropy(logits, soft), rtol=1e-5)
    z, _ = token_losses(logits, targets, LossOptions(z_loss=1e-3))
    log_z = jax.nn.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(z, plain + 1e-3 * log_z**2, rtol=1e-5)
