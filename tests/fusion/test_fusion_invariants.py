"""Trained fusion's output layers: each method against a NumPy transcription of its equations,
the exact reductions to a base model (a closed deep-fusion gate, a uniform LM under PreNorm,
learned weights at their init), the bases wired in unchanged, and which parameters train.

Output-layer tests feed random states to `logits_from_hidden`, so they compile only the output
layers; one test per backbone runs the whole model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_fusion import (
    BACKBONES,
    LM,
    S2S,
    VOCAB,
    T,
    example_inputs,
    fused_model,
    jit,
    random_params,
)

from lmfuse.errors import LmfuseError
from lmfuse.models.fusion import HEADS, FusedSeq2Seq, simple_fusion_logits, warm_start
from lmfuse.train.optim import freeze
from lmfuse.train.workdir import params_digest

ROWS = 3
VARIANTS = [("deep", "scalar"), ("cold", "scalar"), ("simple_postnorm", "scalar"),
            ("simple_prenorm", "scalar"), ("linear", "scalar"), ("linear", "vector"),
            ("linear", "context")]


@functools.cache
def model_and_apply(method: str, weights_kind: str = "scalar", backbone: str = "s2s_transformer"):
    model = fused_model(method, backbone, weights_kind=weights_kind)
    return model, jit(model.apply, static_argnames=("method",))


@functools.cache
def params_for(method: str, weights_kind: str = "scalar", backbone: str = "s2s_transformer",
               seed: int = 0):
    return random_params(model_and_apply(method, weights_kind, backbone)[0], seed)


def random_hidden(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {"s2s": jnp.asarray(rng.standard_normal((ROWS, T, S2S["emb_dim"])), jnp.float32),
            "lm": jnp.asarray(rng.standard_normal((ROWS, T, LM["emb_dim"])), jnp.float32)}


def base_logits(model, params, hidden) -> tuple[np.ndarray, np.ndarray]:
    """(s2s logits S, LM logits l) of the states, each from its own model alone."""
    s2s = model.s2s.apply({"params": params["s2s"]}, hidden["s2s"], method="logits_from_hidden")
    lm = model.lm.apply({"params": params["lm"]}, hidden["lm"], method="logits_from_hidden")
    return np.asarray(s2s, np.float64), np.asarray(lm, np.float64)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x):
    return np.log(softmax(x))


def relu(x):
    return np.maximum(x, 0.0)


def reference_logits(method, weights_kind, fusion, s, h, s2s_logits, lm_logits):
    """The module docstring's equations, in float64 NumPy."""
    f = jax.tree.map(lambda a: np.asarray(a, np.float64), fusion)
    if method == "deep":
        gate = sigmoid(h @ f["gate_kernel"] + f["gate_bias"])[..., None]
        return s @ f["out_s2s"] + gate * (h @ f["out_lm"])
    if method == "cold":
        def dense(name, x):
            return x @ f[name]["kernel"] + f[name]["bias"]

        h_lm = relu(dense("lm_proj", lm_logits - lm_logits.max(-1, keepdims=True)))  # 4a
        gate = sigmoid(dense("gate", np.concatenate([s, h_lm], -1)))  # 4b
        s_cf = np.concatenate([s, gate * h_lm], -1)  # 4c
        return relu(dense("hidden", s_cf)) @ f["out"] + f["out_bias"]  # 4d
    if method == "simple_postnorm":
        return s2s_logits * softmax(lm_logits)
    if method == "simple_prenorm":
        return s2s_logits + log_softmax(lm_logits)
    if weights_kind == "context":
        weights = np.concatenate([s, h], -1) @ f["gate_kernel"] + f["gate_bias"]
        return weights[..., :1] * s2s_logits + weights[..., 1:] * lm_logits
    if weights_kind == "vector":
        s2s_logits, lm_logits = log_softmax(s2s_logits), log_softmax(lm_logits)
    return f["s2s_weight"] * s2s_logits + f["lm_weight"] * lm_logits


