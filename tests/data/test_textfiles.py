"""Tests for reading users' own line-per-example text files."""

import grain
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.data import textfiles
from lmfuse.errors import LmfuseError


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_lines_and_blank_lines_counted(tmp_path):
    path = _write(tmp_path / "a.txt", b"one\n\ntwo  \n   \n\t\n three\n")
    lines, stats = textfiles.read_lines(path)
    assert lines == ["one", "two  ", " three"]  # only the line ending is removed
    assert stats == textfiles.ReadStats(lines=6, skipped_empty=3)
    assert stats.kept == 3


def test_crlf_and_missing_final_newline(tmp_path):
    path = _write(tmp_path / "crlf.txt", b"alpha\r\nbeta\r\n\r\ngamma")
    lines, stats = textfiles.read_lines(path)
    assert lines == ["alpha", "beta", "gamma"]
    assert stats == textfiles.ReadStats(lines=4, skipped_empty=1)


def test_only_newline_splits_lines(tmp_path):
    # str.splitlines would break these apart; they are content here.
    text = "a\x0cb\x1cc\u2028d\u0085e\rf"
    lines, _ = textfiles.read_lines(_write(tmp_path / "u.txt", (text + "\n").encode()))
    assert lines == [text]


def test_bom_dropped_only_at_file_start(tmp_path):
    path = _write(tmp_path / "bom.txt", b"\xef\xbb\xbfhead\n\xef\xbb\xbfbody\n")
    assert textfiles.read_lines(path)[0] == ["head", "\ufeffbody"]


def test_invalid_utf8_names_file_line_and_offset(tmp_path):
    path = _write(tmp_path / "bad.txt", b"fine\nstill fine\nbad \xff here\n")
    with pytest.raises(
        LmfuseError, match=r"bad\.txt:3: invalid UTF-8 \(bytes ff at byte offset 20 "
    ):
        textfiles.read_lines(path)


def test_invalid_utf8_in_parallel_target(tmp_path):
    src = _write(tmp_path / "src.txt", b"a\nb\n")
    tgt = _write(tmp_path / "tgt.txt", b"x\n\xc3(\n")
    with pytest.raises(
        LmfuseError, match=r"tgt\.txt:2: invalid UTF-8 \(bytes c3 at byte offset 2 "
    ):
        textfiles.read_parallel(src, tgt)


def test_missing_file(tmp_path):
    with pytest.raises(LmfuseError, match=r"text file not found: .*nope\.txt; check the path"):
        textfiles.read_lines(tmp_path / "nope.txt")
    with pytest.raises(LmfuseError, match="cannot read text file"):
        textfiles.read_lines(tmp_path)  # a directory


def test_parallel_pairs_and_skips(tmp_path):
    src = _write(tmp_path / "src.txt", b"Hallo\n\nWelt\nganz\n")
    tgt = _write(tmp_path / "tgt.txt", b"Hello\nlost\n  \nquite\n")
    pairs, stats = textfiles.read_parallel(src, tgt)
    assert pairs == [("Hallo", "Hello"), ("ganz", "quite")]
    assert stats == textfiles.ReadStats(lines=4, skipped_empty=2)


def test_parallel_length_mismatch(tmp_path):
    src = _write(tmp_path / "src.txt", b"a\nb\nc\n")
    tgt = _write(tmp_path / "tgt.txt", b"x\ny\n")
    with pytest.raises(LmfuseError, match=r"src\.txt has 3 lines but .*tgt\.txt has 2"):
        textfiles.read_parallel(src, tgt)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\ufeff")
        )
        .map(lambda s: s.rstrip("\r"))  # a trailing CR would be read as part of CRLF
        .filter(lambda s: s.strip()),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_round_trip_content(tmp_path_factory, lines, ending):
    path = tmp_path_factory.mktemp("rt") / "lines.txt"
    path.write_bytes(ending.join(lines).encode() + ending.encode())
    got, stats = textfiles.read_lines(path)
    assert got == lines
    assert stats.skipped_empty == 0 and stats.lines == len(lines)


def test_text_source_lm(tmp_path):
    train = _write(tmp_path / "train.txt", "first ▁ line\n\nsecond\n".encode())
    ds = textfiles.text_source({"train": str(train)}, "train", view="lm")
    assert isinstance(ds, grain.MapDataset)
    assert [ds[i] for i in range(len(ds))] == [{"text": "first ▁ line"}, {"text": "second"}]


def test_text_source_translate(tmp_path):
    _write(tmp_path / "s.txt", b"eins\nzwei\n")
    _write(tmp_path / "t.txt", b"one\ntwo\n")
    paths = {"valid": f"{tmp_path / 's.txt'}|{tmp_path / 't.txt'}"}
    ds = textfiles.text_source(paths, "valid", view="translate")
    assert [ds[i] for i in range(len(ds))] == [
        {"source": "eins", "target": "one"},
        {"source": "zwei", "target": "two"},
    ]


@pytest.mark.parametrize(
    ("paths", "split", "view", "message"),
    [
        (
            {"train": "a.txt"},
            "test",
            "lm",
            r"no text file for split 'test'; configured splits: train",
        ),
        (None, "train", "lm", "no text files are configured"),
        ({"train": "a.txt"}, "train", "seq", "unknown data view 'seq'"),
        ({"train": "a.txt"}, "train", "translate", r"'source\.txt\|target\.txt', got 'a\.txt'"),
        ({"train": "a|b|c"}, "train", "translate", "parallel corpus"),
    ],
)
def test_text_source_errors(paths, split, view, message):
    with pytest.raises(LmfuseError, match=message):
        textfiles.text_source(paths, split, view=view)
