"""Sampling: cached steps match the full forward, greedy equivalences, padding, EOS, compiles."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfuse.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from lmfuse.decode import (
    DecodeContext,
    DecodeStep,
    MinP,
    RepetitionPenalty,
    TopK,
    TopP,
    apply_processors,
    greedy,
    left_pad,
    lm_decode_step,
    sample,
    sampling_processors,
)
from lmfuse.decode import sampling as sampling_module
from lmfuse.models import build_model, model_defaults

VOCAB = 50
N = 8  # tokens to generate

CONFIGS = {
    "transformer-learned": dict(name="transformer", positions="learned"),
    "transformer-sinusoidal": dict(name="transformer", positions="sinusoidal"),
    "transformer-rope": dict(name="transformer", positions="rope", norm="post"),
    "lstm": dict(name="lstm"),
    "gru": dict(name="gru"),
    "rnn": dict(name="rnn"),
}


@functools.cache
def model_and_params(kind: str):
    """Tiny random-init model and its (unboxed) params, shared by all tests of one kind."""
    c = model_defaults().to_dict()
    c.update(emb_dim=32, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32, dropout=0.0)
    c.update(CONFIGS[kind])
    if c["name"] == "transformer":
        # One layer keeps compiles short; test_beam.py decodes (and reorders) a 2-layer cache.
        c.update(num_layers=1)
    model = build_model(c, VOCAB)
    # A larger init scale than the default, so the random model's distributions are peaked
    # enough that ties and near-ties (which make argmax comparisons flaky) do not occur.
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 1 else x, params)
    return model, params


def full_forward(model, params, rows: list[list[int]]) -> np.ndarray:
    """Logits [B, T, V] of the plain forward pass (no cache) over right-padded rows."""
    return np.asarray(_jitted_apply(model)({"params": params}, right_padded(rows)))


@functools.cache
def _jitted_apply(model):
    return jax.jit(model.apply)


def right_padded(rows: list[list[int]]) -> jax.Array:
    width = max(len(r) for r in rows)
    return jnp.asarray([r + [PAD_ID] * (width - len(r)) for r in rows], jnp.int32)


def random_prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [[BOS_ID, *rng.randint(3, VOCAB, n - 1).tolist()] for n in lengths]


def test_left_pad_accepts_either_padding():
    right = jnp.asarray([[2, 5, 6, 0, 0], [2, 7, 0, 0, 0], [2, 3, 4, 5, 6]])
    left = jnp.asarray([[0, 0, 2, 5, 6], [0, 0, 0, 2, 7], [2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(left_pad(right), left)
    np.testing.assert_array_equal(left_pad(left), left)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_cached_steps_match_full_forward_for_mixed_length_prompts(kind):
    model, params = model_and_params(kind)
    decoder = lm_decode_step(model)
    prompts = random_prompts(1, [1, 4, 6])
    continuation = np.random.RandomState(2).randint(3, VOCAB, (3, 6)).astype(np.int32)
    init = jax.jit(decoder.init, static_argnums=2)
    step = jax.jit(decoder.step)
    logits, state = init(params, {"prompt": right_padded(prompts)}, 6 + continuation.shape[1])
    outs = [logits]
    for t in range(continuation.shape[1] - 1):
        logits, state = step(params, state, jnp.asarray(continuation[:, t]))
        outs.append(logits)
    cached = np.stack(outs, axis=1)  # [B, 6, V]
    # Unpadded rows, right-padded into one call: causal, so the padding changes no logit we read.
    full = full_forward(model, params, [p + c.tolist() for p, c in zip(prompts, continuation, strict=True)])
    for row, prompt in enumerate(prompts):
        expected = full[row, len(prompt) - 1 : len(prompt) + continuation.shape[1] - 1]
        np.testing.assert_allclose(cached[row], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["transformer-rope", "lstm"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), lengths=st.lists(st.integers(1, 5), min_size=2, max_size=2))
def test_greedy_equals_top_k_1_and_zero_temperature(kind, seed, lengths):
    model, params = model_and_params(kind)
    decoder = lm_decode_step(model)
    # Fixed width 5, so every example reuses one compiled program.
    prompts = random_prompts(seed % 1000, lengths)
    batch = {"prompt": right_padded([p + [PAD_ID] * (5 - len(p)) for p in prompts])}
    key = jax.random.key(seed)
    ref = greedy(decoder, params, batch, max_new_tokens=N)
    for kwargs in (dict(top_k=1), dict(temperature=0.0), dict(temperature=1e-6)):
        out = sample(decoder, params, batch, key, max_new_tokens=N, **kwargs)
        np.testing.assert_array_equal(out.tokens, ref.tokens, err_msg=str(kwargs))
    # top_k=1 leaves one finite logit, so each chosen token has log-prob exactly 0.
    out = sample(decoder, params, batch, key, max_new_tokens=N, top_k=1)
    np.testing.assert_allclose(out.logprobs, 0.0, atol=1e-6)


@pytest.mark.parametrize("kind", ["transformer-learned", "lstm"])
def test_padded_batch_gives_the_same_continuations_as_each_prompt_alone(kind):
    model, params = model_and_params(kind)
    decoder = lm_decode_step(model)
    prompts = random_prompts(3, [1, 3, 6])
    together = greedy(decoder, params, {"prompt": right_padded(prompts)}, max_new_tokens=N, eos_id=None)
    for row, prompt in enumerate(prompts):
        alone = greedy(decoder, params, {"prompt": jnp.asarray([prompt])}, max_new_tokens=N, eos_id=None)
        np.testing.assert_array_equal(together.tokens[row], alone.tokens[0])
        np.testing.assert_allclose(together.logprobs[row], alone.logprobs[0], atol=1e-5)


def _processed_reference(full, prompt, generated, chain):
    """Teacher-forced processed logits [N, V] for one sampled row, without the decode loop;
    `full` [T, V] are the row's plain forward logits over prompt + generated."""
    out = []
    for t in range(len(generated)):
        seen = np.zeros((1, VOCAB), bool)
        seen[0, prompt + generated[:t]] = True
        seen[0, PAD_ID] = False
        ctx = DecodeContext(jnp.asarray(t), jnp.asarray(seen))
        out.append(apply_processors(chain, full[None, len(prompt) - 1 + t], ctx)[0])
    return np.stack(out)


