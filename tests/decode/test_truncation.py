"""Top-k / top-p / min-p on candidate sets draw from exactly the distribution of the
full-vocabulary masks (`TopK`, `TopP`, `MinP`), fall back to them when a candidate set cannot
hold it, and sort no vocabulary when top-k gives the candidates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmfuse.decode import TopK, apply_processors
from lmfuse.decode.truncation import Truncation, choose_tokens, truncate

VOCAB = 40
CAP = 16  # candidates of top-p alone (256 by default): fewer than VOCAB, to test the bound
SETTINGS = [
    Truncation(top_k=5),
    Truncation(top_k=12, top_p=0.8),
    Truncation(top_k=12, top_p=0.9, min_p=0.05),
    Truncation(top_k=8, min_p=0.1),
    Truncation(top_p=0.7, top_p_candidates=CAP),
    Truncation(top_p=0.95, min_p=0.02, top_p_candidates=CAP),
]


def masked_probs(logits: np.ndarray, truncation: Truncation) -> np.ndarray:
    """The reference: softmax of the full-vocabulary masks."""
    masked = apply_processors(truncation.masks(logits.shape[-1]), jnp.asarray(logits), None)
    return np.asarray(jax.nn.softmax(masked, axis=-1))


def candidate_probs(logits: np.ndarray, truncation: Truncation) -> tuple[np.ndarray, bool]:
    """The candidates' distribution spread over the vocabulary, and whether it is exact."""
    cands = jax.jit(truncate, static_argnums=1)(jnp.asarray(logits), truncation)
    probs = np.zeros(logits.shape, np.float32)
    rows = np.arange(logits.shape[0])[:, None]
    probs[rows, np.asarray(cands.ids)] = np.asarray(jax.nn.softmax(cands.scores, axis=-1))
    return probs, bool(cands.exact)


def random_logits(seed: int, rows: int, vocab: int, scale: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((rows, vocab))).astype(np.float32)
    logits[0, rng.choice(vocab, vocab // 4, replace=False)] = -np.inf  # suppressed tokens
    logits[1, 3:] = -np.inf  # fewer finite tokens than k
    return logits


@pytest.mark.parametrize("truncation", SETTINGS, ids=str)
@pytest.mark.parametrize("seed", range(4))
def test_candidates_give_the_masks_distribution(truncation, seed):
    logits = random_logits(seed, 6, VOCAB, scale=2.0 if truncation.top_k else 4.0)
    probs, exact = candidate_probs(logits, truncation)
    want = masked_probs(logits, truncation)
    assert exact
    np.testing.assert_array_equal(probs > 0, want > 0)  # the same support
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)


def test_a_tie_with_the_kth_logit_outside_the_candidates_is_not_exact():
    logits = random_logits(0, 4, VOCAB)
    kth = np.sort(logits[2])[::-1][4]
    outside = np.flatnonzero(logits[2] < kth)[0]
    logits[2, outside] = kth  # `TopK` keeps 6 tokens in this row, the candidates hold 5
    truncation = Truncation(top_k=5, top_p=0.9)
    assert not candidate_probs(logits, truncation)[1]
    # Every other row alone is exact, and the draw follows the masks either way.
    assert candidate_probs(np.delete(logits, 2, axis=0), truncation)[1]
    check_draws(logits[2], truncation, seed=1)


def test_a_nucleus_wider_than_the_candidates_is_not_exact():
    flat = random_logits(3, 3, VOCAB, scale=0.1)  # near uniform: p=0.9 needs ~36 tokens
    truncation = Truncation(top_p=0.9, top_p_candidates=CAP)
    assert not candidate_probs(flat, truncation)[1]
    check_draws(flat[2], truncation, seed=2)


@pytest.mark.parametrize("truncation", SETTINGS, ids=str)
def test_draws_follow_the_masks_distribution(truncation):
    """Seeded: 20 000 draws from one row; every token's frequency within 5 sigma."""
    logits = random_logits(7, 3, VOCAB, scale=1.0 if truncation.top_k else 4.0)[2:]
    assert candidate_probs(logits, truncation)[1]  # the candidates' draw, not the fallback
    check_draws(logits[0], truncation, seed=3)


def check_draws(logits: np.ndarray, truncation: Truncation, seed: int, draws: int = 20_000) -> None:
    want = masked_probs(logits[None], truncation)[0]
    batch = jnp.tile(jnp.asarray(logits)[None], (draws, 1))
    choose = jax.jit(choose_tokens, static_argnums=2)
    tokens, logprobs = choose(batch, jax.random.key(seed), truncation)
    tokens = np.asarray(tokens)
    assert np.all(want[tokens] > 0)  # never outside the support
    np.testing.assert_allclose(np.asarray(logprobs), np.log(want[tokens]), rtol=1e-5, atol=1e-5)
    freq = np.bincount(tokens, minlength=logits.shape[-1]) / draws
    sigma = np.sqrt(want * (1 - want) / draws)
    assert np.all(np.abs(freq - want) <= 5 * sigma + 1e-4)


@pytest.mark.parametrize("truncation", SETTINGS, ids=str)
def test_greedy_is_the_argmax_with_the_masks_log_prob(truncation):
    logits = random_logits(11, 5, VOCAB)
    tokens, logprobs = choose_tokens(jnp.asarray(logits), None, truncation)
    np.testing.assert_array_equal(np.asarray(tokens), logits.argmax(-1))
    want = masked_probs(logits, truncation)[np.arange(5), logits.argmax(-1)]
    np.testing.assert_allclose(np.asarray(logprobs), np.log(want), rtol=1e-5, atol=1e-6)
    alone, none = choose_tokens(jnp.asarray(logits), None, truncation, with_logprob=False)
    assert none is None
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(tokens))


def _sorts_of_the_vocabulary(fn, logits) -> int:
    """Sort ops in the compiled program whose result holds a [rows, vocab] array."""
    text = jax.jit(fn).lower(logits).compile().as_text()
    shape = "f32[{},{}]".format(*logits.shape)
    return sum(shape in line.split(" sort(")[0] for line in text.splitlines() if " sort(" in line)


def test_top_k_sorts_no_vocabulary():
    logits = jnp.zeros((4, 8000))
    key = jax.random.key(0)
    top_k = Truncation(top_k=50)
    assert _sorts_of_the_vocabulary(lambda x: choose_tokens(x, key, top_k), logits) == 0
    # The same probe finds the sort XLA makes of the values-only top-k of the mask.
    assert _sorts_of_the_vocabulary(lambda x: TopK(50)(x, None), logits) == 1
