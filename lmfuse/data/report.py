"""`lmfuse data prepare` and `lmfuse data show`: build the data, then describe it."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from lmfuse.data import builders, corpora
from lmfuse.data.tokenizer import Tokenizer


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


def prepare(config: ml_collections.ConfigDict) -> Tokenizer:
    """`lmfuse data prepare`: the one command that downloads (TFDS datasets), then builds the
    Bible datasets the config reads and its tokenizer."""
    tokenizer = corpora.prepare(config, download=True)
    root = corpora.data_dir(config.data)
    print(f"data ready in {root}")
    print(f"tokenizer {tokenizer.path.name}: vocab {tokenizer.vocab_size}, sha256 {tokenizer.sha256[:16]}")
    return tokenizer


def split_stats(
    config: ml_collections.ConfigDict, split: str, tokenizer: Tokenizer
) -> tuple[SplitStats, list[dict]]:
    """Counts for one split; tokens count BOS/EOS as the pipeline adds them."""
    examples = corpora.load_examples(config, split)
    rows = [row for row in examples.dataset if row is not None]
    texts = [text for row in rows for text in row.values()]
    lengths = np.array([len(ids) + 1 for ids in tokenizer.encode_batch(texts)], dtype=np.int64)
    overlong = int((lengths > config.data.max_length).sum())
    skipped = len(examples.dataset) - len(rows)  # views hold None where a side is empty
    stats = SplitStats(split, examples.records, len(rows), skipped, int(lengths.sum()), overlong)
    return stats, rows


def show(config: ml_collections.ConfigDict, n: int = 3) -> list[SplitStats]:
    tokenizer = corpora.load_tokenizer(config)
    data_cfg = config.data
    print(f"corpus {data_cfg.corpus}, view {data_cfg.view}, tokenizer vocab {tokenizer.vocab_size}")
    if data_cfg.corpus == "bible":
        _print_alignment(config)
    all_stats = []
    for split in corpora.SPLITS:
        stats, rows = split_stats(config, split, tokenizer)
        all_stats.append(stats)
        print(
            f"{split:>10}: {stats.records:6d} records, {stats.examples:6d} examples "
            f"({stats.skipped_empty} empty skipped), {stats.tokens:8d} tokens, "
            f"{stats.mean_tokens:5.1f} tokens/example, {stats.overlong} over max_length "
            f"{data_cfg.max_length} ({data_cfg.overlong})"
        )
        for row in rows[:n]:
            for key, text in row.items():
                ids = tokenizer.encode(text)
                print(f"{'':>12}{key}: {tokenizer.decode(ids)}  [{len(ids)} tokens]")
    total = sum(s.records for s in all_stats)
    print(f"{'total':>10}: {total:6d} records")
    return all_stats


def _print_alignment(config: ml_collections.ConfigDict) -> None:
    root = corpora.data_dir(config.data)
    used = set(corpora.bible_versions_used(config))
    for name in corpora.needed_builders(config):
        for version, report in builders.alignment_reports(name, root).items():
            if version in used:
                verdict = "ok" if report["passed"] else "FAILED"
                print(
                    f"  alignment {version}: {report['nonempty']} non-empty of {report['verses']}, "
                    f"spot checks {report['spot_checks_passed']}/{report['spot_checks_total']}, "
                    f"lexical flags {100 * report['lexical_flag_rate']:.3f}% -> {verdict}"
                )
