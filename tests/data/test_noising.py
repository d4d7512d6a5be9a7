"""Noising: BERT masking statistics (15%, 80/10/10), T5 span corruption round-trips, resume."""

import math

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.data import noising
from lmfuse.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID
from lmfuse.errors import LmfuseError

VOCAB = 8000
SENTINELS = noising.sentinel_ids(VOCAB)
MANY_SENTINELS = noising.sentinel_ids(VOCAB, 400)  # enough for any test's span count
TEXT_IDS = (100, VOCAB - len(MANY_SENTINELS))  # ordinary ids that are never sentinels


def document(rng, length):
    """[BOS] text [EOS] PAD..., with a few UNK / MASK ids inside the text (all special)."""
    text = rng.integers(*TEXT_IDS, size=length)
    text[rng.random(length) < 0.02] = UNK_ID
    text[rng.random(length) < 0.01] = MASK_ID
    return np.concatenate([[BOS_ID], text, [EOS_ID], np.zeros(rng.integers(0, 4))]).astype(np.int32)


def expected_count(ids, rate=0.15):
    n = int((~np.isin(ids, noising.SPECIAL_IDS)).sum())
    return 0 if n == 0 or rate == 0 else min(n, max(1, math.floor(rate * n + 0.5)))


def within_3_sigma(successes, trials, p):
    sigma = math.sqrt(p * (1 - p) / trials)
    return abs(successes / trials - p) <= 3 * sigma


@pytest.fixture(scope="module")
def masked_corpus():
    """~200k ids in 2000 documents of 20..180 text tokens, each masked with its own seed."""
    data_rng = np.random.default_rng(0)
    docs = [document(data_rng, int(data_rng.integers(20, 181))) for _ in range(2000)]
    masked = [noising.bert_mask(d, np.random.default_rng(i), VOCAB) for i, d in enumerate(docs)]
    return docs, masked


def test_bert_mask_chooses_15_percent_of_ordinary_tokens(masked_corpus):
    docs, masked = masked_corpus
    total_ids = sum(len(d) for d in docs)
    assert total_ids > 190_000
    chosen = candidates = 0
    for ids, (_, labels) in zip(docs, masked, strict=True):
        n_chosen = int((labels != PAD_ID).sum())
        assert n_chosen == expected_count(ids)  # a fixed count per example, not a coin flip
        chosen += n_chosen
        candidates += int((~np.isin(ids, noising.SPECIAL_IDS)).sum())
    assert within_3_sigma(chosen, candidates, 0.15)


def test_bert_mask_80_10_10_split(masked_corpus):
    docs, masked = masked_corpus
    to_mask = to_random = unchanged = 0
    for ids, (inputs, labels) in zip(docs, masked, strict=True):
        chosen = labels != PAD_ID
        to_mask += int((inputs[chosen] == MASK_ID).sum())
        unchanged += int((inputs[chosen] == ids[chosen]).sum())
        to_random += int(((inputs[chosen] != MASK_ID) & (inputs[chosen] != ids[chosen])).sum())
    total = to_mask + to_random + unchanged
    # A random replacement equals the original id with chance 1/(ordinary ids), as in BERT.
    hit = 0.1 / (VOCAB - len(noising.SPECIAL_IDS))
    assert within_3_sigma(to_mask, total, 0.8)
    assert within_3_sigma(to_random, total, 0.1 - hit)
    assert within_3_sigma(unchanged, total, 0.1 + hit)


def test_bert_mask_labels_and_specials(masked_corpus):
    docs, masked = masked_corpus
    for ids, (inputs, labels) in zip(docs, masked, strict=True):
        special = np.isin(ids, noising.SPECIAL_IDS)
        chosen = labels != PAD_ID
        assert not np.any(chosen & special)  # specials never chosen ...
        np.testing.assert_array_equal(inputs[special], ids[special])  # ... nor changed
        np.testing.assert_array_equal(labels[chosen], ids[chosen])  # labels are the originals
        assert np.all(inputs[~chosen] == ids[~chosen])  # nothing else changes
        replaced = chosen & (inputs != MASK_ID) & (inputs != ids)
        assert not np.any(np.isin(inputs[replaced], noising.SPECIAL_IDS))
        assert np.all((inputs >= 0) & (inputs < VOCAB))
        assert inputs.dtype == labels.dtype == ids.dtype


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(0, 60),
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.0, 0.05, 0.15, 0.5, 1.0]),
)
def test_bert_mask_invariants_any_length_and_rate(length, seed, rate):
    ids = document(np.random.default_rng(seed), length)
    inputs, labels = noising.bert_mask(ids, np.random.default_rng(seed), VOCAB, mask_rate=rate)
    assert int((labels != PAD_ID).sum()) == expected_count(ids, rate)
    np.testing.assert_array_equal(np.where(labels != PAD_ID, labels, ids), ids)
    np.testing.assert_array_equal(inputs[labels == PAD_ID], ids[labels == PAD_ID])


