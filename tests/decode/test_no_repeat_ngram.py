"""no_repeat_ngram_size: the ban against a pure-Python statement of the rule, no n-gram twice in
any output (greedy, top-k sampling, beam search, fused beam search) of a model that wants to
repeat, and nothing traced when it is off."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_models import random_lm

from lmfuse.decode import DecodeStep, beam_search, greedy, left_pad, repeated_ngram_ban, sample
from lmfuse.decode import beam as beam_module
from lmfuse.decode import sampling as sampling_module
from lmfuse.decode.fusion import fused_params, fusion_weights, shallow_fusion
from lmfuse.decode.processors import SuppressTokens
from lmfuse.tokens import BOS_ID, EOS_ID, PAD_ID

VOCAB = 16
N = 12  # tokens to generate
CYCLE = (5, 6, 7)  # the forced model's favourite loop


def banned_reference(generated: list[int], n: int) -> set[int]:
    """The rule, slowly: t is banned if generated[-(n-1):] + [t] already occurs in generated."""
    context = tuple(generated[len(generated) - n + 1:]) if n > 1 else ()
    return {generated[j + n - 1] for j in range(len(generated) - n + 1)
            if tuple(generated[j:j + n - 1]) == context}


def repeated_ngrams(tokens, n: int) -> list[tuple[int, ...]]:
    """The n-grams that occur more than once in `tokens` (cut at EOS, PAD dropped)."""
    tokens = [int(t) for t in tokens if t != PAD_ID]
    if EOS_ID in tokens:
        tokens = tokens[: tokens.index(EOS_ID) + 1]
    grams = [tuple(tokens[j:j + n]) for j in range(len(tokens) - n + 1)]
    return sorted({g for g in grams if grams.count(g) > 1})


@functools.cache
def _jitted_ban(n: int):
    return jax.jit(repeated_ngram_ban, static_argnums=3)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), step=st.integers(0, 10),
       rows=st.lists(st.lists(st.integers(3, 6), min_size=10, max_size=10), min_size=3, max_size=3))
def test_the_ban_is_the_rule(n, step, rows):
    generated = np.full((3, 10), PAD_ID, np.int32)  # valid in columns [0, step)
    generated[:, :step] = np.asarray(rows)[:, :step]
    scores = _jitted_ban(n)(jnp.zeros((3, 8)), jnp.asarray(generated), jnp.asarray(step), n)
    for row in range(3):
        banned = set(np.flatnonzero(np.isneginf(np.asarray(scores[row]))).tolist())
        assert banned == banned_reference(generated[row, :step].tolist(), n)


# A DecodeStep whose next-token logits depend on the last token only: after t in CYCLE it
# strongly prefers the next one in the cycle, after anything else the first; EOS never wins.


def _table_init(params, batch, max_len):
    last = left_pad(batch["prompt"])[:, -1]
    return params[last], {"last": last}


def _table_step(params, state, tokens):
    return params[tokens], {"last": tokens}


FORCED = DecodeStep(_table_init, _table_step)


def forced_table(seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    table = rng.normal(0.0, 1.0, (VOCAB, VOCAB)).astype(np.float32)
    table[:, EOS_ID] = -5.0
    table[:, CYCLE[0]] += 8.0
    for a, b in zip(CYCLE, CYCLE[1:] + CYCLE[:1], strict=True):
        table[a, CYCLE[0]] -= 8.0
        table[a, b] += 8.0
    return jnp.asarray(table)


def prompts() -> dict[str, jax.Array]:
    return {"prompt": jnp.asarray([[BOS_ID, 9], [PAD_ID, BOS_ID], [BOS_ID, 5]], jnp.int32)}


def test_the_forced_model_repeats_without_the_ban():
    out = greedy(FORCED, forced_table(), prompts(), max_new_tokens=N, eos_id=None)
    for row in np.asarray(out.tokens[:, 0]):
        assert repeated_ngrams(row, 3)


def _no_repeats(tokens: np.ndarray, n: int) -> None:
    for hypothesis in tokens.reshape(-1, tokens.shape[-1]):
        assert not repeated_ngrams(hypothesis, n), hypothesis.tolist()
        assert (hypothesis != PAD_ID).sum() == N  # the ban never left PAD as the only choice


@pytest.mark.parametrize("n", [2, 3])
def test_greedy_and_top_k_sampling_never_repeat_an_ngram(n):
    table = forced_table()
    out = greedy(FORCED, table, prompts(), max_new_tokens=N, eos_id=None, no_repeat_ngram_size=n)
    _no_repeats(np.asarray(out.tokens), n)
    drawn = sample(FORCED, table, prompts(), jax.random.key(n), max_new_tokens=N, eos_id=None,
                   top_k=4, num_samples=3, no_repeat_ngram_size=n)
    _no_repeats(np.asarray(drawn.tokens), n)


@pytest.mark.parametrize("n", [2, 3])
def test_beam_search_never_repeats_an_ngram(n):
    out = beam_search(FORCED, forced_table(), prompts(), beam_size=3, max_new_tokens=N,
                      eos_id=None, no_repeat_ngram_size=n)
    assert np.all(np.asarray(out.finished))
    _no_repeats(np.asarray(out.tokens), n)


def test_fused_beam_search_never_repeats_an_ngram():
    lm, lm_params = random_lm("transformer", 3, VOCAB)
    fused = shallow_fusion(FORCED, lm)
    params = fused_params(forced_table(), fusion_weights(0.5), lm=lm_params)
    plain = beam_search(fused, params, prompts(), beam_size=3, max_new_tokens=N, eos_id=None)
    assert any(repeated_ngrams(h, 2) for h in np.asarray(plain.tokens).reshape(-1, N))
    out = beam_search(fused, params, prompts(), beam_size=3, max_new_tokens=N, eos_id=None,
                      no_repeat_ngram_size=2)
    _no_repeats(np.asarray(out.tokens), 2)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_greedy_with_the_ban_is_the_step_by_step_reference(n):
    decoder, params = random_lm("transformer", 5, VOCAB, scale=3.0)
    batch = {"prompt": jnp.asarray([[BOS_ID, 7, 8], [PAD_ID, BOS_ID, 4]], jnp.int32)}
    n_tokens = 10
    out = greedy(decoder, params, batch, max_new_tokens=n_tokens, eos_id=None,
                 no_repeat_ngram_size=n)
    plain = greedy(decoder, params, batch, max_new_tokens=n_tokens, eos_id=None)
    assert any(repeated_ngrams(row, n) for row in np.asarray(plain.tokens[:, 0]))  # it bites

    logits, state = jax.jit(decoder.init, static_argnums=2)(params, batch, 3 + n_tokens)
    step = jax.jit(decoder.step)
    generated: list[list[int]] = [[], []]
    for _ in range(n_tokens):
        scores = np.array(logits)
        scores[:, PAD_ID] = -np.inf
        for row, tokens in enumerate(generated):
            scores[row, sorted(banned_reference(tokens, n))] = -np.inf
        chosen = scores.argmax(-1)
        for row, token in enumerate(chosen):
            generated[row].append(int(token))
        logits, state = step(params, state, jnp.asarray(chosen, jnp.int32))
    np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), np.asarray(generated))


def _compiled_text(fn, *args) -> str:
    return fn.lower(*args).compile().as_text()


def test_size_zero_traces_no_ban():
    table, batch, key = forced_table(), prompts(), jax.random.key(0)
    eos = jnp.asarray(EOS_ID, jnp.int32)
    chain = (SuppressTokens((PAD_ID,)),)
    args = (FORCED, chain, sampling_module.Truncation(), False, True, N, 1, 16, table, batch, key,
            eos)
    assert "repeated_ngram_ban" not in _compiled_text(sampling_module._generate, *args)
    limits = jnp.full((batch["prompt"].shape[0],), N, jnp.int32)
    beam_args = (FORCED, chain, 2, N, 0.6, 0, 16, table, batch, eos, limits)
    assert "repeated_ngram_ban" not in _compiled_text(beam_module._beam_search, *beam_args)
    # The same check sees the ban when it is on.
    beam_args = (FORCED, chain, 2, N, 0.6, 2, 16, table, batch, eos, limits)
    assert "repeated_ngram_ban" in _compiled_text(beam_module._beam_search, *beam_args)
