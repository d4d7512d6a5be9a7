"""`lmfuse data prepare` and `lmfuse data show`: build the data and store its report, then print it.

`prepare` builds what the config reads, then makes one pass over every split and stores what
`show` prints (per-split counts, the Bible alignment checks recorded when the dataset was
built, the first examples) as JSON in `<data_dir>/reports/`, one file per config. The file's
name hashes the settings the counts depend on and the sizes and times of the prepared files,
so another config, or rebuilt data, names another file. `show` reads that file and nothing
else: it never builds, trains or reads the data, and without a report it stops with one line
naming the prepare command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import ml_collections
import numpy as np

from lmfuse.data import builders, corpora, textfiles
from lmfuse.data.tokenizer import Tokenizer
from lmfuse.errors import LmfuseError

STORED_EXAMPLES = 20  # per split: the most `lmfuse data show --n` prints
REPORTS_DIR = "reports"  # under the data directory
# Bump when the report's fields change, so `show` asks for a new one instead of misreading it.
_FORMAT = 1
# Data settings the counts do not depend on: left out of the report's name, so changing them
# needs no new prepare.
_NOT_COUNTED = ("data_dir", "pack", "seq_len", "shuffle", "noising", "augment")
_CHUNK = 8192  # examples tokenized per batch


@dataclasses.dataclass
class SplitStats:
    split: str
    records: int  # verses, lines or TFDS rows
    examples: int
    skipped_empty: int
    tokens: int
    overlong: int  # examples longer than data.max_length (truncated or dropped per config)

    @property
    def mean_tokens(self) -> float:
        return self.tokens / max(self.examples, 1)


@dataclasses.dataclass
class DataReport:
    """What `lmfuse data show` prints, as `lmfuse data prepare` measured it."""

    corpus: str
    view: str
    max_length: int
    overlong: str
    tokenizer: dict  # file, vocab_size, sha256
    alignment: dict[str, dict]  # Bible version -> its AlignmentReport fields, from the build
    splits: list[SplitStats]
    # split -> its first STORED_EXAMPLES examples, each a list of [field, text, token count]
    examples: dict[str, list[list[list]]]

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, **dataclasses.asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DataReport | None:
        """The report, or None for one written by another version of this module."""
        try:
            raw = json.loads(text)
            if raw.pop("format", None) != _FORMAT:
                return None
            raw["splits"] = [SplitStats(**stats) for stats in raw["splits"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError):
            return None


def prepare(config: ml_collections.ConfigDict) -> Tokenizer:
    """`lmfuse data prepare`: the one command that downloads (TFDS datasets), then builds the
    Bible datasets the config reads and its tokenizer, and stores the data report."""
    tokenizer = corpora.prepare(config, download=True)
    root = corpora.data_dir(config.data)
    print(f"data ready in {root}")
    print(f"tokenizer {tokenizer.path.name}: vocab {tokenizer.vocab_size}, sha256 {tokenizer.sha256[:16]}")
    path = write_report(config, build_report(config, tokenizer))
    print(f"data report stored in {path} (`lmfuse data show` prints it)")
    return tokenizer


def split_stats(
    config: ml_collections.ConfigDict, split: str, tokenizer: Tokenizer, keep: int = STORED_EXAMPLES
) -> tuple[SplitStats, list[dict]]:
    """Counts for one split, and its first `keep` examples; tokens count BOS/EOS as the
    pipeline adds them. One pass, a chunk of examples in memory at a time."""
    examples = corpora.load_examples(config, split, in_memory=True)
    dataset = examples.dataset
    kept: list[dict] = []
    count = tokens = overlong = 0
    for start in range(0, len(dataset), _CHUNK):
        # Indexing, not iterating: Grain's iterator polls its prefetch threads per example.
        chunk = (dataset[i] for i in range(start, min(start + _CHUNK, len(dataset))))
        rows = [row for row in chunk if row is not None]  # views hold None where a side is empty
        kept.extend(rows[: keep - len(kept)])
        texts = [text for row in rows for text in row.values()]
        lengths = np.array([len(ids) + 1 for ids in tokenizer.encode_batch(texts)], dtype=np.int64)
        count += len(rows)
        tokens += int(lengths.sum())
        overlong += int((lengths > config.data.max_length).sum())
    stats = SplitStats(split, examples.records, count, len(dataset) - count, tokens, overlong)
    return stats, kept


def build_report(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> DataReport:
    """Reads every split once: the counts, and the examples `show` prints."""
    all_stats, examples = [], {}
    for split in corpora.SPLITS:
        stats, rows = split_stats(config, split, tokenizer)
        all_stats.append(stats)
        examples[split] = [
            [[key, text, len(tokenizer.encode(text))] for key, text in row.items()] for row in rows
        ]
    data_cfg = config.data
    return DataReport(
        corpus=data_cfg.corpus,
        view=data_cfg.view,
        max_length=data_cfg.max_length,
        overlong=data_cfg.overlong,
        tokenizer={"file": str(tokenizer.path), "vocab_size": tokenizer.vocab_size,
                   "sha256": tokenizer.sha256},
        alignment=_stored_alignment(config),
        splits=all_stats,
        examples=examples,
    )


def report_path(config: ml_collections.ConfigDict) -> Path:
    """Where the config's data report is stored (computing it reads no data, writes nothing)."""
    data = {k: v for k, v in config.data.to_dict().items() if k not in _NOT_COUNTED}
    inputs = [data, config.tokenizer.to_dict(), corpora.corpus_fingerprint(config),
              _file_stamps(config)]
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return corpora.data_dir(config.data) / REPORTS_DIR / f"data-{key[:16]}.json"


