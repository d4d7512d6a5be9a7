"""The paths the commands read and write, checked before any work starts.

A workdir that is a file, a read-only workdir, or an output file nobody may write is a
one-line `LmfuseError` naming the fix, raised before a model is loaded or a step is run, so
no computed result is lost to a traceback at the end. Writing (`write_files`) turns an
`OSError` that slips past the checks (a full disk, a race) into the same kind of line.

Read-only is judged by `os.access`, which also reports a read-only mount (EROFS).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmfuse.errors import LmfuseError

# Appended to by training, so it needs write permission itself; everything else training
# writes is created or replaced in a directory (checked as a directory).
APPENDED = ("metrics.jsonl",)


def workdir_to_read(workdir: str, flag: str = "--workdir") -> None:
    """A workdir given to read: a path that is a file is named as such. A missing one is left to
    the checkpoint reader, whose message says to train first."""
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise LmfuseError(f"{flag} {workdir} is a file, not a directory; pass the workdir "
                          "lmfuse train wrote")


def workdir_to_write(workdir: str) -> None:
    """A workdir `lmfuse train` will write: a directory (or creatable as one) whose folders
    that training writes are writable, and metrics.jsonl too."""
    path = Path(workdir)
    fix = "make it writable or pass another --workdir"
    if not path.exists():
        parent = _nearest_existing(path)
        if not parent.is_dir():
            raise LmfuseError(f"--workdir {workdir} cannot be created: {parent} is a file, not a "
                              "directory; pass another --workdir")
        if not _writable_dir(parent):
            raise LmfuseError(f"--workdir {workdir} cannot be created: {parent} is not writable; "
                              "pass another --workdir")
        return
    if not path.is_dir():
        raise LmfuseError(f"--workdir {workdir} is a file, not a directory; pass a directory "
                          "(it is created if missing)")
    # Training writes in the workdir, tensorboard/ and checkpoints/, and deletes rotated-out
    # checkpoints (every folder under checkpoints/); other folders it never touches.
    folders = [path, path / "tensorboard"]
    for folder, _, _ in os.walk(path / "checkpoints"):
        folders.append(Path(folder))
    for folder in folders:
        if folder.exists() and not _writable_dir(folder):
            where = "" if folder == path else f" ({folder} is read-only)"
            raise LmfuseError(f"--workdir {workdir} is not writable{where}; {fix}")
    for name in APPENDED:
        if (path / name).exists() and not os.access(path / name, os.W_OK):
            raise LmfuseError(f"--workdir {workdir} is not writable ({path / name} is "
                              f"read-only); {fix}")


def output_to_write(path: Path, fix: str) -> None:
    """A file a command will write (created with its missing folders): not a directory, and
    writable, or creatable in a writable folder. `fix` ends the message: how to write elsewhere."""
    if path.is_dir():
        raise LmfuseError(f"cannot write {path}: it is a directory; {fix}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise LmfuseError(f"cannot write {path}: the file is read-only; {fix}")
        return
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise LmfuseError(f"cannot write {path}: {parent} is a file, not a directory; {fix}")
    if not _writable_dir(parent):
        raise LmfuseError(f"cannot write {path}: {parent} is not writable; {fix}")


def write_files(files: Mapping[Path, str], fix: str) -> None:
    """Writes each file (UTF-8), creating missing folders; an OSError is one line."""
    for path, text in files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as e:
            raise LmfuseError(f"cannot write {path} ({e.strerror or e}); {fix}") from None


def json_text(value: Any) -> str:
    """`value` as indented JSON, every non-finite number as null (`finite_or_null`)."""
    from lmfuse.train.metrics_log import finite_or_null

    return json.dumps(finite_or_null(value), indent=2, allow_nan=False) + "\n"


def read_text_lines(path: str, flag: str) -> tuple[list[str], int]:
    """(lines, how many held invalid UTF-8) of a user's text file. Invalid bytes are read as
    U+FFFD (errors='replace'), which the tokenizer's byte fallback encodes like any character
    outside the vocabulary, so a stray Latin-1 byte costs one character, not the run. Line
    ends are universal (\\n, \\r\\n, \\r), as text mode reads them; a final newline ends the
    last line and adds none."""
    file = Path(path)
    if not file.exists():
        raise LmfuseError(f"{flag} {path} does not exist")
    if not file.is_file():
        raise LmfuseError(f"{flag} {path} is not a file; give a text file, one line each")
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise LmfuseError(f"cannot read {flag} {path} ({e.strerror or e})") from None
    # \r and \n never occur inside a multi-byte UTF-8 sequence, so splitting bytes is safe.
    chunks = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    lines, invalid = [], 0
    for chunk in chunks:
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            invalid += 1
            lines.append(chunk.decode("utf-8", errors="replace"))
    return lines, invalid


def _writable_dir(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