@pytest.mark.parametrize("kind", ["transformer-learned", "gru"])
def test_eos_is_followed_by_pad_and_logprobs_match_processed_logits(kind):
    model, params = model_and_params(kind)
    decoder = lm_decode_step(model)
    prompts = random_prompts(4, [2, 5])
    batch = {"prompt": right_padded(prompts)}
    settings_ = dict(temperature=0.8, top_k=20, top_p=0.95, min_p=0.01, repetition_penalty=1.3)
    free = sample(decoder, params, batch, jax.random.key(7), max_new_tokens=N, eos_id=None, **settings_)
    # Use a token that the free run emits mid-row (first time at `at`) as "EOS": same key, so
    # the same draws up to it.
    first_row = np.asarray(free.tokens[0, 0])
    at = next(j for j in range(1, N) if first_row[j] not in first_row[:j])
    eos = int(first_row[at])
    out = sample(decoder, params, batch, jax.random.key(7), max_new_tokens=N, eos_id=eos, **settings_)
    chain = sampling_processors(**settings_)
    from lmfuse.decode.processors import SuppressTokens

    chain = (SuppressTokens((PAD_ID,)),) + chain
    # Every row's prompt + full sample (PAD after EOS) in one plain forward pass.
    full = full_forward(model, params, [p + out.tokens[r, 0].tolist() for r, p in enumerate(prompts)])
    for row, prompt in enumerate(prompts):
        tokens, logprobs = np.asarray(out.tokens[row, 0]), np.asarray(out.logprobs[row, 0])
        hits = np.flatnonzero(tokens == eos)
        end = hits[0] + 1 if hits.size else N
        assert out.lengths[row, 0] == end
        assert np.all(tokens[end:] == PAD_ID) and np.all(logprobs[end:] == 0.0)
        assert np.all(tokens[:end] != PAD_ID)
        generated = tokens[:end].tolist()
        ref = _processed_reference(full[row], prompt, generated, chain)
        expected = jax.nn.log_softmax(ref, axis=-1)[np.arange(end), generated]
        np.testing.assert_allclose(logprobs[:end], expected, atol=1e-4)
        assert np.all(np.isfinite(logprobs[:end]))
    np.testing.assert_array_equal(out.tokens[0, 0, : at + 1], first_row[: at + 1])
    assert out.lengths[0, 0] == at + 1