def test_bert_mask_is_deterministic_given_the_generator():
    ids = document(np.random.default_rng(1), 500)
    first = noising.bert_mask(ids, np.random.default_rng(42), VOCAB)
    again = noising.bert_mask(ids, np.random.default_rng(42), VOCAB)
    other = noising.bert_mask(ids, np.random.default_rng(43), VOCAB)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


def test_bert_mask_random_ids_cover_exactly_the_non_special_ids():
    special = (*noising.SPECIAL_IDS, 7, 9, 10, 20, 24)
    ordinary = set(range(25)) - set(special)
    ids = np.asarray(sorted(ordinary), np.int32).repeat(400)
    inputs, labels = noising.bert_mask(
        ids, np.random.default_rng(0), vocab_size=25, mask_rate=0.5, special_ids=special
    )
    assert int((labels != PAD_ID).sum()) == len(ids) // 2
    randomised = (labels != PAD_ID) & (inputs != MASK_ID) & (inputs != ids)
    assert set(inputs[randomised].tolist()) == ordinary  # ~280 draws over 15 ids: all appear


def uncorrupt(inputs, targets):
    """Reference inverse: put each span listed in the targets back at its sentinel."""
    assert inputs[-1] == EOS_ID and targets[-1] == EOS_ID
    inputs, targets = list(inputs[:-1]), list(targets[:-1])
    spans, current = {}, None
    for t in targets:
        if t in SENTINEL_SET:
            current = spans.setdefault(int(t), [])
        else:
            current.append(int(t))
    out = []
    for t in inputs:
        out.extend(spans.pop(int(t)) if t in SENTINEL_SET else [int(t)])
    assert not spans, "every span in the targets has its sentinel in the inputs"
    return out


SENTINEL_SET = set(MANY_SENTINELS.tolist())


def t5_counts(length, density, mean_span):
    """T5's noise token and span counts for a sequence of `length` >= 2."""
    noise = min(max(int(np.round(length * density)), 1), length - 1)
    spans = min(max(int(np.round(noise / mean_span)), 1), noise, length - noise)
    return noise, spans


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(0, 300),
    seed=st.integers(0, 2**32 - 1),
    density=st.sampled_from([0.05, 0.15, 0.3, 0.5]),
    mean_span=st.sampled_from([1.0, 2.0, 3.0, 5.0]),
)
def test_span_corruption_round_trips(length, seed, density, mean_span):
    ids = np.random.default_rng(seed).integers(*TEXT_IDS, size=length).astype(np.int32)
    inputs, targets = noising.span_corrupt(
        ids, np.random.default_rng(seed), density, mean_span, sentinel_ids=MANY_SENTINELS
    )
    assert inputs.dtype == targets.dtype == np.int32
    assert uncorrupt(inputs, targets) == ids.tolist()
    used = [t for t in inputs if t in SENTINEL_SET]
    assert used == MANY_SENTINELS[: len(used)].tolist()  # sentinels in order: S0, S1, ...
    assert [t for t in targets if t in SENTINEL_SET] == used
    if length < 2:
        assert not used
        return
    noise, spans = t5_counts(length, density, mean_span)
    assert len(used) == spans
    assert len(targets) - 1 - spans == noise
    assert inputs[0] == ids[0] and inputs[-2] == used[-1]  # clean first, noisy last (as T5)
    assert targets[0] == SENTINELS[0]


