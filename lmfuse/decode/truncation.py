"""Choosing the next token under top-k, top-p and min-p without sorting the vocabulary.

The distribution is the one of the full-vocabulary masks `TopK`, `TopP` and `MinP`
(`lmfuse.decode.processors`), applied in that order: the same support, the same probabilities.
It is computed on a candidate set instead: `lax.top_k` returns the C best logits already sorted,
with their ids; top-p and min-p cut that sorted list, the token is drawn among the C candidates
(`jax.random.categorical` on C logits) and its id gathered. Per step this costs a partial sort of
C entries and C random numbers instead of a sort of V entries (XLA:CPU turns a top-k whose
k-th value is compared with the whole vocabulary, as a mask does, into a full sort) and V
random numbers.

The candidate set:

* top-k (0 < k < V): the k best. Ties with the k-th logit outside the set, which the mask keeps,
  are checked for.
* top-p without top-k: the `TOP_P_CANDIDATES` (256) best, normalised over the whole
  vocabulary. They hold the nucleus whenever it closes within them (a confident model); a flat
  distribution (random weights) needs the full sort, the only other way to find the nucleus.
* min-p alone: none; its threshold (the best logit + log p) needs no sort, so it masks the
  vocabulary and draws over it, as does plain temperature sampling.

When a candidate set cannot hold the exact result (a tie with its boundary outside it, a
nucleus that does not close within it) for any row, that step runs the full-vocabulary masks
instead, for the whole batch (`lax.cond`: only the branch taken runs). Greedy decoding takes the
argmax of the whole vocabulary, which no truncation changes, and uses the candidates only for
the returned log-prob.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lmfuse.decode import topk
from lmfuse.decode.processors import MinP, TopK, TopP

# Candidates for top-p without top-k: a partial sort of 256 of 8000 logits took about an eighth
# of the full sort's time on a 2-core CPU (batch 32), and holds all but flat nuclei.
TOP_P_CANDIDATES = 256


@dataclasses.dataclass(frozen=True)
class Truncation:
    """top_k (0: off), top_p (1: off), min_p (0: off); frozen, so a static jit argument.
    `top_p_candidates`: the candidate set of top-p without top-k."""

    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    top_p_candidates: int = TOP_P_CANDIDATES

    def candidates(self, vocab: int) -> int:
        """Size of the candidate set for a vocabulary of `vocab` (0: none; see the module)."""
        if 0 < self.top_k < vocab:
            return self.top_k
        if self.top_p < 1.0:
            return min(self.top_p_candidates, vocab)
        return 0

    def masks(self, vocab: int) -> tuple:
        """The same truncation as full-vocabulary masks: what the candidates must reproduce."""
        chain = []
        if 0 < self.top_k < vocab:
            chain.append(TopK(self.top_k))
        if self.top_p < 1.0:
            chain.append(TopP(self.top_p))
        if self.min_p > 0.0:
            chain.append(MinP(self.min_p))
        return tuple(chain)


class Candidates(NamedTuple):
    """scores [B, C]: the candidates' logits, -inf where truncation cut them, best first;
    ids [B, C] int32: their token ids; exact (scalar bool): for every row, the candidates hold
    exactly the tokens the full-vocabulary masks keep (else the masks must run); bound [B, 1]:
    the k-th logit (top-k), where the masks would cut."""

    scores: jax.Array
    ids: jax.Array
    exact: jax.Array
    bound: jax.Array


def truncate(logits: jax.Array, truncation: Truncation) -> Candidates:
    """Top-k, top-p, min-p of `logits` [B, V] on a candidate set (`truncation.candidates(V)`
    must be > 0)."""
    vocab = logits.shape[-1]
    # Best first, equal logits by lower id. The barrier keeps XLA from rewriting the top-k as a
    # full sort of the vocabulary, which it does when the k-th logit is compared with `logits`.
    values, ids = jax.lax.optimization_barrier(topk.top_k(logits, truncation.candidates(vocab)))
    scores = values
    closed = True
    top_k = 0 < truncation.top_k < vocab
    # Top-k: a logit outside equal to the k-th would be kept by `TopK` (and would change the
    # mass top-p sees), so the k-th is the bound whatever top-p and min-p cut afterwards.
    bound = values[:, -1:] if top_k else None
    if truncation.top_p < 1.0:
        # As `TopP`'s softmax, normalised over the k kept tokens, else over the vocabulary.
        best = values[:, :1]
        total = jnp.sum(jnp.exp((values if top_k else logits) - best), axis=-1, keepdims=True)
        probs = jnp.exp(values - best) / total
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # A token stays if those ranked above it hold less than p; the top one always does.
        kept = mass_before < truncation.top_p
        cutoff = jnp.min(jnp.where(kept, values, jnp.inf), axis=-1, keepdims=True)
        scores = jnp.where(values < cutoff, -jnp.inf, scores)
        if not top_k:
            bound = cutoff
            # A candidate left out, or every finite logit a candidate: the nucleus is whole.
            closed = jnp.any(~kept, axis=-1) | (values[:, -1] == -jnp.inf)
    if truncation.min_p > 0.0:
        # As `MinP`: logit >= best logit + log p (the best is the first candidate).
        threshold = values[:, :1] + jnp.log(truncation.min_p)
        scores = jnp.where(scores < threshold, -jnp.inf, scores)

    # Exact when no finite logit outside the candidates reaches the bound (and a nucleus
    # closed within them); with every token a candidate nothing lies outside.
    def reaching(x):
        return jnp.sum((x >= bound) & (x > -jnp.inf), axis=-1)

    exact = jnp.all((reaching(logits) == reaching(values)) & closed) if values.shape[-1] < vocab \
        else jnp.asarray(True)
    return Candidates(scores, ids.astype(jnp.int32), exact, bound)


def choose_tokens(
    logits: jax.Array, key: jax.Array | None, truncation: Truncation, with_logprob: bool = True
) -> tuple[jax.Array, jax.Array | None]:
    """(tokens [B] int32, their log-probs [B] under the truncated distribution, or None).

    `logits` [B, V] are the processed float32 logits; `key` None means greedy (argmax).
    """
    vocab = logits.shape[-1]
    greedy = key is None
    if greedy and not with_logprob:  # truncation always keeps the best token
        return _on_vocabulary(logits, key, (), with_logprob)
    if not truncation.candidates(vocab):
        return _on_vocabulary(logits, key, truncation.masks(vocab), with_logprob)

    cands = truncate(logits, truncation)
    log_probs = jax.nn.log_softmax(cands.scores, axis=-1)
    if greedy:  # the argmax is the first candidate (or ties with it: the same log-prob)
        picked = (jnp.argmax(logits, axis=-1).astype(jnp.int32), log_probs[:, 0])
    else:
        pick = jax.random.categorical(key, cands.scores, axis=-1)[:, None]
        logprob = jnp.take_along_axis(log_probs, pick, axis=-1)[:, 0] if with_logprob else None
        picked = (jnp.take_along_axis(cands.ids, pick, axis=-1)[:, 0], logprob)
    if truncation.candidates(vocab) == vocab:
        return picked
    masks = truncation.masks(vocab)
    if 0 < truncation.top_k < vocab:  # `TopK` with the k-th logit already known: no sort
        masks = (_Floor(cands.bound),) + masks[1:]
    return jax.lax.cond(cands.exact, lambda: picked,
                        lambda: _on_vocabulary(logits, key, masks, with_logprob))


@dataclasses.dataclass(frozen=True)
class _Floor:
    """Masks logits below `floor` [B, 1] (`TopK` given its k-th logit)."""

    floor: jax.Array

    def __call__(self, logits: jax.Array, ctx: None) -> jax.Array:
        return jnp.where(logits < self.floor, -jnp.inf, logits)


def _on_vocabulary(logits, key, masks, with_logprob):
    """The full-vocabulary masks, then an argmax (key None) or a draw over every token."""
    for mask in masks:
        logits = mask(logits, None)
    if key is None:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        tok = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    if not with_logprob:
        return tok, None
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return tok, jnp.take_along_axis(log_probs, tok[:, None], axis=-1)[:, 0]
