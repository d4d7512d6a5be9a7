"""The copy (pointer-generator) output layer: a distribution over the vocabulary that matches a
float64 reference, its exact limits, source masking, finite gradients where the softmax
underflows, packed rows, the fusion config check, and a copy task it learns far faster than
the plain softmax output. Cached decoding is checked in the encoder-decoders' own tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from lmfuse.data.tokenizer import EOS_ID, PAD_ID
from lmfuse.models import build_model, model_defaults
from lmfuse.models.copy import CopyHead, mix_copy
from lmfuse.models.layers import shift_right
from lmfuse.train.objectives import Objective
from lmfuse.train.step import LossOptions, TrainState, make_train_step

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

VOCAB = 23
B, T, S = 3, 5, 6
D, M, A = 8, 6, 4  # decoder width, memory width, pointer width

# Row 0 packs two examples (and one padding slot) on both sides, row 1 is one padded example,
# row 2 has an empty source: its target tokens see nothing to copy.
SOURCE_IDS = np.array([[5, 7, 5, 7, 9, PAD_ID], [4, 4, 8, 6, PAD_ID, PAD_ID], [PAD_ID] * S])
SOURCE_SEGS = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0], [0] * S])
TARGET_SEGS = np.array([[1, 1, 2, 2, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
VISIBLE = (TARGET_SEGS[:, :, None] == SOURCE_SEGS[:, None, :]) & (SOURCE_SEGS[:, None, :] != 0)


def head_inputs(seed=0):
    rng = np.random.RandomState(seed)
    hidden = jnp.asarray(rng.randn(B, T, D), jnp.float32)
    logits = jnp.asarray(2.0 * rng.randn(B, T, VOCAB), jnp.float32)
    memory = jnp.asarray(rng.randn(B, S, M), jnp.float32)
    return hidden, logits, memory, jnp.asarray(SOURCE_IDS, jnp.int32), jnp.asarray(VISIBLE)


HEAD = CopyHead(D, M, A)


def head_params(gate_bias=0.5, seed=0):
    """Random head params, large enough that the pointer is far from uniform."""
    rng = np.random.RandomState(seed)
    return {
        "query": jnp.asarray(0.5 * rng.randn(D, A), jnp.float32),
        "key": jnp.asarray(0.5 * rng.randn(M, A), jnp.float32),
        "gate_kernel": jnp.asarray(0.3 * rng.randn(D + M), jnp.float32),
        "gate_bias": jnp.asarray(gate_bias, jnp.float32),
    }


@jit
def run_head(params, hidden, logits, memory, ids, mask):
    """(log-probs [B, T, V], pointer weights [B, T, S], p_gen [B, T])."""
    out, state = HEAD.apply(
        {"params": params}, hidden, logits, memory, ids, mask, mutable=["intermediates"]
    )
    sown = state["intermediates"]
    return out, sown["pointer_attention"][0], sown["p_gen"][0]


def reference(params, hidden, logits, memory, ids, mask):
    """The pointer-generator distribution of See et al. (2017), eq. 9, in float64 NumPy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    hidden, logits, memory = (np.asarray(a, np.float64) for a in (hidden, logits, memory))
    scores = np.einsum("btd,bsd->bts", hidden @ p["query"], memory @ p["key"]) / np.sqrt(A)
    scores = np.where(mask, scores, -np.inf)
    has_source = mask.any(-1)
    a = np.exp(scores - scores.max(-1, keepdims=True, initial=-1e300))
    a = np.where(has_source[..., None], a / np.maximum(a.sum(-1, keepdims=True), 1e-300), 0.0)
    context = a @ memory
    gate = np.concatenate([hidden, context], -1) @ p["gate_kernel"] + p["gate_bias"]
    p_gen = np.where(has_source, 1.0 / (1.0 + np.exp(-gate)), 1.0)
    vocab = np.exp(logits - logits.max(-1, keepdims=True))
    vocab /= vocab.sum(-1, keepdims=True)
    copy = np.zeros_like(vocab)
    for b in range(B):
        for s in range(S):
            copy[b, :, ids[b, s]] += a[b, :, s]
    return p_gen[..., None] * vocab + (1.0 - p_gen[..., None]) * copy, a


def test_output_is_the_pointer_generator_distribution_on_packed_rows():
    inputs = head_inputs()
    params = head_params()
    out, weights, p_gen = (np.asarray(x) for x in run_head(params, *inputs))
    assert out.shape == (B, T, VOCAB) and out.dtype == np.float32
    # Every row is a distribution: real tokens, padding and the row with no source alike.
    np.testing.assert_allclose(jax.nn.logsumexp(out, axis=-1), 0.0, atol=1e-5)
    expected, expected_weights = reference(params, *inputs)
    np.testing.assert_allclose(np.exp(out), expected, atol=1e-6)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-6)
    # Repeated source tokens pool their weights: row 1 holds token 4 twice, at 0 and 1.
    copy_4 = weights[1, :3, 0] + weights[1, :3, 1]
    gen_4 = p_gen[1, :3] * np.asarray(jax.nn.softmax(inputs[1][1, :3]))[:, 4]
    np.testing.assert_allclose(np.exp(out[1, :3, 4]), gen_4 + (1 - p_gen[1, :3]) * copy_4,
                               rtol=1e-5)
    assert (p_gen[VISIBLE.any(-1)] < 0.99).all()  # the copy part weighs in everywhere


