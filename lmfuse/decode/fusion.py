"""Decode-time fusion: log-linear combinations of DecodeSteps, with no retraining.

A fused DecodeStep scores the next token y_t as

    score(y_t) = log p_s2s(y_t | y_<t, x) + sum_i w_i * log p_i(y_t | y_<t) + r

over the terms i it was built with, where r is a per-token length reward:

    shallow fusion (Gulcehre et al. 2015, sec. 4.1):   one term, the target-domain LM, w = λ.
    density ratio (McDermott et al. 2019):              + λ1 log p_LM_target - λ2 log p_LM_source,
        where the "source" LM models the text of the seq2seq model's own training targets
        (the domain it was trained on), not the source language.
    ILME (Meng et al. 2021):                            - μ log p_ILM (+ λ log p_LM), where the
        internal LM is the seq2seq decoder run with its encoder context zeroed
        (`seq2seq_decode_step(model, zero_context=True)`; the Transformer zeroes each
        cross-attention output, the RNN its attention context vector).

Each term's distribution is normalised on its own (log_softmax, with PAD excluded as the
decoders exclude it) and the sum is NOT renormalised: beam search ranks hypotheses by the summed
score, as in the papers (`DecodeStep.log_scores`). Sampling draws from softmax(score), the
normalised product of experts. Subtracted terms and a positive reward can raise a hypothesis'
score as it grows, so such fused steps are marked non-monotone and beam search then runs to the
length limit instead of stopping early, and ranks finished hypotheses by the raw fused sum (which
holds r per token) instead of dividing it by the GNMT length penalty (`lmfuse.decode.beam`).

The weights live in the params pytree (`params['weights']`), so they are traced arrays: a λ
sweep reuses one compiled decoder. Parameters:

    {'s2s': s2s params, '<term name>': that model's params, ...,
     'weights': {'<term name>': w_i, 'length_reward': r}}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lmfuse.decode.step import DecodeStep
from lmfuse.tokens import PAD_ID

NEG_INF = -1.0e7  # finite, so a zero weight times a suppressed token stays 0, not NaN


def log_probs(logits: jax.Array) -> jax.Array:
    """log_softmax over every token but PAD (which no decoder emits); PAD gets NEG_INF."""
    logits = jnp.asarray(logits, jnp.float32).at[..., PAD_ID].set(-jnp.inf)
    return jnp.maximum(jax.nn.log_softmax(logits, axis=-1), NEG_INF)


@dataclasses.dataclass(frozen=True)
class _Combine:
    """The fused init/step: runs the base and every term, and sums the weighted scores."""

    base: DecodeStep
    terms: tuple[tuple[str, DecodeStep], ...]

    def combine(self, params, base_logits, term_logits):
        weights = params["weights"]
        scores = log_probs(base_logits)
        for (name, _), logits in zip(self.terms, term_logits, strict=True):
            scores = scores + jnp.asarray(weights[name], jnp.float32) * log_probs(logits)
        return scores + jnp.asarray(weights.get("length_reward", 0.0), jnp.float32)

    def init(self, params, batch, max_len: int):
        logits, state = self.base.init(params["s2s"], batch, max_len)
        term_logits, states = [], {"s2s": state}
        for name, decoder in self.terms:
            term_logit, states[name] = decoder.init(params[name], batch, max_len)
            term_logits.append(term_logit)
        return self.combine(params, logits, term_logits), states

    def step(self, params, state, tokens):
        logits, new_states = self.base.step(params["s2s"], state["s2s"], tokens)
        new_states = {"s2s": new_states}
        term_logits = []
        for name, decoder in self.terms:
            term_logit, new_states[name] = decoder.step(params[name], state[name], tokens)
            term_logits.append(term_logit)
        return self.combine(params, logits, term_logits), new_states


@dataclasses.dataclass(frozen=True)
class _Method:
    """A bound method of `_Combine` that compares by value (so equal fusions share jit caches)."""

    combine: _Combine
    name: str

    def __call__(self, *args):
        return getattr(self.combine, self.name)(*args)


def log_linear_fusion(
    s2s: DecodeStep, terms: dict[str, DecodeStep], monotone: bool
) -> DecodeStep:
    """score = log p_s2s + sum_i w_i log p_i + length_reward; see the module docstring."""
    if "s2s" in terms or "weights" in terms:
        raise ValueError("term names 's2s' and 'weights' are reserved")
    combine = _Combine(s2s, tuple(sorted(terms.items())))
    return DecodeStep(_Method(combine, "init"), _Method(combine, "step"), log_scores=True,
                      monotone=monotone)


def shallow_fusion(s2s: DecodeStep, lm: DecodeStep, monotone: bool = True) -> DecodeStep:
    """log p_s2s + λ log p_LM + r. Weights: {'lm': λ, 'length_reward': r}. Scores only fall
    while λ >= 0 and r <= 0 (then beam search may stop early); pass monotone=False otherwise."""
    return log_linear_fusion(s2s, {"lm": lm}, monotone=monotone)


def density_ratio(s2s: DecodeStep, target_lm: DecodeStep, source_lm: DecodeStep,
                  monotone: bool = False) -> DecodeStep:
    """log p_s2s + λ1 log p_LM_target - λ2 log p_LM_source + r. Weights: {'lm': λ1,
    'source_lm': -λ2, 'length_reward': r} (see `fusion_weights`). Non-monotone unless the
    caller knows λ2 = 0, λ1 >= 0 and r <= 0 (then it is shallow fusion, ranked as such)."""
    return log_linear_fusion(s2s, {"lm": target_lm, "source_lm": source_lm}, monotone=monotone)


def ilme(s2s: DecodeStep, internal_lm: DecodeStep, lm: DecodeStep | None = None,
         monotone: bool = False) -> DecodeStep:
    """log p_s2s - μ log p_ILM (+ λ log p_LM) + r. Weights: {'ilm': -μ, 'lm': λ,
    'length_reward': r}. Non-monotone unless the caller knows μ = 0, λ >= 0 and r <= 0."""
    terms = {"ilm": internal_lm}
    if lm is not None:
        terms["lm"] = lm
    return log_linear_fusion(s2s, terms, monotone=monotone)


def fusion_weights(
    lm_weight: float = 0.0,
    source_lm_weight: float | None = None,
    ilm_weight: float | None = None,
    length_reward: float = 0.0,
) -> dict[str, jax.Array]:
    """The `params['weights']` dict, as float32 arrays (traced: new values do not recompile).
    Subtracted terms are stored with their sign, so every method is one weighted sum."""
    weights = {"lm": lm_weight, "length_reward": length_reward}
    if source_lm_weight is not None:
        weights["source_lm"] = -source_lm_weight
    if ilm_weight is not None:
        weights["ilm"] = -ilm_weight
    return {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}


def fused_params(s2s_params: Any, weights: dict[str, jax.Array], **term_params: Any) -> dict:
    """Assembles the fused params pytree (term params may repeat the s2s params, e.g. ILME)."""
    return {"s2s": s2s_params, **term_params, "weights": weights}
