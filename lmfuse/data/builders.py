"""TFDS dataset builders for the Bible corpora, prepared as ArrayRecord.

Both builders write ArrayRecord files that `tfds.data_source` reads with random access, which
Grain consumes directly; neither needs TensorFlow. Records keep canonical verse order
(`disable_shuffling`), so the English and Spanish datasets line up record by record.

* `bible`: one record per KJV verse id, with the text of every validated English version
  (empty where a version lacks the verse). Every version passes its alignment check before a
  single record is written; the reports are stored in the dataset's metadata.
* `bible_es`: the Reina-Valera 1909, keyed by the same verse ids.

Splits follow Carlson et al. 2018 by book (see `bible_ids.SPLIT_BOOKS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lmfuse.data import bible, bible_ids, bible_text, partial, sword
from lmfuse.errors import LmfuseError

SPLITS = ("train", "validation", "test")
CITATION = """@inproceedings{carlson2018evaluating,
  title={Evaluating prose style transfer with the Bible},
  author={Carlson, Keith and Riddell, Allen and Rockmore, Daniel},
  journal={Royal Society Open Science}, year={2018}}"""


def _verse_features(text_fields: tuple[str, ...]) -> tfds.features.FeaturesDict:
    features = {"verse_id": np.int64, "book": np.int32, "chapter": np.int32, "verse": np.int32}
    features.update({name: tfds.features.Text() for name in text_fields})
    return tfds.features.FeaturesDict(features)


def _split_verse_ids() -> dict[str, list[int]]:
    by_split: dict[str, list[int]] = {split: [] for split in SPLITS}
    for verse_id in bible_ids.kjv_verse_ids():
        by_split[bible_ids.book_split(bible_ids.verse_key(verse_id)[0])].append(verse_id)
    return by_split


def _records(verse_ids: list[int], texts: dict[str, dict[int, str]]):
    for verse_id in verse_ids:
        book, chapter, verse = bible_ids.verse_key(verse_id)
        record = {"verse_id": verse_id, "book": book, "chapter": chapter, "verse": verse}
        record.update({name: by_id[verse_id] for name, by_id in texts.items()})
        yield verse_id, record


class Bible(tfds.core.GeneratorBasedBuilder):
    """Verse-aligned public-domain English Bibles from the pythonbible packages."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Validated versions, BBE and WBS recovered from raw text."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=_verse_features(bible_text.VALIDATED_VERSIONS),
            disable_shuffling=True,
            citation=CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        texts, reports = {}, {}
        for name in bible_text.VALIDATED_VERSIONS:
            # Raises LmfuseError for any version that fails alignment: never write misaligned data.
            texts[name], report = bible.load_validated(name)
            reports[name] = dataclasses.asdict(report)
        self.info.metadata["alignment"] = reports
        by_split = _split_verse_ids()
        return {split: self._generate_examples(by_split[split], texts) for split in SPLITS}

    def _generate_examples(self, verse_ids, texts):
        yield from _records(verse_ids, texts)


class BibleEs(tfds.core.GeneratorBasedBuilder):
    """The Spanish Reina-Valera 1909 (SWORD module spaRV1909eb), in KJV versification."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Reina-Valera 1909 from SWORD, keyed by KJV verse ids."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=_verse_features((sword.SPANISH_VERSION,)),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        # Reading SWORD takes about half a minute; the JSON cache makes re-preparing cheap.
        texts = sword.read_rv1909(cache_path=rv1909_cache(self.data_dir_root))
        report = sword.check_rv1909(texts)
        if not report.passed:
            raise LmfuseError(f"Reina-Valera 1909 failed its alignment check: {report.summary()}")
        self.info.metadata["alignment"] = {sword.SPANISH_VERSION: dataclasses.asdict(report)}
        by_split = _split_verse_ids()
        texts = {sword.SPANISH_VERSION: texts}
        return {split: self._generate_examples(by_split[split], texts) for split in SPLITS}

    def _generate_examples(self, verse_ids, texts):
        yield from _records(verse_ids, texts)


BUILDERS = {"bible": Bible, "bible_es": BibleEs}
# Where each builder's text comes from (all local: nothing is downloaded).
SOURCES = {"bible": "the pythonbible packages", "bible_es": "the SWORD module spaRV1909eb"}


def rv1909_cache(data_dir: str | Path) -> Path:
    """The JSON cache of the Reina-Valera text read from SWORD, kept with the prepared data."""
    return Path(data_dir) / "cache" / "rv1909.json"


def is_prepared(name: str, data_dir: str | Path) -> bool:
    """Whether the named Bible dataset is fully written under `data_dir` (reads no records)."""
    return BUILDERS[name](data_dir=str(data_dir), file_format="array_record").is_prepared()


def check_sources(name: str, data_dir: str | Path) -> None:
    """Raises a one-line LmfuseError, in a moment, if `prepare(name)` would fail for want of a
    system package: `bible_es` needs Debian's SWORD module unless its text is cached."""
    if name == "bible_es":
        sword.check_available(cache_path=rv1909_cache(data_dir))


def prepare_missing(names: Sequence[str], data_dir: str | Path, hint: str = "") -> list[str]:
    """Builds those of the named Bible datasets that are missing, each announced in one line
    (ending in `hint`), and returns their names. The system packages they need are checked
    first, so a missing one is an error before minutes of building."""
    missing = [name for name in names if not is_prepared(name, data_dir)]
    for name in missing:
        check_sources(name, data_dir)
    for name in missing:
        print(f"preparing the Bible dataset {name!r} in {data_dir} from {SOURCES[name]}{hint}",
              flush=True)
        prepare(name, data_dir)
    return missing


def prepare(name: str, data_dir: str | Path) -> tfds.core.DatasetBuilder:
    """Builds (once) and returns the named Bible dataset under `data_dir`. A failed build
    leaves nothing behind in `data_dir`."""
    builder = BUILDERS[name](data_dir=str(data_dir), file_format="array_record")
    if builder.is_prepared():
        return builder
    check_sources(name, data_dir)
    with partial.no_partial_paths(data_dir):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(verify_ssl=False)
        )
    return builder


def alignment_reports(name: str, data_dir: str | Path) -> dict[str, dict]:
    """The alignment-check results stored when the dataset was prepared."""
    builder = BUILDERS[name](data_dir=str(data_dir), file_format="array_record")
    return dict(builder.info.metadata.get("alignment", {}))
