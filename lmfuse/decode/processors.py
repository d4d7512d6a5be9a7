"""Logit processors: composable pure functions `(logits [B, V], ctx) -> logits [B, V]`.

Samplers and beam search run a tuple of processors, in order, on the raw next-token logits
before choosing a token; decode-time fusion plugs in here as one more processor (it can read
its own model's state from `ctx`). Filtering processors set removed tokens to -inf.

Processors are frozen dataclasses, so a tuple of them is hashable and can be a static argument
of `jax.jit` (changing a setting recompiles; changing the PRNG key or the prompts does not).

`TopK`, `TopP` and `MinP` mask the whole vocabulary: they define what top-k, top-p and min-p
keep, but the sampler does not run them per step; it truncates candidate sets instead
(`lmfuse.decode.truncation`, which falls back to them only when a candidate set cannot hold the
exact result).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp


class DecodeContext(NamedTuple):
    """What a processor may look at besides the logits.

    step: index of the token being chosen (0-based, scalar int32).
    seen: bool [B, V], True for every token in the prompt or generated so far. Kept only when
        a processor of the chain sets `uses_seen = True` (else None): updating it is a scatter
        per step that no other processor needs.
    decode_state: the DecodeStep state (a fusion processor can keep its own model's state
        elsewhere; this is here for processors that need the main model's).
    generated: int32 [B, N], the tokens generated so far in columns [0, step) (prompt
        excluded; PAD after them); None where a caller has no buffer.
    """

    step: jax.Array
    seen: jax.Array | None
    decode_state: Any = None
    generated: jax.Array | None = None


Processor = Callable[[jax.Array, DecodeContext], jax.Array]


def apply_processors(processors: Sequence[Processor], logits: jax.Array, ctx: DecodeContext) -> jax.Array:
    """Runs `processors` left to right on float32 logits."""
    logits = jnp.asarray(logits, jnp.float32)
    for processor in processors:
        logits = processor(logits, ctx)
    return logits


@dataclasses.dataclass(frozen=True)
class RepetitionPenalty:
    """CTRL-style (Keskar et al. 2019): seen tokens' logits are divided by `penalty` when
    positive and multiplied by it when negative, so penalty > 1 always makes them less likely."""

    penalty: float
    uses_seen: ClassVar[bool] = True  # the decoders keep `DecodeContext.seen` for it

    def __call__(self, logits: jax.Array, ctx: DecodeContext) -> jax.Array:
        penalised = jnp.where(logits > 0, logits / self.penalty, logits * self.penalty)
        return jnp.where(ctx.seen, penalised, logits)


@dataclasses.dataclass(frozen=True)
class Temperature:
    temperature: float

    def __call__(self, logits: jax.Array, ctx: DecodeContext) -> jax.Array:
        return logits / self.temperature


@dataclasses.dataclass(frozen=True)
class TopK:
    """Keeps the k largest logits (ties with the k-th are kept too)."""

    k: int

    def __call__(self, logits: jax.Array, ctx: DecodeContext) -> jax.Array:
        k = min(self.k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][:, -1:]
        return jnp.where(logits < kth, -jnp.inf, logits)


@dataclasses.dataclass(frozen=True)
class TopP:
    """Nucleus sampling: keeps the smallest set of top tokens whose probability reaches p."""

    p: float

    def __call__(self, logits: jax.Array, ctx: DecodeContext) -> jax.Array:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # A token is kept if the tokens ranked above it hold less than p; the top one always is.
        kept = mass_before < self.p
        cutoff = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(logits < cutoff, -jnp.inf, logits)


@dataclasses.dataclass(frozen=True)
class MinP:
    """Keeps tokens whose probability is at least `p` times the most likely token's."""

    p: float

    def __call__(self, logits: jax.Array, ctx: DecodeContext) -> jax.Array:
        # p_i >= p * p_max  <=>  logit_i >= logit_max + log(p): no softmax needed.
        threshold = jnp.max(logits, axis=-1, keepdims=True) + jnp.log(self.p)
        return jnp.where(logits < threshold, -jnp.inf, logits)


def repeated_ngram_ban(
    scores: jax.Array, generated: jax.Array, step: jax.Array, n: int
) -> jax.Array:
    """`scores` [R, V] with -inf for every token t such that the last n-1 generated tokens of the
    row followed by t already occur among its generated tokens (`generated` [R, N], valid in
    columns [0, step)): the no_repeat_ngram_size rule of Hugging Face `generate`.

    Every earlier window of n-1 tokens is compared with the current suffix at once (O(N * n)
    work per step, vectorised over rows); the token after each matching window is banned.
    """
    rows, length = generated.shape
    windows = length - n + 1  # n-grams generated[:, j : j + n] for j < windows
    if n <= 0 or windows <= 0:
        return scores
    # Window j counts once its last token is generated (column j + n - 1 < step).
    match = jnp.broadcast_to((jnp.arange(windows) + n - 1 < step)[None, :], (rows, windows))
    if n > 1:
        # The n-1 latest tokens; before step n-1 the slice is clamped, but no window counts yet.
        suffix = jax.lax.dynamic_slice_in_dim(generated, step - (n - 1), n - 1, axis=1)
        for offset in range(n - 1):
            window = generated[:, offset : offset + windows]
            match = match & (window == suffix[:, offset : offset + 1])
    # Out-of-range ids (vocab) mark "no ban" and are dropped by the scatter.
    banned = jnp.where(match, generated[:, n - 1 : n - 1 + windows], scores.shape[-1])
    return scores.at[jnp.arange(rows)[:, None], banned].set(-jnp.inf, mode="drop")


@dataclasses.dataclass(frozen=True)
class NoRepeatNGram:
    """No n-gram occurs twice among the generated tokens (prompt excluded): see
    `repeated_ngram_ban`. Reads `DecodeContext.generated`."""

    n: int

    def __call__(self, logits: jax.Array, ctx: DecodeContext) -> jax.Array:
        return repeated_ngram_ban(logits, ctx.generated, ctx.step, self.n)


def shaping_processors(
    temperature: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    greedy: bool = False,
) -> tuple[Processor, ...]:
    """The chain before truncation (HF order): repetition penalty, n-gram ban, temperature.

    Settings that are no-ops are left out (and greedy drops temperature), so they cost nothing.
    """
    chain: list[Processor] = []
    if repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(float(repetition_penalty)))
    if no_repeat_ngram_size > 0:
        chain.append(NoRepeatNGram(int(no_repeat_ngram_size)))
    if not greedy and temperature != 1.0:
        chain.append(Temperature(float(temperature)))
    return tuple(chain)


def sampling_processors(
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    no_repeat_ngram_size: int = 0,
) -> tuple[Processor, ...]:
    """The whole chain as full-vocabulary masks (HF order): repetition penalty, n-gram ban,
    temperature, top-k, top-p, min-p. What `lmfuse.decode.sample` draws from, step by step;
    it computes the same distribution on candidate sets (`lmfuse.decode.truncation`).

    Settings that are no-ops are left out (and greedy drops temperature), so they cost nothing.
    """
    chain = list(shaping_processors(temperature, repetition_penalty, no_repeat_ngram_size, greedy))
    if top_k > 0:
        chain.append(TopK(int(top_k)))
    if top_p < 1.0:
        chain.append(TopP(float(top_p)))
    if min_p > 0.0:
        chain.append(MinP(float(min_p)))
    return tuple(chain)


@dataclasses.dataclass(frozen=True)
class SuppressTokens:
    """Never choose these ids (PAD by default in the samplers: it marks "after EOS")."""

    ids: tuple[int, ...]

    def __call__(self, logits: jax.Array, ctx: DecodeContext) -> jax.Array:
        return logits.at[:, jnp.asarray(self.ids, jnp.int32)].set(-jnp.inf)
