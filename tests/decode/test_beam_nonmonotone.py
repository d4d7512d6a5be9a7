"""Beam search with a non-monotone fused decoder (per-token scores that can be positive): the
n-best is ranked by the raw fused sum, i.e. sum + β·length with no GNMT division, and so
positive scores do not shorten the hypotheses, where the old rule (GNMT division whatever the
sign) does.

The old rule is the compiled beam itself called with the caller's alpha
(`beam._beam_search(..., alpha)`): what `beam_search` ran for these decoders before.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import random_models

from lmfuse.decode import DecodeStep, beam_search
from lmfuse.decode import beam as beam_module
from lmfuse.decode.fusion import density_ratio, fused_params, fusion_weights, ilme
from lmfuse.decode.processors import SuppressTokens
from lmfuse.tokens import BOS_ID, EOS_ID, PAD_ID

ALPHA = 0.6


def old_rule(decoder: DecodeStep, params, batch, beam_size: int, max_new_tokens: int,
             alpha: float = ALPHA, eos_id: int = EOS_ID) -> beam_module.BeamOutput:
    """Beam search as it was: GNMT division by ((5 + len) / 6) ** alpha for every decoder."""
    return beam_module._beam_search(
        decoder, (SuppressTokens((PAD_ID,)),), beam_size, max_new_tokens, alpha, 0, 0,
        params, batch, jnp.asarray(eos_id, jnp.int32),  # 0, 0: no n-gram ban, one cache phase
        jnp.full((batch["prompt"].shape[0],), max_new_tokens, jnp.int32))  # no per-row limits


def lengths(tokens: np.ndarray) -> np.ndarray:
    """Generated length up to and including EOS (the full width when there is none)."""
    tokens = np.asarray(tokens)
    return np.where((tokens == EOS_ID).any(-1), (tokens == EOS_ID).argmax(-1) + 1, tokens.shape[-1])


# --- Ranking: sum + β·length, exactly, on real (random) LMs and an exhaustive beam ----------

SMALL_VOCAB, SHORT = 5, 4  # PAD, EOS and 3 more tokens: 1 + 3 + 9 + 27 + 81 = 121 hypotheses


def random_lm(name: str, seed: int, vocab: int = SMALL_VOCAB):
    return random_models.random_lm(name, seed, vocab)


def every_hypothesis() -> np.ndarray:
    """All continuations of at most SHORT tokens that end at EOS or at the limit, PAD after EOS."""
    words = [t for t in range(SMALL_VOCAB) if t not in (PAD_ID, EOS_ID)]
    out = []
    for n in range(SHORT):  # n words, then EOS
        out += [[*w, EOS_ID] + [PAD_ID] * (SHORT - n - 1) for w in itertools.product(words, repeat=n)]
    out += [list(w) for w in itertools.product(words, repeat=SHORT)]
    return np.asarray(out, np.int32)


def fused_sums(decoder: DecodeStep, params, prompt: list[int], rows: np.ndarray) -> np.ndarray:
    """Sum of the decoder's per-token scores along each row (PAD after EOS not counted)."""
    batch = {"prompt": jnp.tile(jnp.asarray([prompt], jnp.int32), (len(rows), 1))}
    scores, state = jax.jit(decoder.init, static_argnums=2)(params, batch,
                                                            len(prompt) + rows.shape[1])
    step = jax.jit(decoder.step)
    total = np.zeros(len(rows))
    for column in np.asarray(rows).T:
        picked = np.take_along_axis(np.asarray(scores), column[:, None], axis=1)[:, 0]
        total += np.where(column != PAD_ID, picked, 0.0)
        scores, state = step(params, state, jnp.asarray(column))
    return total


