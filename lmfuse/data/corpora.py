"""Corpora and their views: what examples a config reads, as Grain `MapDataset`s of plain dicts.

Every corpus, whatever its origin, comes out through `load_examples` as a random-access
`grain.MapDataset` of dicts: `{'text': str}` for the lm view, `{'source': str, 'target': str}`
for the translate view. Training code never knows where the text came from.

Origins:
* `bible`: the TFDS `bible` dataset (plus `bible_es`, from Debian's SWORD module, only when
  the config names 'rv1909'), joined on verse order. Versions are validated when the dataset
  is prepared; `prepare` builds a missing one on first use.
* a TFDS name (`lm1b`, `wmt14_translate/de-en`, ...): `tfds.data_source` over ArrayRecord.
* `text`: the user's own files, one example per line (`src.txt|tgt.txt` for translate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from lmfuse.data import bible, bible_ids, bible_text, builders, sword, textfiles, tfds_named
from lmfuse.data.tokenizer import Tokenizer, notice_small_vocab, train_tokenizer
from lmfuse.errors import LmfuseError

VIEWS = ("lm", "translate")
SPLITS = builders.SPLITS
PUBLIC = "public"  # the translate source meaning "every other English version"
# Version tags are always tokenizer symbols, so tagging sources never changes the vocabulary.
VERSION_TAGS = tuple(f"<{v}>" for v in (*bible_text.ENGLISH_VERSIONS, sword.SPANISH_VERSION))


@dataclasses.dataclass
class Examples:
    """The examples of one split."""

    dataset: grain.MapDataset  # may hold None for skipped (empty) examples; Grain skips them
    view: str
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
        expanded = bible_text.VALIDATED_VERSIONS if name == "all" else (name,)
        for version in expanded:
            _check_version_name(version)
            if version not in names:
                names.append(version)
    if not names:
        raise LmfuseError("no Bible versions given; set e.g. --config.data.versions=asv,kjv")
    return tuple(names)


def _check_version_name(name: str) -> None:
    if name == sword.SPANISH_VERSION or name in bible_text.VALIDATED_VERSIONS:
        return
    if name in bible_text.ENGLISH_VERSIONS:
        bible.load_validated(name)  # raises the version's own refusal message (e.g. dr)
        return
    valid = ", ".join((*bible_text.VALIDATED_VERSIONS, sword.SPANISH_VERSION, "all"))
    raise LmfuseError(f"unknown Bible version {name!r}; valid versions: {valid}")


def bible_versions_used(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Every Bible version the config reads, for the data view and for the tokenizer."""
    data_cfg = config.data
    if data_cfg.view == "lm":
        used = parse_versions(data_cfg.versions)
    else:
        used = _translate_sources(data_cfg) + parse_versions(data_cfg.target)
    return tuple(dict.fromkeys(used + tokenizer_versions(config)))


def tokenizer_spec(config: ml_collections.ConfigDict) -> str:
    """The Bible versions the tokenizer trains on, as a `tokenizer.versions` value: the explicit
    one, else (default '') 'all' (every validated English version: all English configs share
    one vocabulary, so their models can be fused), or 'all,rv1909' when data.versions, .source
    or .target names rv1909, in any view. It reads the config only, never the machine."""
    if config.tokenizer.versions.strip():
        return config.tokenizer.versions
    data_cfg = config.data
    named = {v.strip().lower() for key in ("versions", "source", "target")
             for v in data_cfg[key].split(",")}
    return f"all,{sword.SPANISH_VERSION}" if sword.SPANISH_VERSION in named else "all"


