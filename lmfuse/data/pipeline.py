"""The Grain input pipeline: shuffle, tokenize, augment, pack or pad, batch, keep own rows.

    examples (MapDataset of dicts)
      -> shuffle with the seed, re-shuffled each epoch, repeated
      -> tokenize; truncate or drop over-long examples
      -> augment (train only, from config; per-example deterministic noise)
      -> pack (LM rows with segment ids and positions) or pad to fixed length
      -> global batch of `batch_size` rows
      -> this process's rows of it: `batch_size // shard_count` of them, block `shard_index`

Every process runs the whole pipeline and keeps its own block of rows, so the global batches
(each process's block, in process order) are the one-process batches, row for row, whatever
the number of processes: a run on N hosts trains on exactly the data of a run on one host,
and every process sees the same number of batches (an eval pass ends together everywhere).
Sharding the examples before shuffling and packing would spread the work, but shuffle and
pack would then see per-process example sets, and the global batches would change with the
process count. The price is that each process tokenizes and packs every global batch.

Batches are dicts of int32 arrays:

* lm:        `inputs`, `targets` (= inputs shifted by one within each document), and their
             `*_segment_ids` / `*_positions`. Each document is `[BOS] text [EOS]`; attention and
             loss never cross documents because segment ids differ.
* translate: `inputs` (source + EOS) and `targets` (target + EOS), with segment ids and
             positions. The model shifts `targets` right behind BOS for teacher forcing.
* noising (lm view text, after augmentation; `lmfuse.data.noising`):
             'bert_mask':       `inputs` = masked `[BOS] text`, `targets` = the original ids at
                                the chosen positions and PAD elsewhere (packed like lm rows);
             'span_corruption': `inputs` = text with sentinels + EOS, `targets` = the hidden
                                spans + EOS (padded or packed like translate pairs).

Segment id 0 is padding. The iterator returned by `iter()` has `get_state()`/`set_state()`, so a
checkpoint can hold it and a resumed run sees exactly the next batch.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import ml_collections
import numpy as np

from lmfuse.data import augment, noising
from lmfuse.data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from lmfuse.errors import LmfuseError

FEATURES = ("inputs", "targets")
NOISING = ("", "bert_mask", "span_corruption")


# The map stages run in the iterating thread. Tokenizing and packing hold the GIL, so Grain's
# default read-ahead threads (16 of them, 500 examples ahead, every pending future polled at
# each `next`) only compete with that thread: on the KJV->ASV training pipeline, 8.5 batches/s
# with them and 17 without, the same batches (experiments/bench_pipeline.py).
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Everything that shapes a pipeline, separate from the config so tests can build one."""

    view: str  # 'lm' or 'translate'
    batch_size: int  # global, across all processes
    max_length: int  # tokens per example, counting BOS/EOS
    seq_len: int  # packed LM row length
    pack: bool = True
    overlong: str = "truncate"
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None repeats forever
    drop_remainder: bool = True
    augment: ml_collections.ConfigDict | None = None
    noising: str = ""  # '' | 'bert_mask' | 'span_corruption' (lm view only)
    shard_index: int | None = None  # None: jax.process_index()
    shard_count: int | None = None  # None: jax.process_count()

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, split: str, **overrides) -> PipelineOptions:
        data = config.data
        train = split == "train"
        options = dict(
            view=data.view,
            batch_size=config.train.batch_size,
            max_length=data.max_length,
            seq_len=data.seq_len,
            pack=data.pack,
            overlong=data.overlong,
            seed=config.seed,
            shuffle=data.shuffle and train,
            num_epochs=None if train else 1,
            drop_remainder=train,
            augment=data.augment if train and augment.is_enabled(data.augment) else None,
            noising=data.noising,
        )
        options.update(overrides)
        return cls(**options)


def make_dataset(
    examples: grain.MapDataset, tokenizer: Tokenizer, options: PipelineOptions
) -> grain.IterDataset:
    """Builds the batched `IterDataset` for this process."""
    shard_index, shard_count = _shard(options)
    per_process, remainder = divmod(options.batch_size, shard_count)
    if remainder or per_process == 0:
        raise LmfuseError(
            f"train.batch_size={options.batch_size} must be a positive multiple of the "
            f"{shard_count} data-loading processes"
        )
    if options.noising not in NOISING:
        raise LmfuseError(
            f"data.noising={options.noising!r} is not one of {', '.join(map(repr, NOISING))}"
        )
    if options.noising and options.view != "lm":
        raise LmfuseError(f"data.noising={options.noising!r} needs data.view='lm' (monolingual text)")
    if options.view == "lm" and options.pack and options.max_length > options.seq_len:
        raise LmfuseError(
            f"data.max_length={options.max_length} exceeds data.seq_len={options.seq_len}; "
            "a packed row must fit the longest example"
        )
    dataset = examples
    if options.shuffle:
        dataset = dataset.shuffle(seed=options.seed)
    dataset = dataset.repeat(options.num_epochs)
    dataset = dataset.map(_Tokenize(tokenizer, options))
    dataset = dataset.filter(lambda example: example is not None)
    if options.augment is not None:
        dataset = dataset.random_map(
            _Augment(options.augment, tokenizer.vocab_size, options), seed=options.seed
        )
    # Noise draws from its own seed, so it is independent of the augmentation's draws.
    noise_seed = options.seed + 1_000_003
    if options.noising == "bert_mask":
        dataset = dataset.random_map(noising.BertMasking(tokenizer.vocab_size), seed=noise_seed)
    elif options.noising == "span_corruption":
        dataset = dataset.random_map(
            noising.SpanCorruption(noising.sentinel_ids(tokenizer.vocab_size)), seed=noise_seed
        )
    iterable = dataset.to_iter_dataset(READ_OPTIONS)
    lengths = _lengths(options)
    if options.pack:
        iterable = grain.experimental.FirstFitPackIterDataset(
            iterable,
            length_struct=lengths,
            num_packing_bins=options.batch_size,
            seed=options.seed,
            shuffle_bins=options.shuffle,
        )
    else:
        iterable = iterable.map(_Pad(lengths))
    iterable = iterable.batch(options.batch_size, drop_remainder=options.drop_remainder)
    if shard_count > 1:
        iterable = iterable.map(_Rows(shard_index * per_process, per_process))
    return iterable


