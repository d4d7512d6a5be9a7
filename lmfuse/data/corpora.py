"""Corpora and their views: what examples a config reads, as Grain `MapDataset`s of plain dicts.

Every corpus, whatever its origin, comes out through `load_examples` as a random-access
`grain.MapDataset` of dicts: `{'text': str}` for the lm view, `{'source': str, 'target': str}`
for the translate view. Training code never knows where the text came from.

Origins:
* `bible`: the TFDS `bible` dataset (plus `bible_es` when 'rv1909' is asked for), joined on
  verse order. Versions are validated when the dataset is prepared.
* a TFDS name (`lm1b`, `wmt14_translate/de-en`, ...): `tfds.data_source` over ArrayRecord.
* `text`: the user's own files, one example per line (`src.txt|tgt.txt` for translate).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from lmfuse.data import bible, builders, sword, textfiles, tfds_named
from lmfuse.data.tokenizer import Tokenizer, train_tokenizer
from lmfuse.errors import LmfuseError

VIEWS = ("lm", "translate")
SPLITS = builders.SPLITS
PUBLIC = "public"  # the translate source meaning "every other English version"
# Version tags are always tokenizer symbols, so tagging sources never changes the vocabulary.
VERSION_TAGS = tuple(f"<{v}>" for v in (*bible.ENGLISH_VERSIONS, sword.SPANISH_VERSION))


@dataclasses.dataclass
class Examples:
    """The examples of one split, and counts of what was left out while building them."""

    dataset: grain.MapDataset
    view: str
    skipped_empty: int = 0
    records: int = 0  # underlying records (verses, lines, TFDS rows) before the view


def data_dir(data_cfg: ml_collections.ConfigDict) -> Path:
    """The directory holding prepared datasets and tokenizers."""
    chosen = data_cfg.data_dir or os.environ.get("LMFUSE_DATA_DIR") or "~/.cache/lmfuse"
    return Path(chosen).expanduser()


def check_view(data_cfg: ml_collections.ConfigDict) -> None:
    if data_cfg.view not in VIEWS:
        raise LmfuseError(f"unknown data.view {data_cfg.view!r}; choose one of {', '.join(VIEWS)}")
    if data_cfg.overlong not in ("truncate", "drop"):
        raise LmfuseError(f"unknown data.overlong {data_cfg.overlong!r}; choose truncate or drop")
    if not 0.0 < data_cfg.train_fraction <= 1.0:
        raise LmfuseError(f"data.train_fraction must be in (0, 1], got {data_cfg.train_fraction}")


def parse_versions(spec: str) -> tuple[str, ...]:
    """Expands a comma list of Bible versions ('all' = every validated English version)."""
    names: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        expanded = bible.VALIDATED_VERSIONS if name == "all" else (name,)
        for version in expanded:
            _check_version_name(version)
            if version not in names:
                names.append(version)
    if not names:
        raise LmfuseError("no Bible versions given; set e.g. --config.data.versions=asv,kjv")
    return tuple(names)


def _check_version_name(name: str) -> None:
    if name == sword.SPANISH_VERSION or name in bible.VALIDATED_VERSIONS:
        return
    if name in bible.ENGLISH_VERSIONS:
        bible.load_validated(name)  # raises the version's own refusal message (e.g. dr)
        return
    valid = ", ".join((*bible.VALIDATED_VERSIONS, sword.SPANISH_VERSION, "all"))
    raise LmfuseError(f"unknown Bible version {name!r}; valid versions: {valid}")


def bible_versions_used(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Every Bible version the config reads, for the data view and for the tokenizer."""
    data_cfg = config.data
    if data_cfg.view == "lm":
        used = parse_versions(data_cfg.versions)
    else:
        used = _translate_sources(data_cfg) + parse_versions(data_cfg.target)
    return tuple(dict.fromkeys(used + parse_versions(config.tokenizer.versions)))


