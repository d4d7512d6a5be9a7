"""Grain pipeline: packing conserves tokens, resume is exact, processes split each global batch."""

from collections import Counter

import grain
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.data import augment, pipeline
from lmfuse.data.pipeline import PipelineOptions, make_dataset
from lmfuse.data.tokenizer import BOS_ID, EOS_ID, train_tokenizer
from lmfuse.errors import LmfuseError

NUM_VERSES = 600


@pytest.fixture(scope="module")
def verses():
    """Real text: the first verses of Genesis in the ASV (aligned as shipped)."""
    import pythonbible as bible

    ids = bible.convert_references_to_verse_ids(bible.get_references("Genesis 1:1-24:67"))
    ids = ids[:NUM_VERSES]
    texts = [bible.get_verse_text(v, version=bible.Version.AMERICAN_STANDARD) for v in ids]
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def tokenizer(verses, tmp_path_factory):
    return train_tokenizer(verses, vocab_size=400, cache_dir=tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def lm_examples(verses):
    return grain.MapDataset.source([{"text": t} for t in verses])


def lm_options(**kw):
    base = dict(view="lm", batch_size=4, max_length=192, seq_len=256, num_epochs=1,
                drop_remainder=False, shard_index=0, shard_count=1)
    base.update(kw)
    return PipelineOptions(**base)


def documents_of(batches):
    """Splits packed rows back into documents (BOS + text + EOS), checking row invariants."""
    docs = []
    for batch in batches:
        for row in range(batch["inputs"].shape[0]):
            seg = batch["inputs_segment_ids"][row]
            pos = batch["inputs_positions"][row]
            np.testing.assert_array_equal(seg, batch["targets_segment_ids"][row])
            assert np.all(batch["inputs"][row][seg == 0] == 0), "padding must be pad id"
            for s in np.unique(seg[seg > 0]):
                where = seg == s
                np.testing.assert_array_equal(pos[where], np.arange(where.sum()))
                inputs, targets = batch["inputs"][row][where], batch["targets"][row][where]
                assert inputs[0] == BOS_ID and targets[-1] == EOS_ID
                np.testing.assert_array_equal(inputs[1:], targets[:-1])  # shifted by one
                docs.append(tuple(targets[:-1].tolist()))
    return docs


def test_packing_loses_and_duplicates_no_token_over_an_epoch(lm_examples, tokenizer, verses):
    batches = list(make_dataset(lm_examples, tokenizer, lm_options(seed=3)))
    expected = Counter(tuple(tokenizer.encode(t)) for t in verses)
    assert Counter(documents_of(batches)) == expected
    # Packing really packs: far fewer rows than documents.
    rows = sum(b["inputs"].shape[0] for b in batches)
    assert rows < len(verses) / 2


def test_segments_and_shift_hold_without_packing(lm_examples, tokenizer, verses):
    batches = list(make_dataset(lm_examples, tokenizer, lm_options(pack=False, seq_len=192)))
    assert Counter(documents_of(batches)) == Counter(tuple(tokenizer.encode(t)) for t in verses)


@pytest.mark.parametrize("consumed", [0, 3, 17])
def test_resume_from_iterator_state_yields_the_exact_next_batch(lm_examples, tokenizer, consumed):
    options = lm_options(num_epochs=None, drop_remainder=True, seed=11)
    dataset = make_dataset(lm_examples, tokenizer, options)
    iterator = iter(dataset)
    for _ in range(consumed):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]

    resumed = iter(make_dataset(lm_examples, tokenizer, options))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_resume_crosses_epoch_boundaries(tokenizer, verses):
    small = grain.MapDataset.source([{"text": t} for t in verses[:40]])
    options = lm_options(num_epochs=None, drop_remainder=True, seed=5)
    iterator = iter(make_dataset(small, tokenizer, options))
    for _ in range(12):  # several epochs of 40 short verses
        next(iterator)
    state = iterator.get_state()
    want = next(iterator)
    resumed = iter(make_dataset(small, tokenizer, options))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["inputs"], want["inputs"])