def _shard(options: PipelineOptions) -> tuple[int, int]:
    count = jax.process_count() if options.shard_count is None else options.shard_count
    index = jax.process_index() if options.shard_index is None else options.shard_index
    if not 0 <= index < count:
        raise LmfuseError(f"shard index {index} is outside [0, {count})")
    return index, count


def _lengths(options: PipelineOptions) -> dict[str, int]:
    if options.view == "lm" and options.noising != "span_corruption":
        return {"inputs": options.seq_len, "targets": options.seq_len}
    return {"inputs": options.max_length, "targets": options.max_length}


class _Tokenize(grain.transforms.Map):
    """Text to ids; over-long examples are truncated or dropped (None) per `overlong`."""

    def __init__(self, tokenizer: Tokenizer, options: PipelineOptions):
        self._tokenizer = tokenizer
        self._view = options.view
        self._max_length = options.max_length
        self._drop = options.overlong == "drop"

    def _fit(self, ids: list[int], budget: int) -> list[int] | None:
        if len(ids) <= budget:
            return ids
        return None if self._drop else ids[:budget]

    def map(self, example: dict) -> dict | None:
        if self._view == "lm":
            # [BOS] text [EOS] -> inputs = all but the last, targets = all but the first.
            ids = self._fit(self._tokenizer.encode(example["text"]), self._max_length - 1)
            if ids is None:
                return None
            document = np.asarray([BOS_ID, *ids, EOS_ID], np.int32)
            return {"inputs": document[:-1], "targets": document[1:]}
        source = self._fit(self._tokenizer.encode(example["source"]), self._max_length - 1)
        target = self._fit(self._tokenizer.encode(example["target"]), self._max_length - 1)
        if source is None or target is None:
            return None
        return {
            "inputs": np.asarray([*source, EOS_ID], np.int32),
            "targets": np.asarray([*target, EOS_ID], np.int32),
        }


class _Augment(grain.transforms.RandomMap):
    """Noises the LM document or the seq2seq source, keeping BOS/EOS in place.

    Inserted noise can lengthen an example, so it is cut back to `max_length` afterwards.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, vocab_size: int, options: PipelineOptions):
        self._cfg, self._vocab_size = cfg, vocab_size
        self._view, self._budget = options.view, options.max_length - 1

    def random_map(self, example: dict, rng: np.random.Generator) -> dict:
        # LM inputs are [BOS] text; seq2seq inputs are source [EOS].
        text = example["inputs"][1:] if self._view == "lm" else example["inputs"][:-1]
        noised = augment.augment(text, rng, self._cfg, self._vocab_size)[: self._budget]
        if self._view == "lm":
            document = np.concatenate([[BOS_ID], noised, [EOS_ID]]).astype(np.int32)
            return {"inputs": document[:-1], "targets": document[1:]}
        return {**example, "inputs": np.append(noised, EOS_ID).astype(np.int32)}


class _Rows(grain.transforms.Map):
    """One process's block of a global batch: rows `start` to `start + count`. A short last
    batch (`drop_remainder=False`) can leave a process fewer rows, or none."""

    def __init__(self, start: int, count: int):
        self._rows = slice(start, start + count)

    def map(self, batch: dict) -> dict:
        return {name: value[self._rows] for name, value in batch.items()}


class _Pad(grain.transforms.Map):
    """Pads each feature to its fixed length, adding the same keys packing would."""

    def __init__(self, lengths: dict[str, int]):
        self._lengths = lengths

    def map(self, example: dict) -> dict:
        out = {}
        for name, length in self._lengths.items():
            ids = example[name][:length]
            n = len(ids)
            out[name] = np.pad(ids, (0, length - n)).astype(np.int32)
            out[f"{name}_segment_ids"] = (np.arange(length) < n).astype(np.int32)
            out[f"{name}_positions"] = np.where(np.arange(length) < n, np.arange(length), 0).astype(np.int32)
        return out
