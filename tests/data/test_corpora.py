"""Corpus views over the prepared Bible datasets, and `lmfuse data prepare/show` end to end.

The module's data directory is made by the demo's own preparation (`make demo`'s `lmfuse data
prepare --config configs/s2s_transformer.py:tiny`, with a smaller tokenizer) while the SWORD
library is made unavailable: English configs must never need Debian's sword-text-sparv.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli

from lmfuse.config import load_config
from lmfuse.data import bible_text, builders, corpora, sword
from lmfuse.errors import LmfuseError

CONFIG = "configs/data_bible.py"
DEMO_CONFIG = "configs/s2s_transformer.py:tiny"  # what `make demo` prepares


# A small tokenizer, trained on the first verses, keeps preparation quick; the corpus itself is
# the full Bible.
SMALL_TOKENIZER = {"tokenizer.vocab_size": 1000, "tokenizer.max_sentences": 20_000}


def overrides(data_dir, **extra) -> list[str]:
    values = {"data.data_dir": str(data_dir), **SMALL_TOKENIZER}
    values.update(extra)
    return [f"--config.{k}={v}" for k, v in values.items()]


def no_sword(tmp_path_factory) -> dict[str, str]:
    """The environment of a machine without Debian's SWORD library."""
    return {sword.SWORD_DIR_ENV: str(tmp_path_factory.mktemp("no_sword"))}


@pytest.fixture(scope="module")
def demo_prepared(tmp_path_factory):
    """(data dir, finished process) of the demo's data preparation, SWORD unavailable. The
    tokenizer keeps the demo's settings but for its size (the versions it reads are the rule
    under test), so the module's other tests reuse the Bible it builds."""
    root = tmp_path_factory.mktemp("bible_data")
    small = [f"--config.{k}={v}" for k, v in SMALL_TOKENIZER.items()]
    result = run_cli(["data", "prepare", "--config", DEMO_CONFIG, "--data_dir", str(root), *small],
                     env=no_sword(tmp_path_factory))
    return root, result, sorted(path.name for path in root.iterdir())


@pytest.fixture(scope="module")
def data_dir(demo_prepared):
    root, result, _ = demo_prepared
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def spanish_data_dir(data_dir):
    """The same directory with `bible_es` added (needs the SWORD module, else skips)."""
    if not sword.has_module():
        pytest.skip(f"needs the SWORD module spaRV1909eb in {sword.sword_home()} "
                    "(apt-get install sword-text-sparv)")
    builders.prepare("bible_es", data_dir)
    return data_dir


def config(data_dir, variant="", **extra):
    spec = f"{CONFIG}:{variant}" if variant else CONFIG
    return load_config(spec, overrides(data_dir, **extra))


