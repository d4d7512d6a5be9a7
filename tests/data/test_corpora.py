"""Corpus views over the prepared Bible datasets, and `lmfuse data prepare/show` end to end."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli

from lmfuse.config import load_config
from lmfuse.data import bible_text, corpora
from lmfuse.errors import LmfuseError

CONFIG = "configs/data_bible.py"


def overrides(data_dir, **extra) -> list[str]:
    # A small tokenizer keeps preparation quick; the corpus itself is the full Bible.
    values = {"data.data_dir": str(data_dir), "tokenizer.versions": "asv,kjv",
              "tokenizer.vocab_size": 1000}
    values.update(extra)
    return [f"--config.{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bible_data")
    result = run_cli(["data", "prepare", "--config", CONFIG,
                      *overrides(root, **{"data.versions": "asv,rv1909"})])
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def config(data_dir, variant="", **extra):
    spec = f"{CONFIG}:{variant}" if variant else CONFIG
    return load_config(spec, overrides(data_dir, **extra))


def test_data_show_counts_sum_to_kjv_and_alignment_passes(data_dir):
    result = run_cli(["data", "show", "--config", CONFIG, "--n", "2", *overrides(data_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    records = {m.group(1): int(m.group(2))
               for m in re.finditer(r"^\s*(train|validation|test):\s+(\d+) records", out, re.M)}
    assert records == {"train": 27_625, "validation": 1_642, "test": 1_835}
    assert re.search(r"total:\s+31102 records", out)
    for version in ("asv", "kjv"):
        assert re.search(rf"alignment {version}: .* -> ok", out), out
    assert "FAILED" not in out
    assert "In the beginning God created the heavens and the earth." in out


def test_bbe_is_recovered_and_validated_in_the_dataset(data_dir):
    records = corpora.read_bible_records(("bible",), "train", data_dir)
    by_id = {r["verse_id"]: r for r in records}
    john_3_16 = by_id[43_003_016]["bbe"].decode()
    assert john_3_16.startswith("For God had such love for the world")
    assert by_id[1_043_001]["bbe"].decode() == "Now the land was in bitter need of food."


def test_translate_view_pairs_match_the_measured_counts(data_dir):
    cfg = config(data_dir, "translate")
    # Views skip pairs with an empty side lazily; count what iteration yields. (The train split,
    # 27,614 pairs, is counted in test_bible without the cost of decoding it here.)
    counts = {split: sum(1 for _ in corpora.load_examples(cfg, split).dataset)
              for split in ("validation", "test")}
    assert counts == {"validation": 1_637, "test": 1_835}
    first = corpora.load_examples(cfg, "train").dataset[0]
    assert first["source"].startswith("In the beginning God created the heaven and the earth")
    assert first["target"] == "In the beginning God created the heavens and the earth."


def test_public_source_uses_every_other_version_with_tags(data_dir):
    cfg = config(data_dir, "translate", **{"data.source": "public", "data.tag_source": True})
    examples = corpora.load_examples(cfg, "validation").dataset
    tags = {ex["source"].split(" ", 1)[0] for ex in examples}
    others = {f"<{v}>" for v in bible_text.VALIDATED_VERSIONS if v != "asv"}
    assert tags == others
    assert all(ex["target"] for ex in examples)


def test_brackets_option_changes_kjv_only(data_dir):
    kept = corpora.load_examples(config(data_dir, "translate"), "test").dataset
    dropped = corpora.load_examples(
        config(data_dir, "translate", **{"data.keep_brackets": False}), "test").dataset
    with_brackets = sum("[" in ex["source"] for ex in kept)
    assert with_brackets > 100
    assert sum("[" in ex["source"] for ex in dropped) == 0
    assert [ex["target"] for ex in kept] == [ex["target"] for ex in dropped]


def test_spanish_aligns_with_english_by_verse(data_dir):
    cfg = config(data_dir, "translate", **{"data.source": "rv1909"})
    first = corpora.load_examples(cfg, "train").dataset[0]
    assert first["source"].lower().startswith("en el principio cri")
    assert first["target"].startswith("In the beginning God created")


def test_train_fractions_are_nested_subsets(data_dir):
    def sources(fraction):
        cfg = config(data_dir, "translate", **{"data.train_fraction": fraction})
        return {ex["source"] for ex in corpora.load_examples(cfg, "train").dataset}

    small, large = sources(0.01), sources(0.05)
    assert 250 <= len(small) <= 300 and small < large


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"data.versions": "nkjv"}, "unknown Bible version 'nkjv'"),
        ({"data.versions": "dr"}, "versification"),
        ({"data.view": "poem"}, "unknown data.view 'poem'"),
        ({"data.corpus": "bibel"}, "unknown data.corpus 'bibel'"),
    ],
)
def test_bad_corpus_settings_are_one_line_errors(data_dir, override, fragment):
    with pytest.raises(LmfuseError) as info:
        corpora.load_examples(config(data_dir, **override), "train")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unprepared_data_dir_says_how_to_prepare(tmp_path):
    with pytest.raises(LmfuseError, match="lmfuse data prepare"):
        corpora.load_examples(config(tmp_path), "train")


def test_data_show_counts_over_long_examples(data_dir):
    from lmfuse.data import report

    cfg = config(data_dir, **{"data.max_length": 24})
    tokenizer = corpora.load_tokenizer(cfg)
    stats, rows = report.split_stats(cfg, "validation", tokenizer)
    lengths = [len(tokenizer.encode(row["text"])) + 1 for row in rows]
    assert stats.overlong == sum(n > 24 for n in lengths) > 100
    assert stats.tokens == sum(lengths)
    assert stats.examples + stats.skipped_empty == 1_642