@pytest.mark.parametrize("pack", [True, False])
def test_processes_hold_blocks_of_the_one_process_batches(lm_examples, tokenizer, verses, pack):
    # Shuffled, packed (or padded), and with a short last batch: whatever the process count,
    # the global batches are the one-process batches row for row.
    options = dict(batch_size=9, pack=pack, shuffle=True, seed=3)
    plain = list(make_dataset(lm_examples, tokenizer, lm_options(**options)))
    shards = [list(make_dataset(lm_examples, tokenizer,
                                lm_options(**options, shard_index=i, shard_count=3)))
              for i in range(3)]
    # Same number of batches everywhere, so a pass over a split ends on every process at once.
    assert [len(s) for s in shards] == [len(plain)] * 3
    for whole, *blocks in zip(plain, *shards, strict=True):
        if len(whole["inputs"]) == 9:
            assert [len(b["inputs"]) for b in blocks] == [3, 3, 3]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([b[key] for b in blocks]), whole[key])
    if not pack:  # 600 verses in rows of 9: the last 6 go to the first two processes
        assert [len(s[-1]["inputs"]) for s in shards] == [3, 3, 0]
    # Disjoint by row, and together every document once.
    held = [Counter(documents_of(s)) for s in shards]
    assert held[0] + held[1] + held[2] == Counter(tuple(tokenizer.encode(t)) for t in verses)
    assert all(sum(h.values()) > len(verses) / 4 for h in held)


def test_same_seed_same_batches_other_seed_other_order(lm_examples, tokenizer):
    def first(seed):
        return next(iter(make_dataset(lm_examples, tokenizer, lm_options(seed=seed))))["inputs"]

    np.testing.assert_array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


def test_overlong_lm_examples_truncate_or_drop(lm_examples, tokenizer, verses):
    max_length = 24
    lengths = [len(tokenizer.encode(t)) + 1 for t in verses]
    n_long = sum(n > max_length for n in lengths)
    assert n_long > 0
    truncated = documents_of(make_dataset(
        lm_examples, tokenizer, lm_options(max_length=max_length, seq_len=64)))
    dropped = documents_of(make_dataset(
        lm_examples, tokenizer, lm_options(max_length=max_length, seq_len=64, overlong="drop")))
    assert len(truncated) == len(verses)
    assert max(len(d) for d in truncated) == max_length - 1
    assert len(dropped) == len(verses) - n_long


def test_translate_view_pads_pairs(tokenizer, verses):
    pairs = grain.MapDataset.source(
        [{"source": a, "target": b} for a, b in zip(verses[:-1], verses[1:], strict=True)])
    options = PipelineOptions(view="translate", batch_size=8, max_length=64, seq_len=64,
                              pack=False, num_epochs=1, shuffle=False, drop_remainder=False,
                              shard_index=0, shard_count=1)
    batch = next(iter(make_dataset(pairs, tokenizer, options)))
    assert batch["inputs"].shape == (8, 64) and batch["targets"].shape == (8, 64)
    for row in range(8):
        n = batch["inputs_segment_ids"][row].sum()
        assert batch["inputs"][row][n - 1] == EOS_ID
        want = tokenizer.encode(verses[row])[:63]
        np.testing.assert_array_equal(batch["inputs"][row][: n - 1], want)


def test_translate_packing_keeps_source_and_target_segments_paired(tokenizer, verses):
    pairs = grain.MapDataset.source(
        [{"source": a, "target": b} for a, b in zip(verses[:-1], verses[1:], strict=True)])
    options = PipelineOptions(view="translate", batch_size=4, max_length=192, seq_len=192,
                              num_epochs=1, drop_remainder=False, shard_index=0, shard_count=1)
    seen = Counter()
    for batch in make_dataset(pairs, tokenizer, options):
        for row in range(batch["inputs"].shape[0]):
            src_seg, tgt_seg = batch["inputs_segment_ids"][row], batch["targets_segment_ids"][row]
            for s in np.unique(src_seg[src_seg > 0]):
                src = batch["inputs"][row][src_seg == s][:-1]
                tgt = batch["targets"][row][tgt_seg == s][:-1]
                seen[(tuple(src.tolist()), tuple(tgt.tolist()))] += 1
    want = Counter((tuple(tokenizer.encode(a)), tuple(tokenizer.encode(b)))
                   for a, b in zip(verses[:-1], verses[1:], strict=True))
    assert seen == want


