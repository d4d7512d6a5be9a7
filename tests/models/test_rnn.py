"""Recurrent LMs (rnn, lstm, gru): causality, packing resets, step-by-step carry, cell parity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.models import build_model, model_defaults
from lmfuse.models.rnn import RecurrentLayer, RNNConfig

# Tiny models: compile time dominates, and LLVM's optimisation level only changes speed (the
# XLA program is the same), so tests compile at level 0, about twice as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB = 41
T = 10
CELLS = ["rnn", "lstm", "gru"]


def tiny_cfg(**overrides):
    c = model_defaults().to_dict()
    c.update(emb_dim=16, hidden_dim=16, num_layers=2, dropout=0.0)
    c.update(overrides)
    return c


def tokens(batch=2, length=T, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(1, VOCAB, (batch, length)), jnp.int32)


def model_and_params(**overrides):
    """(model, params, apply) with apply a jitted model.apply; cached per full config."""
    return _model_and_params(tuple(sorted(tiny_cfg(**overrides).items())))


@functools.cache
def _model_and_params(cfg_items):
    model = build_model(dict(cfg_items), VOCAB)
    params = nn.meta.unbox(jit(model.init)(jax.random.key(0), tokens())["params"])
    apply = jit(model.apply, static_argnames=("deterministic", "method", "return_carry"))
    return model, params, apply


def num_params(params):
    return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("cell", CELLS)
@settings(max_examples=10, deadline=None)
@given(pos=st.integers(0, T - 1), token=st.integers(1, VOCAB - 1))
def test_future_tokens_never_change_earlier_logits(cell, pos, token):
    _, params, apply = model_and_params(name=cell)
    x = tokens()
    before = apply({"params": params}, x)
    after = apply({"params": params}, x.at[:, pos].set(token))
    np.testing.assert_array_equal(np.asarray(before[:, :pos]), np.asarray(after[:, :pos]))


@pytest.mark.parametrize("cell", CELLS)
def test_packed_row_equals_documents_run_alone(cell):
    _, params, apply = model_and_params(name=cell)
    a, b = tokens(1, 6, seed=1), tokens(1, 3, seed=2)
    row = jnp.concatenate([a, b, jnp.zeros((1, 1), jnp.int32)], axis=1)
    segs = jnp.asarray([[1] * 6 + [2] * 3 + [0]], jnp.int32)
    pos = jnp.asarray([list(range(6)) + list(range(3)) + [0]], jnp.int32)
    packed = apply({"params": params}, row, segment_ids=segs, positions=pos)
    np.testing.assert_allclose(packed[:, :6], apply({"params": params}, a), atol=1e-5)
    np.testing.assert_allclose(packed[:, 6:9], apply({"params": params}, b), atol=1e-5)
    # Without segment ids the second document would see the first.
    unpacked = apply({"params": params}, row)
    assert np.abs(np.asarray(unpacked[:, 6:9]) - np.asarray(packed[:, 6:9])).max() > 1e-4


@pytest.mark.parametrize("cell", CELLS)
def test_one_token_at_a_time_matches_full_sequence(cell):
    model, params, apply = model_and_params(name=cell)
    x = tokens()
    full = apply({"params": params}, x)
    carry = model.init_carry(batch_size=2)
    assert carry["h"].shape == (2, 2, 16)  # [layers, batch, hidden]
    assert set(carry) == ({"h", "c"} if cell == "lstm" else {"h"})
    # A 4-token prompt in one call, then single tokens.
    logits, carry = apply({"params": params}, x[:, :4], carry=carry, return_carry=True)
    outs = [logits]
    for t in range(4, T):
        logits, carry = apply({"params": params}, x[:, t : t + 1], carry=carry, return_carry=True)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_hoisted_input_projection_computes_the_same_function(cell):
    _, params, hoisted = model_and_params(name=cell)
    _, _, stepwise = model_and_params(name=cell, hoist_input_projection=False)
    x = tokens()
    np.testing.assert_allclose(
        hoisted({"params": params}, x), stepwise({"params": params}, x), atol=1e-5
    )


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _layer(cell, d, h):
    layer = RecurrentLayer(RNNConfig(vocab_size=1, cell=cell, emb_dim=d, hidden_dim=h))
    x = jnp.zeros((1, 1, d))
    zero = {"h": jnp.zeros((1, h)), "c": jnp.zeros((1, h))} if cell == "lstm" else {"h": jnp.zeros((1, h))}
    params = nn.meta.unbox(jit(layer.init)(jax.random.key(0), x, None, zero)["params"])
    return layer, params


def test_lstm_steps_match_a_numpy_reference():
    d, h, b, steps = 5, 7, 3, 4
    layer, params = _layer("lstm", d, h)
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.5, p.shape), jnp.float32), params)
    x = rng.normal(size=(b, steps, d)).astype(np.float32)
    h0, c0 = rng.normal(size=(b, h)).astype(np.float32), rng.normal(size=(b, h)).astype(np.float32)
    ys, carry = jit(layer.apply)({"params": params}, jnp.asarray(x), None, {"h": h0, "c": c0})

    w_ih = np.asarray(params["w_ih"]).reshape(d, 4 * h)
    w_hh = np.asarray(params["w_hh"]).reshape(h, 4 * h)
    bias = np.asarray(params["bias"]).reshape(4 * h)
    hs, cs = h0, c0
    for t in range(steps):
        i, f, g, o = np.split(x[:, t] @ w_ih + hs @ w_hh + bias, 4, axis=-1)
        cs = _sigmoid(f) * cs + _sigmoid(i) * np.tanh(g)
        hs = _sigmoid(o) * np.tanh(cs)
        np.testing.assert_allclose(ys[:, t], hs, atol=1e-5)
    np.testing.assert_allclose(carry["c"], cs, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cells_match_torch(cell):
    torch = pytest.importorskip("torch")
    d, h, b, steps = 6, 5, 2, 7
    torch.manual_seed(0)
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(d, h, batch_first=True)
    x = torch.randn(b, steps, d)
    h0 = torch.randn(1, b, h)
    with torch.no_grad():
        if cell == "lstm":
            c0 = torch.randn(1, b, h)
            ref_out, (ref_h, _) = ref(x, (h0, c0))
        else:
            ref_out, ref_h = ref(x, h0)
    g = 4 if cell == "lstm" else 3
    w = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    # torch stores [G*H, in] with gates in the same order as lmfuse (i,f,g,o / r,z,n).
    params = {
        "w_ih": w["weight_ih_l0"].T.reshape(d, g, h),
        "w_hh": w["weight_hh_l0"].T.reshape(h, g, h),
    }
    b_ih, b_hh = w["bias_ih_l0"].reshape(g, h), w["bias_hh_l0"].reshape(g, h)
    if cell == "lstm":
        params["bias"] = b_ih + b_hh
        carry = {"h": h0[0].numpy(), "c": c0[0].numpy()}
    else:  # the candidate's recurrent bias sits inside r * (...), so it stays separate
        params["bias"] = b_ih + np.stack([b_hh[0], b_hh[1], np.zeros(h, np.float32)])
        params["bias_hn"] = b_hh[2]
        carry = {"h": h0[0].numpy()}
    layer, _ = _layer(cell, d, h)
    ys, new_carry = jit(layer.apply)({"params": params}, x.numpy(), None, carry)
    np.testing.assert_allclose(ys, ref_out.numpy(), atol=1e-5)
    np.testing.assert_allclose(new_carry["h"], ref_h[0].numpy(), atol=1e-5)


def test_tied_head_shares_the_embedding():
    _, tied, _ = model_and_params(name="lstm", tie_embeddings=True)
    _, untied, _ = model_and_params(name="lstm", tie_embeddings=False)
    assert "lm_head" not in tied
    assert num_params(untied) - num_params(tied) == 16 * VOCAB


def test_param_tree_and_logical_axes():
    model = build_model(tiny_cfg(name="gru"), VOCAB)
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens())["params"]
    spec = nn.get_partition_spec(boxed)
    assert set(spec) == {"wte", "layers_0", "layers_1"}
    assert tuple(spec["layers_0"]["w_ih"]) == ("embed", "gates", "hidden")
    assert tuple(spec["layers_1"]["w_hh"]) == ("embed", "gates", "hidden")
    assert tuple(spec["layers_1"]["bias_hn"]) == ("hidden",)
    assert boxed["layers_0"]["w_ih"].value.shape == (16, 3, 16)


def test_bf16_compute_keeps_fp32_params_logits_and_carry():
    model, params, apply = model_and_params(name="lstm", dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits, carry = apply({"params": params}, tokens(), return_carry=True)
    assert logits.dtype == jnp.float32 and carry["c"].dtype == jnp.float32
    _, _, ref = model_and_params(name="lstm")
    np.testing.assert_allclose(logits, ref({"params": params}, tokens()), atol=0.05)


def test_dropout_and_hidden_states():
    _, params, apply = model_and_params(name="gru", dropout=0.5)
    x = tokens()
    a = apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    hidden = apply({"params": params}, x, method="embed_and_hidden")
    assert hidden.shape == (2, T, 16)
    np.testing.assert_allclose(
        apply({"params": params}, hidden, method="logits_from_hidden"), apply({"params": params}, x), atol=1e-6
    )