def test_padded_and_other_segment_sources_get_no_pointer_weight():
    inputs = head_inputs()
    params = head_params()
    out, weights, p_gen = (np.asarray(x) for x in run_head(params, *inputs))
    assert np.all(weights[~VISIBLE] == 0.0)
    has_source = VISIBLE.any(-1)
    np.testing.assert_allclose(weights.sum(-1)[has_source], 1.0, atol=1e-6)
    assert np.all(weights.sum(-1)[~has_source] == 0.0) and np.all(p_gen[~has_source] == 1.0)
    # What sits in the invisible slots (ids and memory) never changes the output.
    hidden, logits, memory, ids, mask = inputs
    noise = np.random.RandomState(1)
    other_ids = jnp.where(SOURCE_SEGS == 0, noise.randint(3, VOCAB, (B, S)), ids)
    other_memory = jnp.where((SOURCE_SEGS == 0)[..., None], noise.randn(B, S, M), memory)
    changed, _, _ = run_head(params, hidden, logits, other_memory, other_ids, mask)
    np.testing.assert_allclose(changed, out, atol=1e-6)
    # Row 0's second target segment copies only from source segment 2 (tokens 7 and 9).
    gen = np.log(p_gen[0, 2:4, None]) + np.asarray(jax.nn.log_softmax(logits[0, 2:4]))
    np.testing.assert_allclose(out[0, 2:4, 5], gen[:, 5], atol=1e-5)  # 5: segment 1 only
    assert (out[0, 2:4, 9] > gen[:, 9] + 1e-3).all()


def test_tokens_absent_from_the_source_get_exactly_the_generator_term():
    rng = np.random.RandomState(0)
    logits = jnp.asarray(3.0 * rng.randn(B, T, VOCAB), jnp.float32)
    weights = jax.nn.softmax(jnp.asarray(rng.randn(B, T, S), jnp.float32), axis=-1)
    ids = jnp.asarray(rng.randint(3, VOCAB, (B, S)), jnp.int32)
    gate = jnp.asarray(rng.randn(B, T), jnp.float32)
    out = np.asarray(jit(mix_copy)(logits, weights, ids, gate))
    generator = np.asarray(jax.nn.log_sigmoid(gate)[..., None] + jax.nn.log_softmax(logits))
    absent = np.ones((B, T, VOCAB), bool)
    for b in range(B):
        absent[b, :, np.asarray(ids[b])] = False
    np.testing.assert_array_equal(out[absent], generator[absent])
    assert (out[~absent] > generator[~absent] + 1e-4).all()  # the copy adds to the others


@pytest.mark.parametrize("gate_bias", [1e4, -1e4])
def test_a_saturated_gate_gives_the_vocab_softmax_or_the_pointer(gate_bias):
    inputs = head_inputs()
    hidden, logits, memory, ids, mask = inputs
    out, weights, _ = (np.asarray(x) for x in run_head(head_params(gate_bias), *inputs))
    has_source = VISIBLE.any(-1)
    vocab = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    if gate_bias > 0:  # p_gen -> 1: exactly the generator's log_softmax
        np.testing.assert_allclose(out, vocab, atol=1e-6)
        return
    # p_gen -> 0: the pointer alone, where there is a source to point at.
    np.testing.assert_allclose(out[~has_source], vocab[~has_source], atol=1e-6)
    copy = np.zeros((B, T, VOCAB))
    for b in range(B):
        np.add.at(copy[b].T, np.asarray(ids[b]), weights[b].T)
    np.testing.assert_allclose(np.exp(out[has_source]), copy[has_source], atol=1e-6)


@pytest.mark.parametrize("present", [True, False])
def test_gradients_are_finite_when_the_vocab_softmax_underflows(present):
    hidden, logits, memory, ids, mask = head_inputs()
    target = 7 if present else 11  # in row 0's source (both segments), or in no row's
    # The target's softmax probability is exactly 0 in float32 (e^-1e4); log_softmax is not.
    logits = logits.at[..., target].add(-1e4)
    assert float(jax.nn.softmax(logits)[0, 0, target]) == 0.0

    def loss(params, hidden, logits, memory):
        out = HEAD.apply({"params": params}, hidden, logits, memory, ids, mask)
        return -out[..., target].sum()

    for gate_bias in (0.0, 60.0):  # an even gate, and one where 1 - p_gen underflows
        value, grads = jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(
            head_params(gate_bias), hidden, logits, memory
        )
        assert np.isfinite(float(value))
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            assert np.isfinite(np.asarray(g)).all(), jax.tree_util.keystr(path)
        assert np.abs(np.asarray(grads[2])).max() > 0  # the vocab logits still learn
        if present and gate_bias == 0.0:  # copying is how to raise the target, so it is used
            assert np.abs(np.asarray(grads[0]["query"])).max() > 0


