"""Preparing a dataset either finishes or leaves the data directory as it found it.

TFDS writes a dataset's metadata, its download folders and an `.incomplete` copy of the
dataset before the first record, and leaves them all behind when preparation fails. The next
run then meets half-built folders. `no_partial_paths` notes what the data directory holds
before a preparation and removes whatever a failed one added.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _paths(root: Path) -> set[Path]:
    found: set[Path] = set()
    for folder, dirs, files in os.walk(root):
        found.update(Path(folder, name) for name in (*dirs, *files))
    return found


@contextlib.contextmanager
def no_partial_paths(root: str | os.PathLike) -> Iterator[None]:
    """On any exception inside, removes every file and folder under `root` that was not there
    when the block started (and `root` itself if it was created), then re-raises."""
    root = Path(root)
    existed = root.exists()
    before = _paths(root) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
        elif root.is_dir():
            added = _paths(root) - before
            for path in sorted(added, key=lambda p: len(p.parts)):
                if path.parent in added:
                    continue  # removed with its (new) folder
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise
