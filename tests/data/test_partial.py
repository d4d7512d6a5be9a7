"""A failed preparation leaves the data directory as it found it."""

from __future__ import annotations

import pytest

from lmfuse.data import partial


def test_failure_removes_only_what_it_added(tmp_path):
    (tmp_path / "bible" / "1.0.0").mkdir(parents=True)
    (tmp_path / "bible" / "1.0.0" / "dataset_info.json").write_text("{}")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "old.tar").write_text("kept")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(OSError, match="disk full"), partial.no_partial_paths(tmp_path):
        (tmp_path / "lm1b" / "1.1.0.incompleteXYZ").mkdir(parents=True)
        (tmp_path / "lm1b" / "1.1.0.incompleteXYZ" / "shard-0").write_text("half")
        (tmp_path / "downloads" / "new.tar.tmp").write_text("half")
        (tmp_path / "bible" / ".config").mkdir()
        raise OSError("disk full")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_created_data_dir_is_removed_on_failure(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt), partial.no_partial_paths(root):
        (root / "wmt14_translate" / "de-en").mkdir(parents=True)
        raise KeyboardInterrupt
    assert not root.exists()


def test_success_keeps_everything(tmp_path):
    with partial.no_partial_paths(tmp_path / "data"):
        (tmp_path / "data" / "bible").mkdir(parents=True)
    assert (tmp_path / "data" / "bible").is_dir()