# ---------------------------------------------------------------------------------------------
# Through the models


def tiny_s2s(name, vocab, **overrides):
    c = model_defaults().to_dict()
    c.update(name=name, emb_dim=32, hidden_dim=32, num_layers=1, num_encoder_layers=1,
             num_heads=2, mlp_dim=64, max_len=32, dropout=0.0, copy_source=True)
    c.update(overrides)
    return build_model(c, vocab)


@pytest.mark.parametrize("name", ["s2s_transformer", "s2s_rnn"])
def test_packed_rows_are_distributions_and_equal_each_example_alone(name):
    model = tiny_s2s(name, VOCAB)
    # Row 0 packs examples a and b, rows 1 and 2 hold them alone; a's target copies a's source.
    src = jnp.asarray([[5, 7, 2, 9, 9, 2], [5, 7, 2, 0, 0, 0], [9, 9, 2, 0, 0, 0]], jnp.int32)
    src_segs = jnp.asarray([[1, 1, 1, 2, 2, 2], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    src_pos = jnp.asarray([[0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 0, 0], [0, 1, 2, 0, 0, 0]])
    tgt = jnp.asarray([[5, 2, 9, 9, 2], [5, 2, 0, 0, 0], [9, 9, 2, 0, 0]], jnp.int32)
    tgt_segs = jnp.asarray([[1, 1, 2, 2, 2], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    tgt_pos = jnp.asarray([[0, 1, 0, 1, 2], [0, 1, 0, 0, 0], [0, 1, 2, 0, 0]])
    params = jit(model.init)(jax.random.key(0), src, tgt)["params"]
    out = np.asarray(jit(model.apply)(
        {"params": params}, src, shift_right(tgt, tgt_pos), inputs_segment_ids=src_segs,
        decoder_segment_ids=tgt_segs, inputs_positions=src_pos, decoder_positions=tgt_pos,
    ))
    np.testing.assert_allclose(jax.nn.logsumexp(out, axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[0, :2], out[1, :2], atol=1e-5)
    np.testing.assert_allclose(out[0, 2:5], out[2, :3], atol=1e-5)
    assert set(nn.meta.unbox(params)["copy_head"]) == {"query", "key", "gate_kernel", "gate_bias"}


# ---------------------------------------------------------------------------------------------
# Behaviour: a copy task

COPY_VOCAB, COPY_LEN, COPY_BATCH, COPY_STEPS = 64, 12, 32, 60


def copy_batches(steps, seed=0):
    """Random sequences (+ EOS) whose target is the source itself, one batch per step."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, COPY_VOCAB, (steps, COPY_BATCH, COPY_LEN))
    ids = np.concatenate([ids, np.full((steps, COPY_BATCH, 1), EOS_ID)], axis=-1)
    ones = np.ones_like(ids)
    positions = np.broadcast_to(np.arange(COPY_LEN + 1), ids.shape)
    return {
        "inputs": ids, "targets": ids, "inputs_segment_ids": ones, "targets_segment_ids": ones,
        "inputs_positions": positions, "targets_positions": positions,
    }


@functools.cache
def copy_task_init(name):
    dummy = Objective("seq2seq").init_inputs(COPY_LEN + 1, COPY_LEN + 1)
    variables = jit(tiny_s2s(name, COPY_VOCAB).init)(jax.random.key(0), *dummy)
    return nn.meta.unbox(variables["params"])


def copy_task_loss(name, copy_source):
    """The mean training loss over the last 10 of COPY_STEPS Adam steps. Both variants start
    from the same generator weights (the copy model's, less its copy head)."""
    objective = Objective("seq2seq")
    params = copy_task_init(name)
    if not copy_source:
        params = {k: v for k, v in params.items() if k != "copy_head"}
    model = tiny_s2s(name, COPY_VOCAB, copy_source=copy_source)
    tx = optax.adam(3e-3)
    step = make_train_step(model.apply, tx, LossOptions(), 1, objective)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    @jit
    def train(state, batches):
        def body(state, batch):
            state, metrics = step(state, batch, jax.random.key(1))
            return state, metrics["loss"]

        return jax.lax.scan(body, state, batches)[1]

    losses = train(state, jax.tree.map(jnp.asarray, copy_batches(COPY_STEPS)))
    return float(losses[-10:].mean())


@pytest.mark.parametrize(
    "name", ["s2s_transformer", pytest.param("s2s_rnn", marks=pytest.mark.slow)]
)
def test_copy_source_learns_a_copy_task_far_faster(name):
    plain, copying = copy_task_loss(name, False), copy_task_loss(name, True)
    # Uniform guessing costs log(61) = 4.1 nats a token, uniform pointing log(13) = 2.6; after
    # COPY_STEPS steps the plain transformer is near 3.3 (the RNN 3.9), the copying one below
    # 0.01 (the RNN 1.4).
    assert copying < 0.5 * plain, (plain, copying)