def test_batch_size_must_divide_across_processes(lm_examples, tokenizer):
    with pytest.raises(LmfuseError, match="multiple of the 3 data-loading processes"):
        make_dataset(lm_examples, tokenizer, lm_options(batch_size=4, shard_count=3))


def test_max_length_must_fit_a_packed_row(lm_examples, tokenizer):
    with pytest.raises(LmfuseError, match="exceeds data.seq_len"):
        make_dataset(lm_examples, tokenizer, lm_options(max_length=300, seq_len=256))


# --- augmentation -----------------------------------------------------------------------------

token_arrays = st.lists(st.integers(5, 399), min_size=0, max_size=60).map(
    lambda xs: np.asarray(xs, np.int32))


@settings(max_examples=60, deadline=None)
@given(ids=token_arrays, window=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_local_reorder_is_a_bounded_permutation(ids, window, seed):
    out = augment.local_reorder(ids, np.random.default_rng(seed), window)
    assert sorted(out.tolist()) == sorted(ids.tolist())
    # Each token moves fewer than `window` places: argsort of index + U(0, window).
    positions = np.argsort(augment.local_reorder(np.arange(len(ids)),
                                                 np.random.default_rng(seed), window))
    assert np.all(np.abs(positions - np.arange(len(ids))) < window)


@settings(max_examples=60, deadline=None)
@given(ids=token_arrays, rate=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_dropout_replace_insert_invariants(ids, rate, seed):
    dropped = augment.token_dropout(ids, np.random.default_rng(seed), rate)
    assert len(dropped) <= len(ids)
    replaced = augment.token_replace(ids, np.random.default_rng(seed), rate, 400)
    assert replaced.shape == ids.shape and np.all(replaced >= augment.FIRST_ORDINARY_ID)
    inserted = augment.noise_insert(ids, np.random.default_rng(seed), rate, 400)
    assert len(inserted) >= len(ids)
    # The original tokens survive insertion as a subsequence, in order.
    it = iter(inserted.tolist())
    assert all(any(x == y for y in it) for x in ids.tolist())


def test_augmented_pipeline_is_deterministic_and_actually_noisy(lm_examples, tokenizer):
    cfg = ml_collections.ConfigDict(
        {"token_dropout": 0.1, "token_replace": 0.1, "local_reorder": 3, "noise_insert": 0.1})
    noisy = lm_options(augment=cfg, shuffle=False, pack=False)
    clean = lm_options(shuffle=False, pack=False)
    a = next(iter(make_dataset(lm_examples, tokenizer, noisy)))["inputs"]
    b = next(iter(make_dataset(lm_examples, tokenizer, noisy)))["inputs"]
    c = next(iter(make_dataset(lm_examples, tokenizer, clean)))["inputs"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a[:, 0] == BOS_ID)


def _batches(examples, tokenizer, options, count, state=None):
    iterator = iter(make_dataset(examples, tokenizer, options))
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator.get_state()


@pytest.mark.parametrize("view", ["lm", "translate"])
def test_read_options_change_neither_batches_nor_checkpointed_state(
        lm_examples, tokenizer, verses, monkeypatch, view):
    """lmfuse reads ahead less than Grain's default (speed only): the batches, and the iterator
    state a checkpoint holds, are those of Grain's default read options, so checkpoints written
    under either resume under the other."""
    if view == "lm":
        examples, options = lm_examples, lm_options(num_epochs=None, drop_remainder=True, seed=3)
    else:
        examples = grain.MapDataset.source(
            [{"source": a, "target": b} for a, b in zip(verses[:-1], verses[1:], strict=True)])
        options = PipelineOptions(view="translate", batch_size=4, max_length=96, seq_len=96,
                                  seed=3, shard_index=0, shard_count=1)
    ours, our_state = _batches(examples, tokenizer, options, 6)
    monkeypatch.setattr(pipeline, "READ_OPTIONS", grain.ReadOptions())
    default, default_state = _batches(examples, tokenizer, options, 6)
    _, state_at_3 = _batches(examples, tokenizer, options, 3)
    monkeypatch.undo()
    resumed, _ = _batches(examples, tokenizer, options, 3, state=state_at_3)
    assert our_state == default_state
    for want, got in zip(default, ours, strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    for want, got in zip(default[3:], resumed, strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