def tokenizer_versions(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`tokenizer_spec` expanded: the versions whose train split the Bible tokenizer reads."""
    return parse_versions(tokenizer_spec(config))


def _translate_sources(data_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    target = parse_versions(data_cfg.target)
    if len(target) != 1:
        raise LmfuseError(f"data.target must be one version, got {data_cfg.target!r}")
    if data_cfg.source.strip().lower() == PUBLIC:
        return tuple(v for v in bible_text.VALIDATED_VERSIONS if v != target[0])
    return parse_versions(data_cfg.source)


def needed_builders(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    if config.data.corpus != "bible":
        return ()
    versions = bible_versions_used(config)
    names = ["bible"]
    if sword.SPANISH_VERSION in versions:
        names.append("bible_es")
    return tuple(names)


def prepare(config: ml_collections.ConfigDict, download: bool = False) -> Tokenizer:
    """Builds what the config reads and is missing, then trains (or finds) its tokenizer.

    A missing Bible dataset is built from installed packages, announced in one line (SWORD,
    for rv1909 only, is checked before anything is built). A TFDS dataset is downloaded only
    with `download` (`lmfuse data prepare`); else an unprepared one is a one-line error."""
    data_cfg = config.data
    check_view(data_cfg)
    root = data_dir(data_cfg)
    if data_cfg.corpus == "bible":
        hint = "" if download else (" (not prepared yet; `lmfuse data prepare --config <config>` "
                                    "does this ahead)")
        builders.prepare_missing(needed_builders(config), root, hint)
    elif tfds_named.is_named_dataset(data_cfg.corpus):
        if download:
            tfds_named.prepare_named(data_cfg.corpus, str(root))
        else:
            tfds_named.require_prepared(data_cfg.corpus, str(root))
    elif data_cfg.corpus != "text":
        raise _unknown_corpus(data_cfg.corpus)
    return load_tokenizer(config)


def _unknown_corpus(name: str) -> LmfuseError:
    known = ", ".join(("bible", "text", *tfds_named.NAMED_DATASETS))
    return LmfuseError(f"unknown data.corpus {name!r}; choose one of {known}")


# ---------------------------------------------------------------------------------------------
# Examples


def load_examples(
    config: ml_collections.ConfigDict, split: str, in_memory: bool = False
) -> Examples:
    """The examples of `split` in the config's view. `in_memory` reads a Bible split in one
    batch, for a pass over all of it: record by record, the public view's 165k take minutes."""
    data_cfg = config.data
    check_view(data_cfg)
    if split not in SPLITS:
        raise LmfuseError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if data_cfg.corpus == "bible":
        examples = _bible_examples(config, split, in_memory)
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
    rows = (dataset[int(i)] for i in keep)
    return grain.MapDataset.source([row for row in rows if row is not None])


def _text_examples(data_cfg: ml_collections.ConfigDict, split: str) -> Examples:
    paths = {k: v for k, v in data_cfg.files.items() if v}
    dataset = textfiles.text_source(paths, split, view=data_cfg.view)
    return Examples(dataset, data_cfg.view, records=len(dataset))


def bible_sources(names: tuple[str, ...], split: str, root: Path) -> dict[str, Any]:
    """Random-access TFDS sources (ArrayRecord) of the Bible builders, one per name. Never
    builds: reading an unprepared one (evaluating on an empty data dir) is a one-line error."""
    sources = {}
    for name in names:
        try:
            sources[name] = tfds.data_source(name, split=split, data_dir=str(root),
                                             download=False)
        except Exception as e:  # TFDS raises several types for "not prepared"
            raise LmfuseError(
                f"dataset {name!r} is not prepared in {root} ({type(e).__name__}); "
                "run: lmfuse data prepare --config <your config>"
            ) from None
    lengths = {name: len(source) for name, source in sources.items()}
    if len(set(lengths.values())) > 1:  # both builders write every KJV id of the split
        raise LmfuseError(f"prepared Bible datasets disagree in size {lengths}; re-prepare them")
    return sources


def read_bible_records(names: tuple[str, ...], split: str, root: Path) -> list[dict]:
    """Every verse record of `split`, joined across builders (eager; for reports and tests)."""
    sources = bible_sources(names, split, root)
    columns = [source.__getitems__(range(len(source))) for source in sources.values()]
    return [_join(rows) for rows in zip(*columns, strict=True)]


def _join(rows) -> dict:
    record = dict(rows[0])
    for row in rows[1:]:
        if row["verse_id"] != record["verse_id"]:  # builders write canonical verse order
            raise LmfuseError("prepared Bible datasets are out of step; re-prepare them")
        record.update(row)
    return record


def _verse_text(record: dict, version: str, keep_brackets: bool) -> str:
    text = record[version]
    text = text.decode("utf-8") if isinstance(text, bytes) else text
    if version == "kjv" and not keep_brackets:
        text = bible_text.strip_brackets(text)
    return text


class _VerseView:
    """Example `i` of a view: verse `i // len(pairs)`, version pair `i % len(pairs)`.

    Records are decoded lazily, on demand, straight from the ArrayRecord sources. An example
    with an empty side (a version lacking the verse) is None, which Grain skips.
    """

    def __init__(self, sources: dict, pairs: list[tuple[str, ...]], keep_brackets: bool,
                 tag_source: bool):
        self._sources, self._pairs = sources, pairs
        self._keep, self._tag = keep_brackets, tag_source

    def __call__(self, index: int) -> dict | None:
        verse, pair = divmod(int(index), len(self._pairs))
        record = _join([source[verse] for source in self._sources.values()])
        texts = [_verse_text(record, version, self._keep) for version in self._pairs[pair]]
        if not all(texts):
            return None
        if len(texts) == 1:
            return {"text": texts[0]}
        source_version = self._pairs[pair][0]
        source = f"<{source_version}> {texts[0]}" if self._tag else texts[0]
        return {"source": source, "target": texts[1]}


def _bible_examples(config: ml_collections.ConfigDict, split: str, in_memory: bool) -> Examples:
    data_cfg = config.data
    sources = bible_sources(needed_builders(config), split, data_dir(data_cfg))
    if in_memory:  # lists index like the sources, so the view is the same
        sources = {name: src.__getitems__(range(len(src))) for name, src in sources.items()}
    if data_cfg.view == "lm":
        pairs = [(version,) for version in parse_versions(data_cfg.versions)]
    else:
        (target,) = parse_versions(data_cfg.target)
        pairs = [(source, target) for source in _translate_sources(data_cfg)]
    records = len(next(iter(sources.values())))
    view = _VerseView(sources, pairs, data_cfg.keep_brackets, data_cfg.tag_source)
    dataset = grain.MapDataset.range(records * len(pairs)).map(view)
    return Examples(dataset, data_cfg.view, records=records)


def example_ids(config: ml_collections.ConfigDict, split: str) -> list[str]:
    """A stable, readable id per example of `split`, index-aligned with `load_examples`: the
    verse reference for the Bible ('Judges 1:1', with the source version when several pair
    with the target: 'Judges 1:1 <ylt>'), 'line N' for text files, the index otherwise.
    For evaluation splits: a train split cut by data.train_fraction is not followed."""
    data_cfg = config.data
    count = len(load_examples(config, split).dataset)
    if data_cfg.corpus == "bible":
        sources = bible_sources(needed_builders(config), split, data_dir(data_cfg))
        source = next(iter(sources.values()))
        verses = [row["verse_id"] for row in source.__getitems__(range(len(source)))]
        pairs = _translate_sources(data_cfg) if data_cfg.view == "translate" else ("",)
        names = [bible_ids.reference(int(v)) for v in verses]
        return names if len(pairs) == 1 else [f"{n} <{pair}>" for n in names for pair in pairs]
    if data_cfg.corpus == "text":
        return [f"line {i + 1}" for i in range(count)]
    return [str(i) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_texts(config: ml_collections.ConfigDict) -> Iterator[str]:
    """The training text of the tokenizer: the train split of `tokenizer_versions` for the
    Bible, the train split of the view otherwise."""
    if config.data.corpus == "bible":
        versions = tokenizer_versions(config)
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


def corpus_fingerprint(config: ml_collections.ConfigDict) -> dict:
    """What the tokenizer's training text and the data report depend on, cheap to compute (no
    text is read)."""
    data_cfg, root = config.data, data_dir(config.data)
    if data_cfg.corpus == "bible":
        files = sorted(p for name in needed_builders(config) for p in (root / name).rglob("*train*"))
    elif data_cfg.corpus == "text":
        files = [Path(data_cfg.files.train.split("|")[0]), Path(data_cfg.files.train.split("|")[-1])]
    else:
        files = sorted((root / data_cfg.corpus.split("/")[0]).rglob("*train*"))
    stamps = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()]
    return {"corpus": data_cfg.corpus, "view": data_cfg.view, "files": stamps}


def load_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    """The config's SentencePiece model, trained on first use and then found by content hash.

    Hashing the content means reading the whole training text; an index keyed by the settings
    and the prepared files' sizes and times finds the model without reading it again.
    """
    tok_cfg = config.tokenizer
    if tok_cfg.get("model_file"):
        path = Path(tok_cfg.model_file).expanduser()
        if not path.is_file():
            raise LmfuseError(f"tokenizer.model_file {tok_cfg.model_file!r} does not exist; "
                              "point it at a SentencePiece .model file, or set it to ''")
        return Tokenizer(path)
    index_path = tokenizer_cache_dir(config) / "index.json"
    # model_file is left out of the key, so models cached before it existed are still found.
    settings = {k: v for k, v in tok_cfg.to_dict().items() if k != "model_file"}
    if config.data.corpus == "bible":  # the default ('') keys as the versions it stands for
        settings["versions"] = tokenizer_spec(config)
    payload = json.dumps([settings, corpus_fingerprint(config)], sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    known = index_path.parent / index.get(key, "missing")
    if known.is_file():
        return notice_small_vocab(Tokenizer(known), tok_cfg.vocab_size)  # as when trained
    tokenizer = _train_config_tokenizer(config)
    index[key] = tokenizer.path.name
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    return tokenizer


def _train_config_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
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
