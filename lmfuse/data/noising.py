"""Self-supervised noising of token ids: BERT's masked LM and T5's span corruption.

Both functions take one example's 1-D int ids and a NumPy generator and are deterministic given
the generator's state, so Grain's `random_map` (one stream per example index and seed) gives
the same noise every time an example is read, and a resumed run sees exactly the same batches.

bert_mask (Devlin et al. 2019), ids [L] -> (inputs [L], labels [L]):

    ids     BOS  In   the  begin ning  God  cre  ated  EOS
    inputs  BOS  In   MASK begin ning  God  sea  ated  EOS      chosen: 'the', 'cre'
    labels  PAD  PAD  the  PAD   PAD   PAD  cre  PAD   PAD      (loss weights: labels > 0)

    Exactly max(1, round(mask_rate * n)) of the n non-special tokens are chosen (BERT's own
    data generator does the same; a fixed count, not a Bernoulli draw per token, so every
    example with a real token trains the model and short examples are not left out by chance).
    Each chosen token is independently replaced by MASK_ID with probability 0.8, by a random
    non-special id with probability 0.1 (which may by chance be the original id, as in BERT),
    or left unchanged with probability 0.1. Special ids are never chosen.

span_corrupt (Raffel et al. 2020, T5's objective), ids [L] -> (inputs, targets):

    ids      a b c d e f g h i j
    noise      - -         - - -        2 spans covering 5 tokens
    inputs   a S0 d e f g S1 EOS        each span -> one sentinel
    targets  S0 b c S1 h i j EOS        each sentinel, then the span it hides

    As in T5: round(noise_density * L) noise tokens (at least 1, at most L - 1) in
    round(noise_tokens / mean_span_length) spans (at least 1); noise and non-noise lengths are
    split uniformly at random, and the sequence alternates non-noise, noise, ..., starting with
    non-noise (so it ends with a noise span). Sequences shorter than 2 get no noise. Both
    outputs end in EOS, like the translate view, so the seq2seq pipeline can pad or pack them.

Sentinels: T5 reserves the last 100 ids of its vocabulary for them; this project's vocabularies
reserve none, so `sentinel_ids(vocab_size)` also takes the last ids (sentinel k is id
vocab_size - 1 - k) and they remain ordinary, rare SentencePiece pieces. In the ASV books of
Genesis and Exodus tokenized with the 8000-piece unigram model, 34 of 86,896 tokens (0.04%;
single characters such as 'x' and 'q') fall among the last 100 ids, so about 1% of verses hold
a token that looks like a sentinel. Training is unaffected; only a reader of the targets could
mistake it. For a collision-free set, train the tokenizer with extra `user_symbols`
(e.g. '<extra_id_0>'...) and pass their ids as `sentinel_ids` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from lmfuse.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID
from lmfuse.errors import LmfuseError

SPECIAL_IDS = (PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID)
NUM_SENTINELS = 100  # as T5

# Of the tokens chosen for prediction (BERT's split; the rest stay unchanged).
MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1


def bert_mask(
    ids: np.ndarray,
    rng: np.random.Generator,
    vocab_size: int,
    mask_rate: float = 0.15,
    special_ids: Sequence[int] = SPECIAL_IDS,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of one example: ids [L] -> (inputs [L], labels [L]); see the module doc.

    `labels` holds the original id where a token was chosen and PAD_ID elsewhere.
    """
    ids = np.asarray(ids)
    candidates = np.flatnonzero(~np.isin(ids, special_ids))
    count = _choose_count(len(candidates), mask_rate)
    chosen = rng.choice(candidates, size=count, replace=False)
    action = rng.random(count)
    to_mask = chosen[action < MASK_FRACTION]
    to_random = chosen[(action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)]

    inputs = ids.copy()
    inputs[to_mask] = MASK_ID
    if len(to_random):
        specials = np.asarray(special_ids)
        specials = np.unique(specials[(specials >= 0) & (specials < vocab_size)])
        draws = rng.integers(vocab_size - len(specials), size=len(to_random))
        inputs[to_random] = _kth_ordinary_id(draws, specials)
    labels = np.full_like(ids, PAD_ID)
    labels[chosen] = ids[chosen]
    return inputs, labels


def _kth_ordinary_id(k: np.ndarray, specials: np.ndarray) -> np.ndarray:
    """The k-th (0-based) id that is not in the sorted `specials`, without listing the vocab.

    specials[j] - j ordinary ids precede specials[j], so the k-th ordinary id is k plus the
    number of specials j with specials[j] - j <= k.
    """
    return k + np.searchsorted(specials - np.arange(len(specials)), k, side="right")


def _choose_count(num_candidates: int, rate: float) -> int:
    """round(rate * n), half up, but at least one token whenever there is one to choose."""
    if num_candidates == 0 or rate <= 0:
        return 0
    return min(num_candidates, max(1, int(np.floor(rate * num_candidates + 0.5))))