@pytest.mark.parametrize("method, weights_kind", VARIANTS)
def test_output_layer_follows_the_equations(method, weights_kind):
    model, apply = model_and_apply(method, weights_kind)
    params = params_for(method, weights_kind)
    hidden = random_hidden()
    got = apply({"params": params}, hidden, method="logits_from_hidden")
    s2s_logits, lm_logits = base_logits(model, params, hidden)
    s, h = (np.asarray(hidden[k], np.float64) for k in ("s2s", "lm"))
    want = reference_logits(method, weights_kind, params.get("fusion"), s, h, s2s_logits, lm_logits)
    assert got.shape == (ROWS, T, VOCAB) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fused_states_are_the_bases_own(backbone):
    """encode / decode_hidden run each base exactly as it runs alone, on the same decoder
    inputs; the fused logits of the whole model are the output layer's on those states."""
    model, apply = model_and_apply("cold", backbone=backbone)
    params = params_for("cold", backbone=backbone)
    source, decoder_inputs, _, segments = example_inputs(ROWS)
    source_segments = (source != 0).astype(jnp.int32)

    @jit
    def run(params):
        fused = {"params": params}
        encoded = model.apply(fused, source, source_segments, method="encode")
        hidden = model.apply(fused, encoded, source_segments, decoder_inputs, segments,
                             method="decode_hidden")
        s2s = {"params": params["s2s"]}
        alone_encoded = model.s2s.apply(s2s, source, source_segments, method="encode")
        alone_s = model.s2s.apply(s2s, alone_encoded, source_segments, decoder_inputs, segments,
                                  method="decode_hidden")
        alone_h = model.lm.apply({"params": params["lm"]}, decoder_inputs, segments,
                                 method="embed_and_hidden")
        logits = model.apply(fused, source, decoder_inputs, source_segments, segments)
        return encoded, hidden, alone_encoded, alone_s, alone_h, logits

    encoded, hidden, alone_encoded, alone_s, alone_h, logits = run(params)
    np.testing.assert_array_equal(np.asarray(encoded), np.asarray(alone_encoded))
    np.testing.assert_array_equal(np.asarray(hidden["s2s"]), np.asarray(alone_s))
    np.testing.assert_array_equal(np.asarray(hidden["lm"]), np.asarray(alone_h))
    from_hidden = apply({"params": params}, hidden, method="logits_from_hidden")
    np.testing.assert_allclose(np.asarray(logits), np.asarray(from_hidden), rtol=1e-6, atol=1e-6)


def head_init(method: str, weights_kind: str, hidden) -> dict:
    """The fusion layers as `init` makes them (their init alone: nothing else to compile)."""
    model, _ = model_and_apply(method, weights_kind)
    logits = base_logits(model, params_for(method, weights_kind), hidden)
    args = (hidden["s2s"], hidden["lm"])
    if method != "deep":
        args += tuple(jnp.asarray(x, jnp.float32) for x in logits)
    head = HEADS[method](model.cfg)
    return nn.meta.unbox(jit(head.init)(jax.random.key(3), *args)["params"])


def test_deep_fusion_starts_from_the_s2s_output_layer():
    """warm_start copies the s2s's (tied) output layer bit for bit; W_l starts at 0."""
    params = params_for("deep")
    model, _ = model_and_apply("deep")
    started = warm_start(model, {**params, "fusion": head_init("deep", "scalar", random_hidden())})
    np.testing.assert_array_equal(np.asarray(started["fusion"]["out_s2s"]),
                                  np.asarray(params["s2s"]["wte"]["embedding"]).T)
    assert not np.asarray(started["fusion"]["out_lm"]).any()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), gate_bias=st.floats(-8.0, 8.0))