def _translate_sources(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    target = parse_versions(data_cfg.target)
    if len(target) != 1:
        raise LmfuseError(f"data.target must be one version, got {data_cfg.target!r}")
    if data_cfg.source.strip().lower() == PUBLIC:
        return tuple(v for v in bible.VALIDATED_VERSIONS if v != target[0])
    return parse_versions(data_cfg.source)


def needed_builders(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    if config.data.corpus != "bible":
        return ()
    versions = bible_versions_used(config)
    names = ["bible"]
    if sword.SPANISH_VERSION in versions:
        names.append("bible_es")
    return tuple(names)


def prepare(config: ml_collections.ConfigDict) -> Tokenizer:
    """Builds every dataset the config reads, then trains (or finds) its tokenizer."""
    data_cfg = config.data
    check_view(data_cfg)
    root = data_dir(data_cfg)
    if data_cfg.corpus == "bible":
        for name in needed_builders(config):
            builders.prepare(name, root)
    elif tfds_named.is_named_dataset(data_cfg.corpus):
        tfds_named.prepare_named(data_cfg.corpus, str(root))
    elif data_cfg.corpus != "text":
        raise _unknown_corpus(data_cfg.corpus)
    return load_tokenizer(config)


def _unknown_corpus(name: str) -> LmfuseError:
    known = ", ".join(("bible", "text", *tfds_named.NAMED_DATASETS))
    return LmfuseError(f"unknown data.corpus {name!r}; choose one of {known}")


# ---------------------------------------------------------------------------------------------
# Examples


def load_examples(config: ml_collections.ConfigDict, split: str) -> Examples:
    """The examples of `split` in the config's view."""
    data_cfg = config.data
    check_view(data_cfg)
    if split not in SPLITS:
        raise LmfuseError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if data_cfg.corpus == "bible":
        examples = _bible_examples(config, split)
    elif data_cfg.corpus == "text":
        examples = _text_examples(data_cfg, split)
    elif tfds_named.is_named_dataset(data_cfg.corpus):
        dataset = tfds_named.named_source(
            data_cfg.corpus,
            split,
            view=data_cfg.view,
            data_dir=str(data_dir(data_cfg)),
            source_lang=data_cfg.source_lang or None,
            target_lang=data_cfg.target_lang or None,
        )
        examples = Examples(dataset, data_cfg.view, records=len(dataset))
    else:
        raise _unknown_corpus(data_cfg.corpus)
    if split == "train" and data_cfg.train_fraction < 1.0:
        examples.dataset = _fraction(examples.dataset, data_cfg.train_fraction)
    return examples


def _fraction(dataset: grain.MapDataset, fraction: float) -> grain.MapDataset:
    # A fixed permutation, so smaller fractions are subsets of larger ones (1% < 5% < 20%)
    # and the low-resource examples come from every book, not just Genesis.
    order = np.random.default_rng(0).permutation(len(dataset))
    keep = np.sort(order[: max(1, round(fraction * len(dataset)))])
    return grain.MapDataset.source([dataset[int(i)] for i in keep])


def _text_examples(data_cfg: ml_collections.ConfigDict, split: str) -> Examples:
    paths = {k: v for k, v in data_cfg.files.items() if v}
    dataset = textfiles.text_source(paths, split, view=data_cfg.view)
    return Examples(dataset, data_cfg.view, records=len(dataset))


def read_bible_records(names: tuple[str, ...], split: str, root: Path) -> list[dict]:
    """Verse records of `split` (ids and texts of every version), joined across builders."""
    records: list[dict] | None = None
    for name in names:
        try:
            source = tfds.data_source(name, split=split, data_dir=str(root))
        except Exception as e:  # TFDS raises several types for "not prepared"
            raise LmfuseError(
                f"dataset {name!r} is not prepared in {root} ({type(e).__name__}); "
                "run: lmfuse data prepare --config <your config>"
            ) from None
        rows = source.__getitems__(range(len(source)))
        if records is None:
            records = [dict(row) for row in rows]
            continue
        for record, row in zip(records, rows, strict=True):
            if record["verse_id"] != row["verse_id"]:  # both builders write canonical order
                raise LmfuseError(f"{name} is out of step with bible; delete {root / name} and re-prepare")
            record.update(row)
    return records or []


def _verse_text(record: dict, version: str, keep_brackets: bool) -> str:
    text = record[version]
    text = text.decode("utf-8") if isinstance(text, bytes) else text
    if version == "kjv" and not keep_brackets:
        text = bible.strip_brackets(text)
    return text


def _bible_examples(config: ml_collections.ConfigDict, split: str) -> Examples:
    data_cfg = config.data
    root = data_dir(data_cfg)
    records = read_bible_records(needed_builders(config), split, root)
    keep = data_cfg.keep_brackets
    rows: list[dict] = []
    skipped = 0
    if data_cfg.view == "lm":
        for record in records:
            for version in parse_versions(data_cfg.versions):
                text = _verse_text(record, version, keep)
                if text:
                    rows.append({"text": text})
                else:
                    skipped += 1
    else:
        (target,) = parse_versions(data_cfg.target)
        sources = _translate_sources(data_cfg)
        for record in records:
            target_text = _verse_text(record, target, keep)
            for version in sources:
                source_text = _verse_text(record, version, keep)
                if not (source_text and target_text):
                    skipped += 1
                    continue
                if data_cfg.tag_source:
                    source_text = f"<{version}> {source_text}"
                rows.append({"source": source_text, "target": target_text})
    return Examples(grain.MapDataset.source(rows), data_cfg.view, skipped, len(records))


# ---------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_texts(config: ml_collections.ConfigDict) -> Iterator[str]:
    """The training text of the tokenizer: train split of `tokenizer.versions` for the Bible,
    the train split of the view otherwise."""
    if config.data.corpus == "bible":
        versions = parse_versions(config.tokenizer.versions)
        records = read_bible_records(needed_builders(config), "train", data_dir(config.data))
        for record in records:
            for version in versions:
                text = _verse_text(record, version, keep_brackets=True)
                if text:
                    yield text
        return
    for example in load_examples(config, "train").dataset:
        if example is None:
            continue
        yield from (text for text in example.values() if text)


def tokenizer_cache_dir(config: ml_collections.ConfigDict) -> Path:
    return data_dir(config.data) / "tokenizers"


def load_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    """The config's SentencePiece model, trained on first use and then found by content hash."""
    tok_cfg = config.tokenizer
    symbols = VERSION_TAGS if config.data.corpus == "bible" else ()
    return train_tokenizer(
        tokenizer_texts(config),
        vocab_size=tok_cfg.vocab_size,
        model_type=tok_cfg.model_type,
        cache_dir=tokenizer_cache_dir(config),
        user_symbols=symbols,
        character_coverage=tok_cfg.character_coverage,
        max_sentences=tok_cfg.max_sentences,
    )