def write_report(config: ml_collections.ConfigDict, report: DataReport) -> Path:
    path = report_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(report.to_json(), encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report
    return path


def read_report(config: ml_collections.ConfigDict, prepare_command: str) -> DataReport:
    """The stored report of the config; a one-line LmfuseError naming `prepare_command`
    (`lmfuse data prepare ...`) if there is none."""
    corpora.check_view(config.data)
    corpora.needed_builders(config)  # unknown or refused Bible versions: their own error
    path = report_path(config)
    report = DataReport.from_json(path.read_text(encoding="utf-8")) if path.is_file() else None
    if report is None:
        raise LmfuseError(
            f"no data report for this config in {corpora.data_dir(config.data)} (data prepare "
            f"stores one per config, reusing what is already built); run: {prepare_command}"
        )
    return report


def show(
    config: ml_collections.ConfigDict,
    n: int = 3,
    prepare_command: str = "lmfuse data prepare --config <config>",
) -> DataReport:
    """`lmfuse data show`: prints the report `prepare` stored, with `n` examples per split."""
    if not 0 <= n <= STORED_EXAMPLES:
        raise LmfuseError(f"--n {n} is out of range; data prepare stores {STORED_EXAMPLES} "
                          f"examples per split, pass --n 0 to {STORED_EXAMPLES}")
    report = read_report(config, prepare_command)
    print(f"corpus {report.corpus}, view {report.view}, "
          f"tokenizer vocab {report.tokenizer['vocab_size']}")
    for version, checks in report.alignment.items():
        verdict = "ok" if checks["passed"] else "FAILED"
        print(
            f"  alignment {version}: {checks['nonempty']} non-empty of {checks['verses']}, "
            f"spot checks {checks['spot_checks_passed']}/{checks['spot_checks_total']}, "
            f"lexical flags {100 * checks['lexical_flag_rate']:.3f}% -> {verdict}"
        )
    for stats in report.splits:
        print(
            f"{stats.split:>10}: {stats.records:6d} records, {stats.examples:6d} examples "
            f"({stats.skipped_empty} empty skipped), {stats.tokens:8d} tokens, "
            f"{stats.mean_tokens:5.1f} tokens/example, {stats.overlong} over max_length "
            f"{report.max_length} ({report.overlong})"
        )
        for row in report.examples[stats.split][:n]:
            for key, text, length in row:
                print(f"{'':>12}{key}: {text}  [{length} tokens]")
    total = sum(stats.records for stats in report.splits)
    print(f"{'total':>10}: {total:6d} records")
    return report


def _stored_alignment(config: ml_collections.ConfigDict) -> dict[str, dict]:
    """The alignment checks the Bible builders ran and stored, for the versions the config
    reads: they are not run again."""
    root = corpora.data_dir(config.data)
    used = set(corpora.bible_versions_used(config)) if config.data.corpus == "bible" else set()
    reports: dict[str, dict] = {}
    for name in corpora.needed_builders(config):
        for version, checks in builders.alignment_reports(name, root).items():
            if version in used:
                reports[version] = dict(checks)
    return reports


def _file_stamps(config: ml_collections.ConfigDict) -> list:
    """Sizes and times of the user's files the report reads (text splits, a tokenizer model):
    an edited file names another report."""
    paths = [part for spec in config.data.files.to_dict().values() if spec
             for part in spec.split(textfiles.PAIR_SEPARATOR)]
    if config.tokenizer.get("model_file"):
        paths.append(config.tokenizer.model_file)
    stamps = []
    for raw in paths:
        path = Path(raw).expanduser()
        stat = path.stat() if path.is_file() else None
        stamps.append([str(path), stat and stat.st_size, stat and stat.st_mtime_ns])
    return stamps