def test_deep_fusion_at_its_start_or_with_a_closed_gate_is_the_s2s(seed, gate_bias):
    """With W_l = 0 (its start) any gate gives the s2s's logits; with the gate closed
    (sigmoid = 0) any W_l does."""
    model, apply = model_and_apply("deep")
    hidden = random_hidden(seed)
    s2s_logits, _ = base_logits(model, params_for("deep"), hidden)
    started = warm_start(model, params_for("deep"))
    fusion = started["fusion"]
    at_start = {**started, "fusion": {**fusion, "gate_bias": jnp.float32(gate_bias),
                                      "out_lm": jnp.zeros_like(fusion["out_lm"])}}
    closed = {**started, "fusion": {**fusion, "gate_kernel": jnp.zeros_like(fusion["gate_kernel"]),
                                    "gate_bias": jnp.float32(-1e4)}}
    for params in (at_start, closed):
        got = apply({"params": params}, hidden, method="logits_from_hidden")
        np.testing.assert_allclose(np.asarray(got), s2s_logits, rtol=1e-5, atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_deep_fusions_lm_ablated_control_is_w_s_alone_and_trains_nothing_else(seed):
    """fusion.lm_ablated=True: logits = W_s s whatever the LM's state, W_l and the gate, and
    only W_s (out_s2s) has a gradient, so the control trains what deep fusion trains of the
    encoder-decoder, with nothing from the LM."""
    control = fused_model("deep", "s2s_transformer", lm_ablated=True)
    params = params_for("deep", seed=seed % 4)
    hidden = random_hidden(seed)
    s_logits = np.einsum("btd,dv->btv", np.asarray(hidden["s2s"], np.float64),
                         np.asarray(params["fusion"]["out_s2s"], np.float64))
    got = jit(control.apply, static_argnames=("method",))(
        {"params": params}, hidden, method="logits_from_hidden")
    np.testing.assert_allclose(np.asarray(got), s_logits, rtol=1e-4, atol=1e-4)
    _, apply = model_and_apply("deep")  # the same params fuse the LM without the switch
    fused = apply({"params": params}, hidden, method="logits_from_hidden")
    assert not np.allclose(np.asarray(fused), s_logits, rtol=1e-4, atol=1e-4)

    def loss(fusion):
        logits = control.apply({"params": {**params, "fusion": fusion}}, hidden,
                               method="logits_from_hidden")
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0])

    grads = jax.grad(loss)(params["fusion"])
    assert np.asarray(grads["out_s2s"]).any()
    for name in ("out_lm", "gate_kernel", "gate_bias"):
        assert not np.asarray(grads[name]).any(), name


@pytest.mark.parametrize("method", ["cold", "simple_prenorm", "linear", "lm_prior"])
def test_lm_ablated_is_deep_fusions_alone(method):
    with pytest.raises(LmfuseError, match=r"fusion.lm_ablated=True is deep fusion's control; "
                                          rf"fusion.method='{method}' has no such switch"):
        fused_model(method, "s2s_transformer", lm_ablated=True)


def with_a_uniform_lm(method: str, seed: int):
    """(model, params as they were, hidden states, fused logits once the LM's output layer is
    zeroed, i.e. its logits are all equal)."""
    model, apply = model_and_apply(method)
    params = params_for(method)
    lm = jax.tree.map(lambda x: x, params["lm"])
    lm["lm_head"]["kernel"] = jnp.zeros_like(lm["lm_head"]["kernel"])
    hidden = random_hidden(seed)
    got = np.asarray(apply({"params": {**params, "lm": lm}}, hidden, method="logits_from_hidden"))
    return model, params, hidden, got


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_prenorm_with_a_uniform_lm_is_the_translation_model(seed):
    """An LM whose logits are all equal adds the same log(1/V) to every token's score."""
    model, params, hidden, got = with_a_uniform_lm("simple_prenorm", seed)
    s2s_logits, lm_logits = base_logits(model, params, hidden)
    assert lm_logits.std(-1).min() > 0.1  # the LM as it was is far from uniform
    np.testing.assert_allclose(got - s2s_logits, -np.log(VOCAB), rtol=0, atol=1e-5)
    np.testing.assert_allclose(softmax(got), softmax(s2s_logits), rtol=1e-5, atol=1e-7)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_postnorm_with_a_uniform_lm_is_the_translation_model_at_temperature_v(seed):
    """softmax(S_TM * P_LM) with P_LM = 1/V everywhere is softmax(S_TM / V)."""
    model, params, hidden, got = with_a_uniform_lm("simple_postnorm", seed)
    s2s_logits, _ = base_logits(model, params, hidden)
    np.testing.assert_allclose(got, s2s_logits / VOCAB, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(softmax(got), softmax(s2s_logits / VOCAB), rtol=1e-5, atol=1e-7)


def test_postnorm_trains_to_the_lms_distribution_on_a_toy():
    """Free TM logits trained through PostNorm on targets drawn from a fixed LM (V = 2000,
    500 Adam steps) get well below log V - 1, where the old softmax(softmax(S) * P_LM) form
    was stuck (measured on this toy: 5.15 nats against 7.52 for the old form; log V = 7.60)."""
    vocab, positions, draws = 2000, 16, 32
    keys = jax.random.split(jax.random.key(0), 2)
    lm_logits = 3.0 * jax.random.normal(keys[0], (positions, vocab))
    targets = jax.random.categorical(keys[1], lm_logits, shape=(draws, positions))
    tx = optax.adam(0.1)

    def loss(s2s_logits):
        logits = simple_fusion_logits("simple_postnorm", s2s_logits, lm_logits)
        log_p = jax.nn.log_softmax(logits, -1)
        return -jnp.mean(jnp.take_along_axis(log_p[None], targets[..., None], -1))

    @jax.jit
    def train(s2s_logits):
        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params)
            updates, state = tx.update(grads, state)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(step, (s2s_logits, tx.init(s2s_logits)), None, 500)
        return loss(params), losses[0]

    final, first = train(jnp.zeros((positions, vocab)))
    assert abs(float(first) - np.log(vocab)) < 1e-3  # zero TM logits: uniform
    assert float(final) < np.log(vocab) - 2.0


