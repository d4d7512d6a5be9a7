"""N-best rescoring: λ = β = 0 keeps the beam's own ranking exactly; the LM's sequence
log-probabilities are what the LM's own beam search accumulated; a positive weight re-ranks
by the documented score and never changes which hypotheses are in the list."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import random_models

from lmfuse.decode import beam_search
from lmfuse.decode.beam import length_penalty
from lmfuse.decode.rescoring import rescore, sequence_log_probs
from lmfuse.tokens import BOS_ID, PAD_ID

VOCAB, K, N, ALPHA = 23, 4, 7, 0.6


def random_lm(name: str, seed: int):
    return random_models.random_lm(name, seed, VOCAB, scale=0.8)


@pytest.fixture(scope="module")
def beams():
    """A beam search of one LM (the 'seq2seq' side here), three prompts."""
    step, params = random_lm("transformer", seed=1)
    prompt = jnp.asarray([[BOS_ID, 5], [BOS_ID, 9], [BOS_ID, 11]], jnp.int32)
    out = beam_search(step, params, {"prompt": prompt}, beam_size=K, max_new_tokens=N, alpha=ALPHA)
    return step, params, prompt, out


def test_zero_weights_keep_the_beams_own_scores_and_order(beams):
    _, _, prompt, out = beams
    other, other_params = random_lm("lstm", seed=2)
    lm = sequence_log_probs(other, other_params, prompt, out.tokens)
    same = rescore(out, lm, lm_weight=0.0, length_reward=0.0, alpha=ALPHA)
    np.testing.assert_array_equal(np.asarray(same.tokens), np.asarray(out.tokens))
    np.testing.assert_array_equal(np.asarray(same.scores), np.asarray(out.scores))


def test_an_lm_scores_its_own_beam_as_the_beam_did(beams):
    """Summed log-probs of each finished hypothesis under the LM that produced it equal the
    beam's own accumulated log-probs (PAD excluded in both)."""
    step, params, prompt, out = beams
    lm = np.asarray(sequence_log_probs(step, params, prompt, out.tokens))
    finished = np.asarray(out.finished)
    assert finished.all()
    np.testing.assert_allclose(lm, np.asarray(out.logprobs), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("lm_weight, length_reward", [(0.5, 0.0), (1.0, 0.3), (0.3, -0.2)])
def test_weights_rerank_by_the_documented_score(beams, lm_weight, length_reward):
    _, _, prompt, out = beams
    other, other_params = random_lm("lstm", seed=2)
    lm = np.asarray(sequence_log_probs(other, other_params, prompt, out.tokens), np.float64)
    got = rescore(out, jnp.asarray(lm, jnp.float32), lm_weight, length_reward, ALPHA)
    lengths = (np.asarray(out.tokens) != PAD_ID).sum(-1)
    want = ((np.asarray(out.logprobs, np.float64) + lm_weight * lm)
            / np.asarray(length_penalty(lengths.astype(np.float64), ALPHA)) + length_reward * lengths)
    for row in range(want.shape[0]):
        order = np.argsort(-want[row], kind="stable")
        np.testing.assert_allclose(np.asarray(got.scores[row]), want[row][order], rtol=1e-5)
        # The same hypotheses, re-ordered.
        assert sorted(map(tuple, np.asarray(got.tokens[row]).tolist())) == sorted(
            map(tuple, np.asarray(out.tokens[row]).tolist()))
        assert (np.diff(np.asarray(got.scores[row])) <= 0).all()