def sentinel_ids(vocab_size: int, count: int = NUM_SENTINELS) -> np.ndarray:
    """The T5-style sentinels: [vocab_size - 1, vocab_size - 2, ..., vocab_size - count]."""
    if not 0 < count <= vocab_size - len(SPECIAL_IDS):
        raise LmfuseError(
            f"cannot take {count} sentinel ids from a vocabulary of {vocab_size}; "
            "use fewer sentinels or a larger vocabulary"
        )
    return np.arange(vocab_size - 1, vocab_size - 1 - count, -1, dtype=np.int32)


def span_corrupt(
    ids: np.ndarray,
    rng: np.random.Generator,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    *,
    sentinel_ids: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one text (no BOS/EOS): ids [L] -> (inputs, targets), both ending
    in EOS; see the module doc. Raises LmfuseError if there are more spans than sentinels."""
    ids = np.asarray(ids)
    eos = np.asarray([EOS_ID], ids.dtype)
    if len(ids) < 2:
        return np.concatenate([ids, eos]), eos.copy()
    noise = _noise_mask(len(ids), noise_density, mean_span_length, rng)
    starts = noise & ~np.concatenate([[False], noise[:-1]])
    num_spans = int(starts.sum())
    if num_spans > len(sentinel_ids):
        raise LmfuseError(
            f"span corruption of {len(ids)} tokens needs {num_spans} sentinels but only "
            f"{len(sentinel_ids)} are given; shorten data.max_length or add sentinels"
        )
    sentinels = np.asarray(sentinel_ids, ids.dtype)[:num_spans]
    span_of = np.cumsum(starts) - 1  # index of the noise span each position is in

    # Inputs: a span's first token becomes its sentinel; the rest of the span is dropped.
    replaced = np.where(starts, sentinels[np.maximum(span_of, 0)], ids)
    inputs = replaced[~noise | starts]
    # Targets: the noise tokens, each span preceded by its sentinel.
    targets = np.insert(ids[noise], np.flatnonzero(starts[noise]), sentinels)
    return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


def _noise_mask(
    length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """bool [length]: T5's random_spans_noise_mask (non-noise first, then alternating)."""
    num_noise = min(max(int(np.round(length * noise_density)), 1), length - 1)
    num_spans = max(int(np.round(num_noise / mean_span_length)), 1)
    num_spans = min(num_spans, num_noise, length - num_noise)  # every span non-empty
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    clean_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([clean_lengths, noise_lengths], axis=1).reshape(-1)
    is_noise = np.tile([False, True], num_spans)
    return np.repeat(is_noise, interleaved)


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths [num_segments] (each >= 1) of a uniformly random split of num_items items."""
    cuts = np.sort(rng.choice(num_items - 1, size=num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [num_items]]))


class BertMasking(grain.transforms.RandomMap):
    """Grain transform for the masked LM: example[feature] ids -> {'inputs', 'targets'}.

    `targets` are bert_mask's labels (PAD where nothing is predicted), same length as
    `inputs`, so packing keeps them aligned. Specials in the ids (e.g. the lm view's leading
    BOS) stay in place as context and are never chosen.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_rate: float = 0.15,
        special_ids: Sequence[int] = SPECIAL_IDS,
        feature: str = "inputs",
    ):
        self._vocab_size, self._mask_rate = vocab_size, mask_rate
        self._special_ids, self._feature = tuple(special_ids), feature

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        ids = np.asarray(example[self._feature], np.int32)
        inputs, labels = bert_mask(ids, rng, self._vocab_size, self._mask_rate, self._special_ids)
        return {"inputs": inputs, "targets": labels}


class SpanCorruption(grain.transforms.RandomMap):
    """Grain transform for T5 pre-training: example[feature] ids -> seq2seq {'inputs', 'targets'}.

    PAD, BOS and EOS are removed from the ids first (tokenized text never contains them), so
    either view's feature can be fed: the lm view's `[BOS] text` or a translate `source [EOS]`.
    Both outputs end in EOS and are at most one token longer than the text.
    """

    def __init__(
        self,
        sentinel_ids: Sequence[int],
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
        feature: str = "inputs",
    ):
        self._sentinel_ids = np.asarray(sentinel_ids, np.int32)
        self._noise_density, self._mean_span_length = noise_density, mean_span_length
        self._feature = feature

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        ids = np.asarray(example[self._feature], np.int32)
        text = ids[~np.isin(ids, (PAD_ID, BOS_ID, EOS_ID))]
        inputs, targets = span_corrupt(
            text,
            rng,
            self._noise_density,
            self._mean_span_length,
            sentinel_ids=self._sentinel_ids,
        )
        return {"inputs": inputs, "targets": targets}
