"""Users' own plain-text corpora: one example per line, UTF-8.

* Lines are split on "\\n" only, and one trailing "\\r" is removed (CRLF files). Nothing else
  is stripped, so examples keep their exact content, including leading/trailing spaces and
  characters that `str.splitlines` would treat as line breaks (form feed, U+2028...).
* A UTF-8 byte-order mark at the very start of a file is dropped: it marks the encoding
  (some editors add it), it isn't text.
* Empty and whitespace-only lines are skipped and counted in `ReadStats`.
* Invalid UTF-8 is an error naming ``path:line`` and the byte offset, so it can be fixed at
  the source instead of silently turning into replacement characters.

Parallel (translation) corpora are two line-aligned files: line i of the source file
translates line i of the target file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from lmfuse.errors import LmfuseError

if TYPE_CHECKING:
    import grain

logger = logging.getLogger(__name__)

VIEWS = ("lm", "translate")
PAIR_SEPARATOR = "|"  # "source.txt|target.txt" names a parallel corpus in a config
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass
class ReadStats:
    """`lines`: lines (or line pairs) read, skipped ones included; `skipped_empty`: skipped."""

    lines: int
    skipped_empty: int

    @property
    def kept(self) -> int:
        return self.lines - self.skipped_empty


def read_lines(path: str | os.PathLike) -> tuple[list[str], ReadStats]:
    """The non-blank lines of a UTF-8 file, without their line endings."""
    lines = _decoded_lines(path)
    kept = [line for line in lines if not _blank(line)]
    return kept, ReadStats(lines=len(lines), skipped_empty=len(lines) - len(kept))


def read_parallel(
    source_path: str | os.PathLike, target_path: str | os.PathLike
) -> tuple[list[tuple[str, str]], ReadStats]:
    """(source, target) pairs from two line-aligned files; pairs with a blank side are skipped."""
    sources = _decoded_lines(source_path)
    targets = _decoded_lines(target_path)
    if len(sources) != len(targets):
        raise LmfuseError(
            f"parallel files differ in length: {os.fspath(source_path)} has {len(sources)} "
            f"lines but {os.fspath(target_path)} has {len(targets)}; they must be line-aligned"
        )
    pairs = [(s, t) for s, t in zip(sources, targets, strict=True) if not (_blank(s) or _blank(t))]
    return pairs, ReadStats(lines=len(sources), skipped_empty=len(sources) - len(pairs))


def text_source(paths: Mapping[str, str] | None, split: str, *, view: str) -> grain.MapDataset:
    """A `grain.MapDataset` of {'text'} (view 'lm') or {'source', 'target'} (view 'translate').

    `paths` maps split names to a file, or for 'translate' to "source.txt|target.txt".
    """
    import grain

    if view not in VIEWS:
        raise LmfuseError(f"unknown data view {view!r}; use one of: {', '.join(VIEWS)}")
    if not paths:
        raise LmfuseError(
            "no text files are configured; map split names to files in the data config"
        )
    if split not in paths:
        raise LmfuseError(
            f"no text file for split {split!r}; configured splits: {', '.join(sorted(paths))}"
        )
    spec = paths[split]
    if view == "lm":
        lines, stats = read_lines(spec)
        examples = [{"text": line} for line in lines]
    else:
        pairs, stats = read_parallel(*_split_pair(spec, split))
        examples = [{"source": s, "target": t} for s, t in pairs]
    logger.info(
        "%s (%s): %d examples, %d blank lines skipped", spec, split, stats.kept, stats.skipped_empty
    )
    return grain.MapDataset.source(examples)


def _split_pair(spec: str, split: str) -> tuple[str, str]:
    parts = spec.split(PAIR_SEPARATOR)
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise LmfuseError(
            f"split {split!r} needs a parallel corpus written as 'source.txt|target.txt', "
            f"got {spec!r}"
        )
    return parts[0].strip(), parts[1].strip()


def _blank(line: str) -> bool:
    return not line.strip()


def _decoded_lines(path: str | os.PathLike) -> list[str]:
    """Every line of `path` (blank ones included) decoded as UTF-8, line endings removed."""
    name = os.fspath(path)
    lines = []
    offset = 0  # byte offset of the current line in the file
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                lines.append(_decode_line(raw, name, lineno, offset))
                offset += len(raw)
    except FileNotFoundError:
        raise LmfuseError(
            f"text file not found: {name}; check the path in the data config"
        ) from None
    except OSError as e:
        raise LmfuseError(f"cannot read text file {name}: {e.strerror}") from None
    return lines


def _decode_line(raw: bytes, name: str, lineno: int, offset: int) -> str:
    start = len(_BOM) if lineno == 1 and raw.startswith(_BOM) else 0
    end = len(raw)
    if raw.endswith(b"\n"):
        end -= 2 if raw.endswith(b"\r\n") else 1
    try:
        return raw[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[start + e.start : start + e.end]
        raise LmfuseError(
            f"{name}:{lineno}: invalid UTF-8 (bytes {bad.hex(' ')} at byte offset "
            f"{offset + start + e.start} of the file); re-save the file as UTF-8"
        ) from None
