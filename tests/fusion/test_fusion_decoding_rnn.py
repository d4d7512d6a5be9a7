"""Cached decoding of every fused method on the s2s_rnn backbone equals its teacher-forced
logits, prompts of different lengths included (`tiny_fusion` has the check; the other backbone
has its own file, so each stays quick); and decode-time fusion runs on a fused model as on any
encoder-decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_fusion import (
    METHODS,
    T,
    assert_cached_decoding_matches_teacher_forcing,
    example_inputs,
    fused_model,
    jit,
    random_params,
)

from lmfuse.data.tokenizer import BOS_ID
from lmfuse.decode import lm_decode_step, seq2seq_decode_step
from lmfuse.decode.fusion import fused_params, fusion_weights, log_probs, shallow_fusion


@pytest.mark.parametrize("method", METHODS)
def test_cached_decoding_equals_teacher_forcing(method):
    assert_cached_decoding_matches_teacher_forcing("s2s_rnn", method)


def test_shallow_fusion_on_top_of_a_fused_model():
    """score = log p_fused + λ log p_LM, at the first step and the next, for a cold-fused
    model as the base and its own LM as the shallow-fusion term."""
    model = fused_model("cold", "s2s_rnn")
    params = random_params(model, seed=3)
    base, lm = seq2seq_decode_step(model), lm_decode_step(model.lm)
    decoder = shallow_fusion(base, lm)
    weights = fusion_weights(0.7, length_reward=0.1)
    source = example_inputs(3)[0]
    batch = {"inputs": source, "prompt": jnp.full((3, 1), BOS_ID, jnp.int32)}
    tokens = jnp.asarray([7, 8, 9], jnp.int32)

    @jit
    def run(params):
        both = fused_params(params, weights, lm=params["lm"])
        first, state = decoder.init(both, batch, T)
        second, _ = decoder.step(both, state, tokens)
        base_first, base_state = base.init(params, batch, T)
        lm_first, lm_state = lm.init(params["lm"], batch, T)
        base_second, _ = base.step(params, base_state, tokens)
        lm_second, _ = lm.step(params["lm"], lm_state, tokens)
        return (first, second), ((base_first, lm_first), (base_second, lm_second))

    scores, parts = run(params)
    for got, (fused_logits, lm_logits) in zip(scores, parts, strict=True):
        want = log_probs(fused_logits) + 0.7 * log_probs(lm_logits) + 0.1
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-5)
    assert jax.tree.leaves(scores)[0].shape == (3, model.cfg.vocab_size)