@pytest.fixture(scope="module")
def bible_shown(data_dir):
    """stdout of `lmfuse data show` for CONFIG, after `lmfuse data prepare` stored its report
    (the demo prepared another view: this prepare builds nothing, it counts)."""
    prepare = run_cli(["data", "prepare", "--config", CONFIG, *overrides(data_dir)])
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    assert "preparing" not in prepare.stdout
    result = run_cli(["data", "show", "--config", CONFIG, "--n", "2", *overrides(data_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_data_show_counts_sum_to_kjv_and_alignment_passes(bible_shown):
    out = bible_shown
    records = {m.group(1): int(m.group(2))
               for m in re.finditer(r"^\s*(train|validation|test):\s+(\d+) records", out, re.M)}
    assert records == {"train": 27_625, "validation": 1_642, "test": 1_835}
    assert re.search(r"total:\s+31102 records", out)
    for version in ("asv", "kjv"):
        assert re.search(rf"alignment {version}: .* -> ok", out), out
    assert "FAILED" not in out
    assert "In the beginning God created the heavens and the earth." in out


def test_data_show_reads_the_stored_report_and_checks_no_version_again(
        data_dir, bible_shown, monkeypatch, capsys):
    """The alignment checks ran when the dataset was built, and prepare stored the counts:
    show re-reads neither the versions nor the records."""
    from lmfuse import cli
    from lmfuse.data import alignment, bible, report

    def refuse(*args, **kwargs):
        raise AssertionError("data show checked or read the Bible again")

    for module, name in [(bible, "check_alignment"), (bible, "load_validated"),
                         (bible_text, "read_version"), (alignment, "alignment_report"),
                         (builders, "alignment_reports"), (corpora, "bible_sources"),
                         (corpora, "load_tokenizer"), (report, "split_stats")]:
        monkeypatch.setattr(module, name, refuse)
    assert cli.main(["data", "show", "--config", CONFIG, "--n", "2", *overrides(data_dir)]) == 0
    assert capsys.readouterr().out == bible_shown


def test_data_show_of_an_unprepared_view_names_its_prepare_command(data_dir, capsys):
    from lmfuse import cli

    args = ["--config", f"{CONFIG}:translate", *overrides(data_dir, **{"data.source": "ylt"})]
    assert cli.main(["data", "show", *args]) == 2
    assert capsys.readouterr().err == (
        f"lmfuse: error: no data report for this config in {data_dir} (data prepare stores one "
        f"per config, reusing what is already built); run: lmfuse data prepare {' '.join(args)}\n")


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


def test_spanish_aligns_with_english_by_verse(spanish_data_dir):
    cfg = config(spanish_data_dir, "translate", **{"data.source": "rv1909"})
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
    """Reading (evaluation, `data show`) never builds the Bible: one line, nothing written."""
    with pytest.raises(LmfuseError, match="lmfuse data prepare") as info:
        corpora.load_examples(config(tmp_path / "data"), "train")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists()


def test_data_show_counts_over_long_examples(data_dir):
    from lmfuse.data import report

    cfg = config(data_dir, **{"data.max_length": 24})
    tokenizer = corpora.load_tokenizer(cfg)
    stats, first = report.split_stats(cfg, "validation", tokenizer)
    rows = list(corpora.load_examples(cfg, "validation").dataset)  # lazy reads, None skipped
    lengths = [len(tokenizer.encode(row["text"])) + 1 for row in rows]
    assert stats.overlong == sum(n > 24 for n in lengths) > 100
    assert stats.tokens == sum(lengths)
    assert stats.examples == len(rows) and stats.examples + stats.skipped_empty == 1_642
    assert first == rows[: report.STORED_EXAMPLES]


def test_in_memory_examples_equal_the_lazy_ones(data_dir):
    cfg = config(data_dir, "translate", **{"data.source": "public", "data.tag_source": True})
    lazy = corpora.load_examples(cfg, "test").dataset
    eager = corpora.load_examples(cfg, "test", in_memory=True).dataset
    assert len(lazy) == len(eager) == 1_835 * 6
    assert [lazy[i] for i in range(len(lazy))] == [eager[i] for i in range(len(eager))]


def test_in_memory_training_examples_equal_the_lazy_ones(data_dir):
    """The training loop reads a split in memory for a run of an epoch or more: the same
    examples, so the same batches, on a train fraction as the fusion study uses."""
    cfg = config(data_dir, "translate", **{"data.source": "ylt", "data.train_fraction": 0.05})
    lazy = corpora.load_examples(cfg, "train").dataset
    eager = corpora.load_examples(cfg, "train", in_memory=True).dataset
    assert len(lazy) == len(eager) > 1_000
    assert list(lazy) == list(eager)


# --- what a config needs, and nothing more ----------------------------------------------------


def test_demo_preparation_succeeds_without_touching_sword(demo_prepared):
    root, result, written = demo_prepared
    assert result.returncode == 0, result.stderr[-3000:]
    assert builders.is_prepared("bible", root)
    # No bible_es, and no cache/rv1909.json: SWORD's text was never read.
    assert written == ["bible", "downloads", "reports", "tokenizers"]
    preparing = [line for line in result.stdout.splitlines() if line.startswith("preparing")]
    assert preparing == [f"preparing the Bible dataset 'bible' in {root} from the pythonbible "
                         "packages"], result.stdout
    assert re.search(r"^tokenizer .*: vocab 1000, sha256 ", result.stdout, re.M)
    assert re.search(rf"^data report stored in {root}/reports/data-\w+\.json ", result.stdout, re.M)


def test_config_asking_for_rv1909_without_sword_is_one_line_before_any_building(
        tmp_path, tmp_path_factory):
    root = tmp_path / "data"
    result = run_cli(["data", "prepare", "--config", DEMO_CONFIG, "--data_dir", str(root),
                      "--config.data.source=rv1909"], env=no_sword(tmp_path_factory))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lmfuse: error: the Spanish Bible (rv1909) needs the SWORD module")
    assert "apt-get install sword-text-sparv" in lines[0]
    assert not root.exists() or not any(root.iterdir())  # not two minutes of English first


@pytest.mark.parametrize(
    "spec, extra, tokenizer, needed",
    [
        ("configs/lm_transformer.py:tiny", {}, "all", ("bible",)),
        (DEMO_CONFIG, {}, "all", ("bible",)),
        ("configs/carlson/public_bbe.py", {}, "all", ("bible",)),
        (DEMO_CONFIG, {"data.source": "rv1909"}, "all,rv1909", ("bible", "bible_es")),
        (DEMO_CONFIG, {"data.target": "rv1909"}, "all,rv1909", ("bible", "bible_es")),
        ("configs/lm_transformer.py:tiny", {"data.versions": "asv,rv1909"}, "all,rv1909",
         ("bible", "bible_es")),
        # An LM told the study's data.source=rv1909 keeps the seq2seq model's vocabulary.
        ("configs/lm_transformer.py:tiny", {"data.source": "rv1909"}, "all,rv1909",
         ("bible", "bible_es")),
        (DEMO_CONFIG, {"tokenizer.versions": "asv,kjv"}, "asv,kjv", ("bible",)),
        (DEMO_CONFIG, {"tokenizer.versions": "all,rv1909"}, "all,rv1909", ("bible", "bible_es")),
        (DEMO_CONFIG, {"data.corpus": "text"}, "all", ()),
    ],
)
def test_default_tokenizer_text_follows_the_config_not_the_machine(
        monkeypatch, tmp_path, spec, extra, tokenizer, needed):
    cfg = load_config(spec, [f"--config.{k}={v}" for k, v in extra.items()])
    for library in (tmp_path, Path(sword.DEFAULT_SWORD_DIR)):  # with and without SWORD
        monkeypatch.setenv(sword.SWORD_DIR_ENV, str(library))
        assert cfg.tokenizer.versions == extra.get("tokenizer.versions", "")
        assert corpora.tokenizer_spec(cfg) == tokenizer
        assert corpora.needed_builders(cfg) == needed


def test_lm_and_seq2seq_of_the_demo_share_one_tokenizer_text():
    lm, s2s = (load_config(spec) for spec in ("configs/lm_transformer.py:tiny", DEMO_CONFIG))
    assert corpora.tokenizer_versions(lm) == corpora.tokenizer_versions(s2s)
    assert corpora.tokenizer_versions(lm) == bible_text.VALIDATED_VERSIONS


def test_training_builds_a_missing_bible_with_one_line(monkeypatch, tmp_path, capsys):
    """`lmfuse train` calls prepare(config) (no download): the Bible, local, is built on first
    use, and the one line says so and names the command that does it ahead."""
    built = []
    monkeypatch.setattr(builders, "is_prepared", lambda name, root: name in built)
    monkeypatch.setattr(builders, "prepare", lambda name, root: built.append(name))
    monkeypatch.setattr(corpora, "load_tokenizer", lambda config: "tokenizer")
    monkeypatch.setenv(sword.SWORD_DIR_ENV, str(tmp_path / "no_sword"))
    cfg = load_config(DEMO_CONFIG, [f"--config.data.data_dir={tmp_path}"])
    assert corpora.prepare(cfg) == "tokenizer"
    assert built == ["bible"]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"preparing the Bible dataset 'bible' in {tmp_path} from the pythonbible "
                   "packages (not prepared yet; `lmfuse data prepare --config <config>` does "
                   "this ahead)"]
    corpora.prepare(cfg)  # prepared: silent
    assert built == ["bible"] and capsys.readouterr().out == ""
