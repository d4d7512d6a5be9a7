"""`lmfuse data prepare` stores the data report and `lmfuse data show` prints it, reading
nothing else: on users' pair files (the conftest fixtures), so no Bible is built."""

from __future__ import annotations

import contextlib
import io
import json
import shlex

import pytest
from conftest import tiny_s2s_overrides

from lmfuse import cli
from lmfuse.config import load_config
from lmfuse.data import alignment, bible, corpora, report, textfiles, tokenizer

SPEC = "configs/s2s_transformer.py:tiny"


def _overrides(pair_corpus, data_dir) -> list[str]:
    return tiny_s2s_overrides({**pair_corpus, "data_dir": str(data_dir)})


def _refuse(*args, **kwargs):
    raise AssertionError("data show read, built or checked the data itself")


@pytest.fixture
def no_data_access(monkeypatch):
    """Every way `show` could read, build or re-check the data raises."""
    for module, name in [(corpora, "load_examples"), (corpora, "prepare"),
                         (corpora, "load_tokenizer"), (corpora, "bible_sources"),
                         (report, "split_stats"), (report, "build_report"),
                         (tokenizer, "train_tokenizer"), (textfiles, "text_source"),
                         (bible, "check_alignment"), (alignment, "alignment_report")]:
        monkeypatch.setattr(module, name, _refuse)


@pytest.fixture(scope="module")
def prepared(pair_corpus, tmp_path_factory):
    """(data dir, overrides, prepare's stdout) of `lmfuse data prepare` on the pair files."""
    data_dir = tmp_path_factory.mktemp("prepared")
    overrides = _overrides(pair_corpus, data_dir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["data", "prepare", "--config", SPEC, *overrides]) == 0
    return data_dir, overrides, out.getvalue()


def test_prepare_stores_the_counts_and_examples_of_every_split(prepared, pair_corpus):
    data_dir, overrides, out = prepared
    (path,) = (data_dir / report.REPORTS_DIR).iterdir()
    assert f"data report stored in {path}" in out
    config = load_config(SPEC, overrides)
    assert path == report.report_path(config)
    stored = report.DataReport.from_json(path.read_text())
    tok = corpora.load_tokenizer(config)
    assert stored.tokenizer == {"file": str(tok.path), "vocab_size": tok.vocab_size,
                                "sha256": tok.sha256}
    assert stored.alignment == {}  # user files: no Bible alignment to report
    for stats in stored.splits:
        rows = list(corpora.load_examples(config, stats.split).dataset)
        lengths = [len(tok.encode(text)) + 1 for row in rows for text in row.values()]
        assert (stats.records, stats.examples, stats.skipped_empty) == (len(rows), len(rows), 0)
        assert stats.tokens == sum(lengths)
        assert stats.overlong == sum(n > 48 for n in lengths) > 0
        first = rows[: report.STORED_EXAMPLES]
        assert stored.examples[stats.split] == [
            [[key, text, len(tok.encode(text))] for key, text in row.items()] for row in first]
    source, target = pair_corpus["validation"].split("|")
    assert stored.splits[1].records == len(open(source).read().splitlines())
    assert stored.examples["validation"][0][1][1] == open(target).readline().rstrip("\n")


def test_show_prints_the_stored_report_without_touching_the_data(
        prepared, no_data_access, capsys):
    data_dir, overrides, _ = prepared
    assert cli.main(["data", "show", "--config", SPEC, "--n", "2", *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    stored = report.DataReport.from_json(
        report.report_path(load_config(SPEC, overrides)).read_text())
    vocab = stored.tokenizer["vocab_size"]
    assert lines[0] == f"corpus text, view translate, tokenizer vocab {vocab}"
    validation = stored.splits[1]
    assert lines[6] == (
        f"validation: {validation.records:6d} records, {validation.examples:6d} examples (0 empty "
        f"skipped), {validation.tokens:8d} tokens, {validation.mean_tokens:5.1f} tokens/example, "
        f"{validation.overlong} over max_length 48 (truncate)")
    (_, text, length), _ = stored.examples["validation"][0]
    assert lines[7] == f"{'':>12}source: {text}  [{length} tokens]"
    assert len(lines) == 1 + 3 * (1 + 2 * 2) + 1  # header, 3 splits of 2 pairs, total
    assert lines[-1] == f"     total: {sum(s.records for s in stored.splits):6d} records"


def test_settings_the_counts_do_not_depend_on_share_the_report(prepared, no_data_access, capsys):
    data_dir, overrides, _ = prepared
    extra = ["--config.data.seq_len=64", "--config.data.shuffle=false", "--config.train.steps=3"]
    assert cli.main(["data", "show", "--config", SPEC, "--n", "0", *overrides, *extra]) == 0
    assert "validation:" in capsys.readouterr().out


def test_show_without_a_report_names_the_prepare_command_and_writes_nothing(
        pair_corpus, tmp_path, no_data_access, capsys):
    data_dir = tmp_path / "data"
    overrides = _overrides(pair_corpus, data_dir)
    assert cli.main(["data", "show", "--config", SPEC, *overrides]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    cause, _, command = line.partition("; run: ")
    assert cause == (f"lmfuse: error: no data report for this config in {data_dir} (data prepare "
                     "stores one per config, reusing what is already built)")
    # The command is quoted for a shell: the pair files' '|' would otherwise start a pipe.
    assert shlex.split(command) == ["lmfuse", "data", "prepare", "--config", SPEC, *overrides]
    assert "'--config.data.files.train=" in command
    assert not data_dir.exists()


def test_a_changed_setting_or_edited_file_asks_for_a_new_prepare(
        prepared, pair_corpus, tmp_path, no_data_access, capsys):
    data_dir, overrides, _ = prepared
    assert cli.main(["data", "show", "--config", SPEC, *overrides,
                     "--config.data.max_length=64"]) == 2
    assert "no data report for this config" in capsys.readouterr().err
    # A file edited in place names another report.
    source, target = pair_corpus["test"].split("|")
    copy = tmp_path / "test.kjv"
    copy.write_text(open(source).read())
    config = load_config(SPEC, [*overrides, f"--config.data.files.test={copy}|{target}"])
    before = report.report_path(config)
    copy.write_text(open(source).read().replace("Jonah", "Jonas"))
    assert report.report_path(config) != before


def test_show_refuses_more_examples_than_prepare_stores(prepared, capsys):
    _, overrides, _ = prepared
    n = report.STORED_EXAMPLES + 1
    assert cli.main(["data", "show", "--config", SPEC, "--n", str(n), *overrides]) == 2
    assert capsys.readouterr().err == (
        f"lmfuse: error: --n {n} is out of range; data prepare stores {report.STORED_EXAMPLES} "
        f"examples per split, pass --n 0 to {report.STORED_EXAMPLES}\n")


def test_a_report_of_another_format_is_not_read(prepared, tmp_path):
    data_dir, overrides, _ = prepared
    path = report.report_path(load_config(SPEC, overrides))
    raw = json.loads(path.read_text())
    assert report.DataReport.from_json(json.dumps(raw)) is not None
    assert report.DataReport.from_json(json.dumps({**raw, "format": 0})) is None
    assert report.DataReport.from_json("{not json") is None
