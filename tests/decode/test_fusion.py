"""Decode-time fusion: exact reductions to the base model, the fused score itself, and weights
that change without recompiling.

The combinators accept any DecodeStep as the base, so two random LMs stand in for the
seq2seq model and the LM here; tests/fusion/ runs them on real encoder-decoders.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from lmfuse.data.tokenizer import BOS_ID, PAD_ID
from lmfuse.decode import beam as beam_module
from lmfuse.decode import beam_search, greedy, lm_decode_step
from lmfuse.decode.fusion import (
    density_ratio,
    fused_params,
    fusion_weights,
    ilme,
    log_probs,
    shallow_fusion,
)
from lmfuse.models import build_model, model_defaults

VOCAB = 40
N = 7


@functools.cache
def lm(seed: int, kind: str = "transformer"):
    c = model_defaults().to_dict()
    c.update(emb_dim=32, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32,
             dropout=0.0, name=kind, tie_embeddings=False)
    model = build_model(c, VOCAB)
    params = nn.meta.unbox(model.init(jax.random.key(seed), jnp.ones((1, 4), jnp.int32))["params"])
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim > 1 else x, params)  # peakier
    return lm_decode_step(model), params


def batch(rows: int = 3):
    rng = np.random.RandomState(0)
    prompt = np.full((rows, 3), PAD_ID, np.int32)
    for r in range(rows):
        n = 1 + r % 3
        prompt[r, :n] = [BOS_ID, *rng.randint(5, VOCAB, n - 1)]
    return {"prompt": jnp.asarray(prompt)}


def test_fused_score_is_the_weighted_sum_of_log_probs():
    (base, p_base), (other, p_lm) = lm(1), lm(2, "lstm")
    fused = shallow_fusion(base, other)
    params = fused_params(p_base, fusion_weights(0.4, length_reward=0.25), lm=p_lm)
    scores, _ = fused.init(params, batch(), 3 + N)
    want = (log_probs(base.init(p_base, batch(), 3 + N)[0])
            + 0.4 * log_probs(other.init(p_lm, batch(), 3 + N)[0]) + 0.25)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(want), rtol=1e-6, atol=1e-5)
    tokens = jnp.asarray([7, 8, 9], jnp.int32)
    _, state = fused.init(params, batch(), 3 + N)
    scores, _ = fused.step(params, state, tokens)
    _, s_base = base.init(p_base, batch(), 3 + N)
    _, s_lm = other.init(p_lm, batch(), 3 + N)
    want = (log_probs(base.step(p_base, s_base, tokens)[0])
            + 0.4 * log_probs(other.step(p_lm, s_lm, tokens)[0]) + 0.25)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(want), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_zero_weight_shallow_fusion_reproduces_the_base(beam_size):
    (base, p_base), (other, p_lm) = lm(1), lm(2)
    plain = beam_search(base, p_base, batch(), beam_size=beam_size, max_new_tokens=N)
    fused = beam_search(shallow_fusion(base, other),
                        fused_params(p_base, fusion_weights(0.0), lm=p_lm), batch(),
                        beam_size=beam_size, max_new_tokens=N)
    np.testing.assert_array_equal(np.asarray(fused.tokens), np.asarray(plain.tokens))
    np.testing.assert_allclose(np.asarray(fused.scores), np.asarray(plain.scores), atol=1e-5)


def test_density_ratio_with_one_lm_twice_reproduces_the_base():
    """Density ratio is non-monotone, so beam search ranks it by its raw fused sum (no GNMT
    division, `lmfuse.decode.beam`): with one LM twice it is the base ranked the same way."""
    (base, p_base), (other, p_lm) = lm(1), lm(2)
    plain = beam_search(base, p_base, batch(), beam_size=3, max_new_tokens=N, alpha=0.0)
    decoder = density_ratio(base, other, other)
    params = fused_params(p_base, fusion_weights(0.5, source_lm_weight=0.5), lm=p_lm,
                          source_lm=p_lm)
    fused = beam_search(decoder, params, batch(), beam_size=3, max_new_tokens=N)
    np.testing.assert_array_equal(np.asarray(fused.tokens), np.asarray(plain.tokens))
    np.testing.assert_allclose(np.asarray(fused.scores), np.asarray(plain.scores), atol=1e-4)


def test_ilme_subtracting_the_model_itself_with_weight_zero_is_the_base():
    (base, p_base), (other, p_lm) = lm(1), lm(2)
    plain = greedy(base, p_base, batch(), max_new_tokens=N)
    params = fused_params(p_base, fusion_weights(0.0, ilm_weight=0.0), ilm=p_base, lm=p_lm)
    fused = greedy(ilme(base, base, other), params, batch(), max_new_tokens=N)
    np.testing.assert_array_equal(np.asarray(fused.tokens), np.asarray(plain.tokens))


def test_greedy_fusion_picks_the_argmax_of_the_summed_scores():
    (base, p_base), (other, p_lm) = lm(1), lm(3)
    weights = fusion_weights(1.5)
    out = greedy(shallow_fusion(base, other), fused_params(p_base, weights, lm=p_lm), batch(),
                 max_new_tokens=N, eos_id=None)
    # Reference: a Python loop over the two models' own steps.
    s_logits, s_state = base.init(p_base, batch(), 3 + N)
    l_logits, l_state = other.init(p_lm, batch(), 3 + N)
    picked = []
    for _ in range(N):
        tok = jnp.argmax(log_probs(s_logits) + 1.5 * log_probs(l_logits), axis=-1).astype(jnp.int32)
        picked.append(np.asarray(tok))
        s_logits, s_state = base.step(p_base, s_state, tok)
        l_logits, l_state = other.step(p_lm, l_state, tok)
    np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), np.stack(picked, axis=1))
    assert not np.array_equal(  # the LM really changes the output
        np.asarray(out.tokens[:, 0]),
        np.asarray(greedy(base, p_base, batch(), max_new_tokens=N, eos_id=None).tokens[:, 0]))


def test_a_lambda_sweep_does_not_recompile():
    (base, p_base), (other, p_lm) = lm(1), lm(2)
    decoder = shallow_fusion(base, other)
    outputs = []
    before = None
    for weight in (0.0, 0.3, 0.9, 2.0):
        params = fused_params(p_base, fusion_weights(weight), lm=p_lm)
        outputs.append(np.asarray(beam_search(decoder, params, batch(), beam_size=2,
                                              max_new_tokens=N).tokens))
        if before is None:
            before = beam_module._beam_search._cache_size()
    assert beam_module._beam_search._cache_size() == before
    assert any(not np.array_equal(outputs[0], o) for o in outputs[1:])