@pytest.mark.parametrize("method", ["ilme", "density_ratio"])
def test_non_monotone_ranking_is_the_fused_sum_plus_length_reward(method):
    (base, p_base), (other, p_other), (third, p_third) = (
        random_lm("transformer", 1), random_lm("lstm", 2), random_lm("transformer", 3))
    beta = 0.8
    if method == "ilme":  # a subtracted internal LM: per-token scores of either sign
        decoder = ilme(base, other)
        weights = lambda b: fusion_weights(0.0, ilm_weight=0.9, length_reward=b)  # noqa: E731
        params = lambda b: fused_params(p_base, weights(b), ilm=p_other)  # noqa: E731
    else:
        decoder = density_ratio(base, other, third)
        weights = lambda b: fusion_weights(0.3, source_lm_weight=0.9, length_reward=b)  # noqa: E731
        params = lambda b: fused_params(p_base, weights(b), lm=p_other, source_lm=p_third)  # noqa: E731
    assert not decoder.monotone
    prompt = [BOS_ID, 3]
    rows = every_hypothesis()
    # The reference: every hypothesis' fused sum without the reward, plus β·length.
    want = fused_sums(decoder, params(0.0), prompt, rows) + beta * lengths(rows)
    assert (want > 0).any() and (want < 0).any()  # both signs occur: the case at issue
    order = np.argsort(-want, kind="stable")

    batch = {"prompt": jnp.asarray([prompt], jnp.int32)}
    out = beam_search(decoder, params(beta), batch, beam_size=len(rows), max_new_tokens=SHORT,
                      alpha=ALPHA)  # alpha is ignored for a non-monotone decoder
    assert bool(np.all(out.finished))
    np.testing.assert_allclose(np.asarray(out.scores[0]), want[order], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.scores), np.asarray(out.logprobs))  # raw sums
    gaps = np.diff(want[order]) < -1e-3  # the order is compared where it is not a near-tie
    np.testing.assert_array_equal(np.asarray(out.tokens[0])[1:][gaps], rows[order][1:][gaps])
    assert np.asarray(out.tokens[0, 0]).tolist() == rows[order[0]].tolist()

    # The old rule ranks the same hypotheses differently (so this test can fail).
    old = old_rule(decoder, params(beta), batch, len(rows), SHORT)
    lp = ((5.0 + lengths(rows)) / 6.0) ** ALPHA
    np.testing.assert_allclose(np.asarray(old.scores[0]), np.sort(want / lp)[::-1], atol=1e-4)
    assert np.asarray(old.tokens[0]).tolist() != np.asarray(out.tokens[0]).tolist()


def test_a_monotone_decoder_still_divides_by_the_gnmt_penalty():
    base, params = random_lm("transformer", 1)
    batch = {"prompt": jnp.asarray([[BOS_ID, 3]], jnp.int32)}
    out = beam_search(base, params, batch, beam_size=8, max_new_tokens=SHORT, alpha=ALPHA)
    lp = ((5.0 + lengths(np.asarray(out.tokens[0]))) / 6.0) ** ALPHA
    np.testing.assert_allclose(np.asarray(out.scores[0]), np.asarray(out.logprobs[0]) / lp,
                               rtol=1e-6)
    assert beam_module.ranking_alpha(base, ALPHA) == ALPHA
    assert beam_module.ranking_alpha(ilme(base, base), ALPHA) == 0.0


# --- Lengths: a translation model that knows each reference length, fused by ILME ----------
#
# Toy DecodeSteps (the fusion and the beam are the real ones). Vocabulary: PAD, EOS, BOS, two
# more specials, content tokens 5..63. At step t, before the reference length n, the
# translation model puts 0.88 on the content token c_t = 5 + t % 59 and 0.1 on EOS; from n on,
# 0.6 on EOS and 0.3 on c_t (the rest spread evenly). Its internal LM (no source) knows the
# content sequence but not the length: uniform at the first position (no prefix yet), then
# 0.88 on c_t and 0.05 on EOS at every step. ILME subtracts μ log p_ILM: with μ = 0.7 the
# first token and EOS score positive, so short hypotheses have positive sums.

TOY_VOCAB = 64
CONTENT = 5


