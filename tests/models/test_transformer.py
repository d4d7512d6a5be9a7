"""Transformer LM: causality, packing, KV-cache decoding, layer scan/remat, dtypes, config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.errors import LmfuseError
from lmfuse.models import build_model, model_defaults, stack_layers, unstack_layers

# Tiny models: compile time dominates, and LLVM's optimisation level only changes speed (the
# XLA program is the same), so tests compile at level 0, about twice as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB = 53
T = 12


def tiny_cfg(**overrides):
    """A plain dict, so tests can also pass values of the wrong type."""
    c = model_defaults().to_dict()
    c.update(name="transformer", emb_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32, dropout=0.0)
    c.update(overrides)
    return c


def tokens(batch=2, length=T, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(1, VOCAB, (batch, length)), jnp.int32)


def model_and_params(**overrides):
    """(model, params, apply): apply is a jitted model.apply, since eager Flax is slow.

    Cached per full config, so tests that use the same config share one compile.
    """
    return _model_and_params(tuple(sorted(tiny_cfg(**overrides).items())))


@functools.cache
def _model_and_params(cfg_items):
    cfg = dict(cfg_items)
    model = build_model(cfg, VOCAB)
    params = _init_params(
        cfg["positions"] == "learned", cfg["norm"], cfg["tie_embeddings"], cfg["layer_norm_epsilon"]
    )
    if cfg["scan_layers"]:
        params = stack_layers(params)
    return model, params, jit(model.apply, static_argnames=("deterministic", "method"))


@functools.cache
def _init_params(learned, norm, tie, eps):
    """Inits are slow in Flax, so configs with the same param tree share one (unscanned)."""
    positions = "learned" if learned else "rope"
    model = build_model(tiny_cfg(positions=positions, norm=norm, tie_embeddings=tie), VOCAB)
    return nn.meta.unbox(jit(model.init)(jax.random.key(0), tokens())["params"])


def num_params(params):
    return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("positions", ["learned", "rope"])
@settings(max_examples=15, deadline=None)
@given(pos=st.integers(0, T - 1), token=st.integers(1, VOCAB - 1))
def test_future_tokens_never_change_earlier_logits(positions, pos, token):
    _, params, apply = model_and_params(positions=positions)
    x = tokens()
    changed = x.at[:, pos].set(token)
    before, after = apply({"params": params}, x), apply({"params": params}, changed)
    np.testing.assert_array_equal(np.asarray(before[:, :pos]), np.asarray(after[:, :pos]))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope"])
def test_packed_row_equals_documents_run_alone(positions):
    _, params, apply = model_and_params(positions=positions)
    a, b = tokens(1, 5, seed=1), tokens(1, 4, seed=2)
    pad = functools.partial(jnp.pad, pad_width=((0, 0), (0, 3)))
    rows = jnp.concatenate(
        [
            jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], axis=1),  # a and b packed
            pad(jnp.concatenate([a, jnp.zeros((1, 4), jnp.int32)], axis=1)),  # a alone
            pad(jnp.concatenate([b, jnp.zeros((1, 5), jnp.int32)], axis=1)),  # b alone
        ]
    )
    segs = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3, [1] * 5 + [0] * 7, [1] * 4 + [0] * 8], jnp.int32)
    pos = jnp.asarray(
        [list(range(5)) + list(range(4)) + [0] * 3, list(range(5)) + [0] * 7, list(range(4)) + [0] * 8],
        jnp.int32,
    )
    out = apply({"params": params}, rows, segment_ids=segs, positions=pos)
    np.testing.assert_allclose(out[0, :5], out[1, :5], atol=1e-5)
    np.testing.assert_allclose(out[0, 5:9], out[2, :4], atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(positions="learned"),
        dict(positions="sinusoidal"),
        dict(positions="rope"),
        dict(positions="rope", scan_layers=True, norm="post"),
    ],
    ids=["learned", "sinusoidal", "rope", "rope-scan-postln"],
)
def test_prefill_then_steps_match_full_forward(overrides):
    model, params, apply = model_and_params(**overrides)
    x = tokens()
    full = apply({"params": params}, x)
    cache = model.init_cache(batch_size=2, max_len=16)
    layers = cache["layers"]  # per layer [batch, heads, max_len, head_dim]; scanned [B, L, ...]
    k = layers["k"] if isinstance(layers, dict) else layers[0]["k"]
    assert k.shape == ((2, 2, 4, 16, 8) if isinstance(layers, dict) else (2, 4, 16, 8))
    prefill = 5
    logits, cache = apply({"params": params}, x[:, :prefill], cache=cache, cache_index=0)
    outs = [logits]
    for i in range(prefill, T):
        logits, cache = apply({"params": params}, x[:, i : i + 1], cache=cache, cache_index=i)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def test_left_padded_prompts_decode_like_unpadded_ones():
    model, params, apply = model_and_params(positions="rope")
    x = tokens(1, 6)
    full = apply({"params": params}, x)
    # Same prompt, left-padded by 3: padding gets segment 0, real tokens positions 0.. .
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), x[:, :4]], axis=1)
    segs = jnp.asarray([[0, 0, 0, 1, 1, 1, 1]], jnp.int32)
    pos = jnp.asarray([[0, 0, 0, 0, 1, 2, 3]], jnp.int32)
    cache = model.init_cache(1, 16)
    logits, cache = apply(
        {"params": params}, padded, segment_ids=segs, positions=pos, cache=cache, cache_index=0
    )
    np.testing.assert_allclose(logits[:, 3:], full[:, :4], atol=1e-5)
    for t in range(4, 6):
        step = x[:, t : t + 1]
        logits, cache = apply({"params": params}, step, positions=jnp.asarray([[t]]), cache=cache, cache_index=t + 3)
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_pre_and_post_ln_both_run_and_differ():
    _, p_pre, pre = model_and_params(norm="pre")
    _, p_post, post = model_and_params(norm="post")
    assert "ln_f" in p_pre and "ln_f" not in p_post
    x = tokens()
    out_pre = pre({"params": p_pre}, x)
    # Same weights where the trees overlap: the only difference is where LayerNorm sits.
    out_post = post({"params": {k: v for k, v in p_pre.items() if k != "ln_f"}}, x)
    assert np.all(np.isfinite(out_post)) and np.all(np.isfinite(post({"params": p_post}, x)))
    assert np.abs(np.asarray(out_pre) - np.asarray(out_post)).max() > 1e-3


def test_tied_head_shares_the_embedding():
    _, tied, _ = model_and_params(tie_embeddings=True)
    _, untied, _ = model_and_params(tie_embeddings=False)
    assert "lm_head" not in tied
    assert untied["lm_head"]["kernel"].shape == (32, VOCAB)
    assert num_params(untied) - num_params(tied) == 32 * VOCAB


def test_scanned_and_unscanned_layers_compute_the_same_function():
    _, p_flat, flat = model_and_params(positions="rope")
    _, p_scan_init, scanned = model_and_params(positions="rope", scan_layers=True)
    stacked = stack_layers(p_flat)
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, p_scan_init)
    segs = jnp.asarray([[1] * 7 + [2] * 5, [1] * 12], jnp.int32)
    x = tokens()
    np.testing.assert_allclose(
        scanned({"params": stacked}, x, segment_ids=segs),
        flat({"params": p_flat}, x, segment_ids=segs),
        atol=1e-6,
    )
    roundtrip = unstack_layers(stacked)
    assert jax.tree.all(jax.tree.map(np.array_equal, roundtrip, p_flat))


@pytest.mark.parametrize("scan", [False, True])
def test_fused_qkv_is_the_same_function_on_the_same_params(scan):
    """`model.fused_qkv` computes query, key and value in one product over the same three
    parameter layers: the same tree, the same logits and gradients (to float rounding), and a
    prefill-then-steps decode that matches the full forward."""
    plain, params, apply = model_and_params(positions="rope", scan_layers=scan)
    fused, fused_init, fused_apply = model_and_params(positions="rope", scan_layers=scan,
                                                      fused_qkv=True)
    assert jax.tree.map(jnp.shape, fused_init) == jax.tree.map(jnp.shape, params)
    segs = jnp.asarray([[1] * 7 + [2] * 5, [1] * 12], jnp.int32)
    x = tokens()
    np.testing.assert_allclose(fused_apply({"params": params}, x, segment_ids=segs),
                               apply({"params": params}, x, segment_ids=segs), atol=1e-5)

    def loss(model, p):
        return model.apply({"params": p}, x, segment_ids=segs).mean()

    g_plain = jit(jax.grad(functools.partial(loss, plain)))(params)
    g_fused = jit(jax.grad(functools.partial(loss, fused)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_plain, g_fused)

    cache = fused.init_cache(batch_size=2, max_len=16)
    logits, cache = fused_apply({"params": params}, x[:, :5], cache=cache, cache_index=0)
    steps = [logits]
    for i in range(5, T):
        logits, cache = fused_apply({"params": params}, x[:, i:i + 1], cache=cache, cache_index=i)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1),
                               apply({"params": params}, x), atol=1e-5)


def test_scanned_params_carry_a_layers_axis():
    model = build_model(tiny_cfg(scan_layers=True), VOCAB)
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens())["params"]  # shapes suffice
    spec = nn.get_partition_spec(boxed)
    assert tuple(spec["blocks"]["attn"]["query"]["kernel"]) == ("layers", "embed", "heads", "kv")
    assert tuple(spec["blocks"]["mlp"]["fc"]["kernel"]) == ("layers", "embed", "mlp")
    assert tuple(spec["wte"]["embedding"]) == ("vocab", "embed")


@pytest.mark.parametrize("scan, policy, dropout", [(False, "full", 0.0), (True, "dots_no_batch", 0.1)])
def test_remat_gives_the_same_gradients(scan, policy, dropout):
    plain, params, _ = model_and_params(scan_layers=scan, dropout=dropout)
    remat, _, _ = model_and_params(scan_layers=scan, dropout=dropout, remat_policy=policy)
    x = tokens()
    rng = {"dropout": jax.random.key(3)}

    def loss(model, p):
        return model.apply({"params": p}, x, deterministic=False, rngs=rng).mean()

    g_plain = jit(jax.grad(functools.partial(loss, plain)))(params)
    g_remat = jit(jax.grad(functools.partial(loss, remat)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g_plain, g_remat)


def test_bf16_compute_keeps_fp32_params_and_logits():
    model, params, apply = model_and_params(dtype="bfloat16", positions="rope")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits = apply({"params": params}, tokens())
    assert logits.dtype == jnp.float32
    _, _, ref = model_and_params(dtype="float32", positions="rope")
    # Same weights in fp32 compute: bf16 is close but not bit-equal.
    np.testing.assert_allclose(logits, ref({"params": params}, tokens()), atol=0.1)
    assert model.init_cache(1, 8)["layers"][0]["k"].dtype == jnp.bfloat16


def test_dropout_uses_the_dropout_rng_only_when_training():
    _, params, apply = model_and_params(dropout=0.5)
    x = tokens()
    a = apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = apply({"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    np.testing.assert_array_equal(apply({"params": params}, x), apply({"params": params}, x))


def test_hidden_states_feed_the_output_layer():
    _, params, apply = model_and_params()
    x = tokens()
    hidden = apply({"params": params}, x, method="embed_and_hidden")
    assert hidden.shape == (2, T, 32)
    np.testing.assert_allclose(
        apply({"params": params}, hidden, method="logits_from_hidden"),
        apply({"params": params}, x),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(name="lstmm"), "model.name"),
        (dict(positions="alibi"), "model.positions"),
        (dict(norm="sandwich"), "model.norm"),
        (dict(remat_policy="some"), "model.remat_policy"),
        (dict(num_heads=5), "model.num_heads"),
        (dict(dropout="0.1"), "model.dropout"),
        (dict(name="lstm", hidden_dim=48), "model.tie_embeddings"),
    ],
)
def test_build_model_errors_name_the_key(overrides, key):
    with pytest.raises(LmfuseError, match=key):
        build_model(tiny_cfg(**overrides), VOCAB)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(LmfuseError, match="rnn, lstm, gru, transformer"):
        build_model(tiny_cfg(name="mamba"), VOCAB)


def test_unknown_key_is_an_error():
    with pytest.raises(LmfuseError, match="model.num_layer"):
        build_model({"name": "transformer", "num_layer": 2}, VOCAB)