def test_sampling_is_deterministic_given_the_key_and_num_samples_differ():
    model, params = model_and_params("lstm")
    decoder = lm_decode_step(model)
    batch = {"prompt": right_padded(random_prompts(5, [3, 2]))}
    a = sample(decoder, params, batch, jax.random.key(1), max_new_tokens=N, num_samples=4, temperature=2.0)
    b = sample(decoder, params, batch, jax.random.key(1), max_new_tokens=N, num_samples=4, temperature=2.0)
    c = sample(decoder, params, batch, jax.random.key(2), max_new_tokens=N, num_samples=4, temperature=2.0)
    assert a.tokens.shape == (2, 4, N) and a.logprobs.shape == (2, 4, N) and a.lengths.shape == (2, 4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert len({tuple(s) for s in np.asarray(a.tokens[0]).tolist()}) > 1  # samples differ


@dataclasses.dataclass(frozen=True)
class CountingStep:
    """Wraps a DecodeStep's step and counts how often it is traced (i.e. compiled)."""

    inner: DecodeStep
    traces: list

    def __call__(self, params, state, tokens):
        self.traces.append(1)
        return self.inner.step(params, state, tokens)

    def __hash__(self):
        return id(self)


def test_generating_n_tokens_is_one_compiled_call():
    model, params = model_and_params("transformer-rope")
    inner = lm_decode_step(model)
    counter = CountingStep(inner, [])
    decoder = DecodeStep(inner.init, counter)
    batch = {"prompt": right_padded(random_prompts(6, [3, 4]))}
    before = sampling_module._generate._cache_size()
    first = sample(decoder, params, batch, jax.random.key(0), max_new_tokens=12, eos_id=None)
    assert len(counter.traces) == 1  # traced once for 12 tokens: the loop is not Python
    assert sampling_module._generate._cache_size() == before + 1
    other = {"prompt": right_padded(random_prompts(7, [4, 2]))}
    second = sample(decoder, params, other, jax.random.key(1), max_new_tokens=12, eos_id=None)
    assert len(counter.traces) == 1  # new key and prompts: no retrace, no recompile
    assert sampling_module._generate._cache_size() == before + 1
    assert first.tokens.shape == second.tokens.shape == (2, 1, 12)


def test_processors_filter_as_specified():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    ctx = DecodeContext(jnp.asarray(0), jnp.asarray([[False, True, False, True]]))
    kept = lambda p: np.isfinite(np.asarray(p(logits, ctx)))[0].tolist()  # noqa: E731
    assert kept(TopK(2)) == [True, True, False, False]
    assert kept(TopP(0.8)) == [True, True, False, False]  # 0.5 < 0.8, 0.8 reaches it
    assert kept(TopP(0.81)) == [True, True, True, False]
    assert kept(TopP(1e-6)) == [True, False, False, False]  # the top token always stays
    assert kept(MinP(0.3)) == [True, True, True, False]  # 0.15 >= 0.3 * 0.5; 0.05 is not
    penalised = np.asarray(RepetitionPenalty(2.0)(jnp.asarray([[1.0, 1.0, -1.0, -1.0]]), ctx))
    np.testing.assert_allclose(penalised, [[1.0, 0.5, -1.0, -2.0]])
    chain = sampling_processors(temperature=0.5, top_k=3)
    np.testing.assert_allclose(apply_processors(chain, logits, ctx)[0, :3], logits[0, :3] / 0.5, rtol=1e-6)
    assert EOS_ID != PAD_ID
