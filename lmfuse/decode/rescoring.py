"""N-best rescoring with an LM: the classic baseline that fusion papers compare against
(e.g. Toshniwal et al. 2018). Beam search runs with the seq2seq model alone; its K finished
hypotheses y are then re-ranked by

    score(y) = (log p_s2s(y | x) + λ log p_LM(y)) / lp(|y|) + β |y|

where lp is the beam's own GNMT length penalty ((5 + |y|) / 6) ** α and |y| counts the
generated tokens up to and including EOS. With λ = β = 0 the score is exactly the beam's own
(`BeamOutput.scores`), so rescoring keeps the beam's ranking; the LM never changes which
hypotheses are in the list, only their order.

    beams = beam_search(s2s_step, s2s_params, batch, beam_size=8, max_new_tokens=64, alpha=0.6)
    lm_logprobs = sequence_log_probs(lm_step, lm_params, batch['prompt'], beams.tokens)
    best = rescore(beams, lm_logprobs, lm_weight=0.3, length_reward=0.0, alpha=0.6)

The division by lp is sign-safe here (unlike for a non-monotone fused beam, `lmfuse.decode.beam`):
the beam is the plain model's (monotone: its scores are log-probs, <= 0) and the LM term is
λ log p_LM <= 0 for the λ >= 0 a study sweeps, so every divided sum is <= 0 and α only ever
favours longer hypotheses; β is additive, sign-invariant. A λ < 0 would make the divided LM
term positive (then α shortens); rescore only beams of a monotone decoder, with λ >= 0.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from lmfuse.decode.beam import NEG_INF, BeamOutput, length_penalty
from lmfuse.decode.fusion import log_probs
from lmfuse.decode.step import DecodeStep
from lmfuse.tokens import PAD_ID


@functools.partial(jax.jit, static_argnums=0)
def sequence_log_probs(lm: DecodeStep, params: Any, prompt: jax.Array, tokens: jax.Array
                       ) -> jax.Array:
    """log p_LM of each hypothesis: prompt [B, P] (usually [[BOS]]), tokens [B, K, N] (PAD
    after EOS) -> [B, K] float32, the sum over the real tokens of log_softmax (PAD excluded,
    as the decoders exclude it). One prefill of the prompt per hypothesis, then one step per
    token, all in one compiled program."""
    b, k, n = tokens.shape
    rows = tokens.reshape(b * k, n)
    logits, state = lm.init(params, {"prompt": jnp.repeat(prompt, k, axis=0)}, prompt.shape[1] + n)

    def step(carry, token):
        logits, state, total = carry
        picked = jnp.take_along_axis(log_probs(logits), token[:, None], axis=-1)[:, 0]
        total = total + jnp.where(token != PAD_ID, picked, 0.0)
        logits, state = lm.step(params, state, token)
        return (logits, state, total), None

    init = (logits, state, jnp.zeros((b * k,), jnp.float32))
    (_, _, total), _ = jax.lax.scan(step, init, rows.T)
    return total.reshape(b, k)


def rescore(beams: BeamOutput, lm_logprobs: jax.Array, lm_weight: float | jax.Array,
            length_reward: float | jax.Array, alpha: float) -> BeamOutput:
    """`beams` re-ranked by the module docstring's score, best first; unfinished slots stay
    last. `scores` become the rescored values; tokens, logprobs and flags follow their
    hypothesis."""
    lengths = jnp.sum(beams.tokens != PAD_ID, axis=-1).astype(jnp.float32)
    # The beam's own score is log p_s2s / lp already: adding to it (rather than recomputing
    # it) keeps λ = β = 0 bit-identical to the beam's ranking.
    scores = (beams.scores + lm_weight * lm_logprobs / length_penalty(lengths, alpha)
              + length_reward * lengths)
    scores = jnp.where(beams.finished, scores, NEG_INF)
    order = jnp.argsort(-scores, axis=1, stable=True)

    def pick(x: jax.Array) -> jax.Array:
        index = order.reshape(*order.shape, *([1] * (x.ndim - 2)))
        return jnp.take_along_axis(x, index, axis=1)

    return BeamOutput(pick(beams.tokens), pick(scores), pick(beams.logprobs),
                      pick(beams.finished))


@dataclasses.dataclass(frozen=True)
class Rescorer:
    """An LM and its weights, applied to each n-best list: `rescorer(prompt, beams, alpha)`."""

    lm: DecodeStep
    params: Any
    lm_weight: float
    length_reward: float = 0.0

    def __call__(self, prompt: jax.Array, beams: BeamOutput, alpha: float) -> BeamOutput:
        lm_logprobs = sequence_log_probs(self.lm, self.params, prompt, beams.tokens)
        return rescore(beams, lm_logprobs, self.lm_weight, self.length_reward, alpha)