def _spread(t: jax.Array, p_content: jax.Array, p_eos: jax.Array) -> jax.Array:
    """Log-probs [B, V]: p_content on c_t, p_eos on EOS, the rest evenly on the others (no PAD)."""
    rest = (1.0 - p_content - p_eos) / (TOY_VOCAB - 3)
    probs = jnp.broadcast_to(rest[:, None], (t.shape[0], TOY_VOCAB))
    probs = probs.at[:, EOS_ID].set(p_eos)
    probs = probs.at[jnp.arange(t.shape[0]), CONTENT + t % (TOY_VOCAB - CONTENT)].set(p_content)
    return jnp.log(probs.at[:, PAD_ID].set(1e-30))


def _model_scores(state):
    before = state["t"] < state["length"]
    return _spread(state["t"], jnp.where(before, 0.88, 0.3), jnp.where(before, 0.1, 0.6))


def _model_init(params, batch, max_len):
    state = {"t": jnp.zeros_like(batch["length"]), "length": batch["length"]}
    return _model_scores(state), state


def _model_step(params, state, tokens):
    state = {**state, "t": state["t"] + 1}
    return _model_scores(state), state


def _ilm_scores(t):
    rows = t.shape[0]
    informed = _spread(t, jnp.full((rows,), 0.88), jnp.full((rows,), 0.05))
    uniform = jnp.full((rows, TOY_VOCAB), -jnp.log(TOY_VOCAB - 1.0)).at[:, PAD_ID].set(-1e30)
    return jnp.where((t == 0)[:, None], uniform, informed)


def _ilm_init(params, batch, max_len):
    t = jnp.zeros_like(batch["length"])
    return _ilm_scores(t), {"t": t}


def _ilm_step(params, state, tokens):
    t = state["t"] + 1
    return _ilm_scores(t), {"t": t}


TOY_MODEL = DecodeStep(_model_init, _model_step)
TOY_ILM = DecodeStep(_ilm_init, _ilm_step)
REFERENCES = np.random.default_rng(0).integers(2, 15, 24)  # content tokens; + EOS
TOY_K, TOY_N = 4, 20


def toy_lengths(mu: float) -> dict[str, np.ndarray]:
    """Mean over the sample of hypothesis length / reference length (+ EOS), per decoding."""
    batch = {"prompt": jnp.full((len(REFERENCES), 1), BOS_ID, jnp.int32),
             "length": jnp.asarray(REFERENCES, jnp.int32)}
    fused = ilme(TOY_MODEL, TOY_ILM)
    params = fused_params({}, fusion_weights(0.0, ilm_weight=mu), ilm={})
    runs = {
        "none": beam_search(TOY_MODEL, {}, batch, beam_size=TOY_K, max_new_tokens=TOY_N,
                            alpha=ALPHA),
        "new": beam_search(fused, params, batch, beam_size=TOY_K, max_new_tokens=TOY_N,
                           alpha=ALPHA),
        "old": old_rule(fused, params, batch, TOY_K, TOY_N),
    }
    out = {name: lengths(np.asarray(r.tokens[:, 0])) / (REFERENCES + 1) for name, r in runs.items()}
    out["positive"] = np.asarray(runs["old"].logprobs[:, 0]) > 0
    return out


@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_positive_fused_scores_do_not_shorten_the_hypotheses(mu):
    ratios = toy_lengths(mu)
    # Plain decoding finds every reference length (the toy model knows it).
    np.testing.assert_array_equal(ratios["none"], 1.0)
    # The rule here: within 0.05 of none's mean length ratio, whatever the scores' sign.
    assert abs(ratios["new"].mean() - ratios["none"].mean()) <= 0.05
    if mu == 0.0:  # all scores <= 0: the old rule was right too
        assert not ratios["positive"].any()
        assert abs(ratios["old"].mean() - ratios["none"].mean()) <= 0.05
    else:  # positive sums: GNMT division shortens them (measured: mean ratio 0.52, not 1)
        assert ratios["positive"].all()
        assert ratios["old"].mean() <= ratios["none"].mean() - 0.3
        long_refs = REFERENCES >= 9  # each of these ends after one content token
        assert np.all(ratios["old"][long_refs] < 1.0)
