"""Bible verse ids, book names, references and the Carlson et al. 2018 book splits.

A verse id is `book*1_000_000 + chapter*1000 + verse` with books numbered Genesis=1 ...
Revelation=66; every version lmfuse reads (English in `bible_text`, Spanish in `sword`) is keyed
by these KJV ids. Kept apart from the text readers so that the ids, references and splits can be
used (by the builders, the checks, the Spanish reader) without any of the recovery code.
"""

from __future__ import annotations

import functools
import importlib
import re
from types import ModuleType

from lmfuse.errors import LmfuseError

# Carlson et al. 2018 hold out whole books; everything else is train.
SPLIT_BOOKS: dict[str, tuple[int, ...]] = {
    "test": (7, 9, 50, 58),  # Judges, 1 Samuel, Philippians, Hebrews
    "validation": (11, 36, 41, 51),  # 1 Kings, Zephaniah, Mark, Colossians
}

_BOOK_NAMES: tuple[str, ...] = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Songs", "Isaiah",
    "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah",
    "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi", "Matthew",
    "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians", "Galatians",
    "Ephesians", "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians", "1 Timothy",
    "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter", "1 John",
    "2 John", "3 John", "Jude", "Revelation",
)  # fmt: skip


def verse_key(verse_id: int) -> tuple[int, int, int]:
    """(book, chapter, verse) of a verse id."""
    return verse_id // 1_000_000, verse_id // 1000 % 1000, verse_id % 1000


def make_verse_id(book: int, chapter: int, verse: int) -> int:
    """Verse id of (book, chapter, verse): the inverse of `verse_key`."""
    return book * 1_000_000 + chapter * 1000 + verse


def book_name(book: int) -> str:
    """English name of a book number (Genesis=1 ... Revelation=66)."""
    if not 1 <= book <= len(_BOOK_NAMES):
        raise LmfuseError(f"book {book} does not exist; books are numbered 1 (Genesis) to 66")
    return _BOOK_NAMES[book - 1]


def book_split(book: int) -> str:
    """'train', 'validation' or 'test' for a book number (Carlson et al. 2018)."""
    book_name(book)  # validates
    for split, books in SPLIT_BOOKS.items():
        if book in books:
            return split
    return "train"


def reference(verse_id: int) -> str:
    """Human-readable reference, e.g. 'John 3:16'."""
    book, chapter, verse = verse_key(verse_id)
    return f"{book_name(book)} {chapter}:{verse}"


_REFERENCE = re.compile(r"(.+?)\s+(\d+):(\d+)")


def parse_reference(ref: str) -> int:
    """Verse id of a reference such as 'John 3:16' (full English book names)."""
    match = _REFERENCE.fullmatch(ref.strip())
    if match is None or match[1] not in _BOOK_NAMES:
        raise LmfuseError(f"cannot read verse reference {ref!r}; write it like 'John 3:16'")
    return make_verse_id(_BOOK_NAMES.index(match[1]) + 1, int(match[2]), int(match[3]))


def import_package(module: str, package: str) -> ModuleType:
    """Imports `module`, or raises an LmfuseError that says how to install `package`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LmfuseError(
            f"{package} is not installed; run pip install 'lmfuse[demo]' (or pip install {package})"
        ) from e


@functools.cache
def kjv_ids() -> tuple[int, ...]:
    """The KJV verse ids in canonical order, as one cached tuple (`kjv_verse_ids` copies it)."""
    verses = import_package("pythonbible.verses", "pythonbible")
    # pythonbible also numbers the Apocrypha (books 67-72); KJV versification stops at 66.
    return tuple(v for v in verses.VERSE_IDS if verse_key(v)[0] <= len(_BOOK_NAMES))


def kjv_verse_ids() -> list[int]:
    """The 31,102 KJV verse ids in canonical order."""
    return list(kjv_ids())