def test_span_corruption_density_and_span_length_on_average():
    rng = np.random.default_rng(0)
    noise = total = 0
    span_lengths = []
    for seed in range(1000):
        ids = rng.integers(*TEXT_IDS, size=int(rng.integers(20, 300))).astype(np.int32)
        _, targets = noising.span_corrupt(ids, np.random.default_rng(seed), sentinel_ids=SENTINELS)
        body = targets[:-1]
        starts = np.flatnonzero(np.isin(body, SENTINELS))
        span_lengths.extend(np.diff(np.append(starts, len(body))) - 1)
        noise += len(body) - len(starts)
        total += len(ids)
    assert abs(noise / total - 0.15) < 0.005
    assert min(span_lengths) >= 1
    assert abs(np.mean(span_lengths) - 3.0) < 0.15


def test_span_corruption_needs_enough_sentinels():
    ids = np.arange(100, 400, dtype=np.int32)  # 45 noise tokens in 15 spans
    with pytest.raises(LmfuseError, match="needs 15 sentinels but only 10"):
        noising.span_corrupt(ids, np.random.default_rng(0), sentinel_ids=SENTINELS[:10])


def test_sentinel_ids_are_the_last_ids_descending():
    np.testing.assert_array_equal(noising.sentinel_ids(1000, 3), [999, 998, 997])
    assert len(SENTINELS) == 100 and SENTINELS[0] == VOCAB - 1 and SENTINELS[-1] == VOCAB - 100
    with pytest.raises(LmfuseError, match="cannot take 100 sentinel ids"):
        noising.sentinel_ids(100)


def lm_view_examples(n=40):
    """What the lm view's tokenizer stage yields: inputs [BOS] text, targets text [EOS]."""
    rng = np.random.default_rng(5)
    out = []
    for _ in range(n):
        text = rng.integers(*TEXT_IDS, size=int(rng.integers(1, 60))).astype(np.int32)
        out.append({"inputs": np.append(BOS_ID, text), "targets": np.append(text, EOS_ID)})
    return out


def assert_same_examples(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("transform", ["bert", "span"])
def test_grain_transforms_are_deterministic_and_resume_exactly(transform):
    examples = lm_view_examples()
    make = {
        "bert": lambda: noising.BertMasking(VOCAB),
        "span": lambda: noising.SpanCorruption(SENTINELS),
    }[transform]
    dataset = grain.MapDataset.source(examples).random_map(make(), seed=3)
    everything = list(dataset.to_iter_dataset())
    assert_same_examples(everything, [dataset[i] for i in range(len(examples))])
    rebuilt = grain.MapDataset.source(examples).random_map(make(), seed=3)
    assert_same_examples(everything, list(rebuilt))

    it = iter(dataset.to_iter_dataset())
    for _ in range(7):
        next(it)
    resumed = iter(rebuilt.to_iter_dataset())
    resumed.set_state(it.get_state())
    assert_same_examples(everything[7:], list(resumed))

    other_seed = list(grain.MapDataset.source(examples).random_map(make(), seed=4))
    assert any(
        not np.array_equal(a["targets"], b["targets"])
        for a, b in zip(everything, other_seed, strict=True)
    )


def test_bert_masking_transform_features():
    examples = lm_view_examples()
    out = list(grain.MapDataset.source(examples).random_map(noising.BertMasking(VOCAB), seed=0))
    for example, features in zip(examples, out, strict=True):
        inputs, targets = features["inputs"], features["targets"]
        assert features.keys() == {"inputs", "targets"}
        assert inputs.dtype == targets.dtype == np.int32
        assert inputs.shape == targets.shape == example["inputs"].shape
        assert inputs[0] == BOS_ID and targets[0] == PAD_ID
        assert int((targets != PAD_ID).sum()) == expected_count(example["inputs"])


def test_span_corruption_transform_gives_seq2seq_features():
    examples = lm_view_examples()
    out = list(
        grain.MapDataset.source(examples).random_map(noising.SpanCorruption(SENTINELS), seed=0)
    )
    for example, features in zip(examples, out, strict=True):
        text = example["inputs"][1:]
        assert features.keys() == {"inputs", "targets"}
        assert features["inputs"].dtype == features["targets"].dtype == np.int32
        assert uncorrupt(features["inputs"], features["targets"]) == text.tolist()
        assert (
            len(features["inputs"]) <= len(text) + 1 and len(features["targets"]) <= len(text) + 1
        )