@pytest.mark.parametrize("weights_kind", ["scalar", "vector", "context"])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_linear_fusion_at_its_init_is_the_s2s(weights_kind, seed):
    """W_g = 1, W_l = 0 (the init) reproduce the s2s's logits exactly, whatever the LM."""
    model, apply = model_and_apply("linear", weights_kind)
    hidden = random_hidden(seed)
    params = {**params_for("linear", weights_kind, seed=seed % 3),
              "fusion": head_init("linear", weights_kind, hidden)}
    got = apply({"params": params}, hidden, method="logits_from_hidden")
    s2s_logits = model.s2s.apply({"params": params["s2s"]}, hidden["s2s"],
                                 method="logits_from_hidden")
    if weights_kind == "vector":  # weighs log-probabilities: the s2s's, exactly
        s2s_logits = jax.nn.log_softmax(s2s_logits, axis=-1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(s2s_logits))


@pytest.mark.parametrize("method, train_bases, frozen", [
    ("deep", False, ("s2s", "lm")), ("cold", False, ("lm",)),
    ("simple_postnorm", False, ("lm",)), ("simple_prenorm", False, ("lm",)),
    ("linear", False, ("s2s", "lm")), ("linear", True, ()),
])
def test_frozen_bases_get_no_update_and_no_optimizer_state(method, train_bases, frozen):
    model = fused_model(method, "s2s_rnn", train_bases=train_bases)
    assert model.cfg.frozen_bases() == frozen
    params = {"s2s": {"w": jnp.arange(6.0).reshape(2, 3)}, "lm": {"w": -jnp.arange(4.0)},
              "fusion": {"w": jnp.ones(3)}}
    tx = freeze(optax.adamw(0.1, weight_decay=0.5), frozen)
    opt_state = tx.init(params)
    owners = {k.key for path, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]
              for k in path if getattr(k, "key", None) in params}
    assert owners == set(params) - set(frozen)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    for name in params:
        same = params_digest(new[name]) == params_digest(params[name])
        assert same == (name in frozen), name


def test_frozen_bases_pass_no_gradient():
    """Cold fusion: the LM's gradient is exactly zero (its backward pass is cut), the s2s's
    and the fusion layers' are not."""
    model, _ = model_and_apply("cold", backbone="s2s_rnn")
    params = params_for("cold", backbone="s2s_rnn")
    source, decoder_inputs, targets, segments = example_inputs(ROWS)

    @jit
    def grads(params):
        def loss(params):
            logits = model.apply({"params": params}, source, decoder_inputs,
                                 decoder_segment_ids=segments)
            return -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(targets, VOCAB))

        return jax.grad(loss)(params)

    g = grads(params)
    assert not any(np.asarray(x).any() for x in jax.tree.leaves(g["lm"]))
    for name in ("s2s", "fusion"):
        assert all(np.asarray(x).any() for x in jax.tree.leaves(g[name])), name


def test_fused_model_is_a_flax_module_with_the_three_subtrees():
    model, _ = model_and_apply("deep")
    assert isinstance(model, FusedSeq2Seq)
    assert set(params_for("deep")) == {"s2s", "lm", "fusion"}
    assert set(params_for("simple_prenorm")) == {"s2s", "lm"}
