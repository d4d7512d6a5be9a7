"""The verse texts of the English pythonbible packages, realigned to KJV verse ids.

Every version is returned keyed by KJV verse id (`book*1_000_000 + chapter*1000 + verse`, books
numbered Genesis=1 ... Revelation=66), with one entry per KJV verse ('' where a version has no
text). pythonbible's own verse-id API cannot be trusted for this: it silently misaligns BBE and
WBS (and DR). `read_version` therefore reads each package's raw text and recovers the alignment.

How the packages store a Bible: `pythonbible_<v>.plain_text_bible.bible` holds the whole Bible as
one string of `"<n>. <text>"` verses, plus start/end character offsets keyed by the package's
own verse ids. Recovery, in order:

1. Offset bug. The offsets were computed on the text with every backslash doubled, while the
   string holds single backslashes, so each backslash pushes every later slice one character
   further (2,752 characters by Revelation in BBE). We slice the backslash-doubled text with the
   shipped offsets and un-double; after that every slice starts with its own verse number.
2. Re-versification tags (BBE, WBS). These follow a Hebrew-like versification and carry an inline
   tag `\\C:V\\` after the verse number that gives the KJV chapter:verse in the same book. A tagged
   verse goes there. An untagged verse keeps its verse number and inherits the chapter correction
   of the last tag in its book (this repairs BBE Isaiah, whose shipped ids invent an "Isaiah 67").
   Several pieces that land on one KJV verse are joined in order: an untagged Psalm superscription
   is thereby prepended to verse 1 (as DAR, YLT and WBS print it), and a verse ending in a
   backslash continues into the next tagged verse (e.g. 1 Sam 20:42).
3. Placeholders. A verse that is only `+`, `...`, `[]` or `***` is empty; inside a verse `***`
   (BBE) and `[]` (WBS) mark gaps and are dropped. In a chapter with more slots than KJV, a `+`
   slot was inserted (BBE John 1:39): drop it and number the rest of the chapter one lower.
4. DAR marks versification differences with empty slots or gaps (Num 30 has no v2; Deut 29:3,
   1 Kgs 22:44, ... are empty; Psalms end with an empty extra verse): renumbering each chapter's
   non-empty verses 1..n puts it on KJV numbering.
5. WEB stores Rom 16:25-27 (the doxology) at Rom 14:24-26: re-key those three. WEB also
   appends each Psalm's heading ("Psalm 3 A Psalm by David, ...", Psalm 119's "BEIT") to the
   verse before it: move the superscription to the verse it heads, as the others print it.
6. DR uses Vulgate versification (372 KJV ids missing, 2,152 extra) and would need a full
   versification map, so it is refused.

This module only reads and recovers text; `bible.load_validated` adds the proof that the result
is aligned (`bible.check_alignment`, built on `alignment`).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from lmfuse.data.bible_ids import import_package, kjv_ids, make_verse_id, reference, verse_key
from lmfuse.errors import LmfuseError

ENGLISH_VERSIONS: tuple[str, ...] = ("asv", "bbe", "dar", "dr", "kjv", "wbs", "web", "ylt")
VALIDATED_VERSIONS: tuple[str, ...] = ("asv", "bbe", "dar", "kjv", "wbs", "web", "ylt")

# pythonbible.Version member for each version name.
_API_VERSIONS = {
    "asv": "AMERICAN_STANDARD",
    "bbe": "BIBLE_IN_BASIC_ENGLISH",
    "dar": "DARBY",
    "dr": "DOUAY_RHEIMS",
    "kjv": "KING_JAMES",
    "wbs": "WEBSTER",
    "web": "WORLD_ENGLISH",
    "ylt": "YOUNGS",
}
_REFUSED = {
    "dr": "uses Vulgate versification (372 KJV verse ids missing, 2,152 extra) and lmfuse has "
    "no map to KJV versification"
}
_TAGGED_VERSIONS = ("bbe", "wbs")
_RENUMBERED_VERSIONS = ("dar",)
# WEB keeps the Romans doxology (KJV Rom 16:25-27) at Rom 14:24-26.
_REKEYED = {"web": {45014024: 45016025, 45014025: 45016026, 45014026: 45016027}}

_PLACEHOLDERS = frozenset({"+", "...", "[]", "***"})
_RAW_VERSE = re.compile(r"\s*(\d+)\.\s?(?:\\(\d+):(\d+)\\)?(.*)", re.DOTALL)


@functools.cache
def _kjv_chapter_lengths() -> dict[tuple[int, int], int]:
    lengths: dict[tuple[int, int], int] = {}
    for verse_id in kjv_ids():
        book, chapter, verse = verse_key(verse_id)
        lengths[book, chapter] = max(verse, lengths.get((book, chapter), 0))
    return lengths


# --- raw text -----------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if name not in ENGLISH_VERSIONS:
        raise LmfuseError(
            f"unknown Bible version {name!r}; valid versions: {', '.join(VALIDATED_VERSIONS)}"
        )


def _shipped_bible(name: str):
    """The package's pythonbible `Bible` object (whole text plus shipped offsets)."""
    _check_name(name)
    module = import_package(f"pythonbible_{name}.plain_text_bible", f"pythonbible-{name}")
    return module.bible


def raw_verses(name: str) -> dict[int, str]:
    """Raw `"<n>. <text>"` slices keyed by the package's own verse ids, offset bug fixed.

    The shipped offsets index the text with every backslash doubled, so slice that and un-double.
    """
    shipped = _shipped_bible(name)
    doubled = shipped.scripture_content.replace("\\", "\\\\")
    ends = shipped.verse_end_indices
    return {
        verse_id: doubled[start : ends[verse_id]].replace("\\\\", "\\")
        for verse_id, start in shipped.verse_start_indices.items()
    }


@dataclass(frozen=True)
class _RawVerse:
    verse_id: int  # the package's own id
    tag: tuple[int, int] | None  # KJV (chapter, verse) from a `\C:V\` tag
    body: str


def _parse(verse_id: int, raw: str) -> _RawVerse:
    match = _RAW_VERSE.fullmatch(raw)
    if match is None or int(match[1]) != verse_key(verse_id)[2]:
        raise LmfuseError(
            f"unexpected raw text at {reference(verse_id)}: {raw[:40]!r}; lmfuse reads the "
            "0.0.2 pythonbible version packages, reinstall them with pip install 'lmfuse[demo]'"
        )
    tag = (int(match[2]), int(match[3])) if match[2] else None
    return _RawVerse(verse_id, tag, match[4])


def _is_placeholder(body: str) -> bool:
    return body.strip() in _PLACEHOLDERS


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _clean(body: str) -> str:
    """Verse text without continuation marks or placeholders, whitespace collapsed."""
    body = body.strip().removesuffix("\\")
    if _is_placeholder(body):
        return ""
    # Inline '***' (BBE) and '[]' (WBS) mark untranslated gaps, not words.
    return _normalise(body.replace("***", " ").replace("[]", " "))


# --- recovery -----------------------------------------------------------------------------------


def _drop_inserted_slots(verses: list[_RawVerse]) -> list[_RawVerse]:
    """Removes `+` slots from chapters that have more slots than KJV, renumbering what follows.

    Only untagged verses are renumbered: a tag already names the KJV verse.
    """
    lengths = _kjv_chapter_lengths()
    slots: dict[tuple[int, int], int] = defaultdict(int)
    for raw in verses:
        slots[verse_key(raw.verse_id)[:2]] += 1
    kept, dropped = [], defaultdict(int)
    for raw in verses:
        book, chapter, verse = verse_key(raw.verse_id)
        overfull = slots[book, chapter] > lengths.get((book, chapter), 0)
        if overfull and raw.tag is None and raw.body.strip() == "+":
            dropped[book, chapter] += 1
            continue
        shift = dropped[book, chapter] if raw.tag is None else 0
        kept.append(_RawVerse(make_verse_id(book, chapter, verse - shift), raw.tag, raw.body))
    return kept


def _kjv_target(raw: _RawVerse, correction: int) -> tuple[int, int]:
    """(KJV verse id, chapter correction to carry on) for one verse of a tagged version."""
    book, chapter, verse = verse_key(raw.verse_id)
    if raw.tag is None:
        return make_verse_id(book, chapter + correction, verse), correction
    tag_chapter, tag_verse = raw.tag
    return make_verse_id(book, tag_chapter, tag_verse), tag_chapter - chapter


def _retag(verses: list[_RawVerse]) -> dict[int, list[str]]:
    """Pieces of text per KJV id for a version with `\\C:V\\` re-versification tags."""
    pieces: dict[int, list[str]] = defaultdict(list)
    book, correction = 0, 0
    for raw in verses:
        if verse_key(raw.verse_id)[0] != book:
            book, correction = verse_key(raw.verse_id)[0], 0
        target, correction = _kjv_target(raw, correction)
        pieces[target].append(raw.body)
    return pieces


def _renumber(verses: list[_RawVerse]) -> dict[int, list[str]]:
    """Numbers each chapter's non-empty verses 1..n (DAR's gaps and empty slots)."""
    pieces: dict[int, list[str]] = {}
    count: dict[tuple[int, int], int] = defaultdict(int)
    for raw in verses:
        if not _clean(raw.body):
            continue
        book, chapter, _ = verse_key(raw.verse_id)
        count[book, chapter] += 1
        pieces[make_verse_id(book, chapter, count[book, chapter])] = [raw.body]
    return pieces


def _recover(name: str) -> dict[int, list[str]]:
    """Pieces of text per KJV id, before cleaning."""
    verses = [_parse(verse_id, raw) for verse_id, raw in raw_verses(name).items()]
    if name in _TAGGED_VERSIONS:
        return _retag(_drop_inserted_slots(verses))
    if name in _RENUMBERED_VERSIONS:
        return _renumber(verses)
    rekey = _REKEYED.get(name, {})
    pieces = {rekey.get(raw.verse_id, raw.verse_id): [raw.body] for raw in verses}
    return _move_web_headings(pieces) if name == "web" else pieces


def _move_web_headings(pieces: dict[int, list[str]]) -> dict[int, list[str]]:
    """Moves WEB's Psalm headings from the end of the verse before to the verse they head.

    WEB appends "Psalm 3 A Psalm by David, ..." (and "BOOK II", and Psalm 119's "BEIT", ...) to
    the previous verse. The superscription becomes a prefix of verse 1, as DAR, WBS and YLT print
    it; the "BOOK N Psalm N" labels are dropped.
    """
    moved, carry = {}, ""
    for verse_id in sorted(pieces):
        text = " ".join(_clean(piece) for piece in pieces[verse_id])
        text, heading = _split_heading(verse_id, text)
        moved[verse_id] = [f"{carry} {text}"]
        carry = heading
    return moved


_PSALM_HEADING = re.compile(r"(.*?)\s*(?:BOOK [IVX]+ )?Psalm \d+\b\s*(.*)")
_ACROSTIC_HEADING = re.compile(r"(.*?)\s+((?:[A-Z]{2,}\s*)+)")  # Psalm 119's "BEIT", "SIN AND SHIN"


def _split_heading(verse_id: int, text: str) -> tuple[str, str]:
    """(verse text, trailing heading that belongs to the next verse) for WEB."""
    book, chapter, _ = verse_key(verse_id)
    if verse_id == make_verse_id(18, 42, 17) or book == 19:
        if match := _PSALM_HEADING.fullmatch(text):
            return match[1], match[2]
    if (book, chapter) == (19, 119) and (match := _ACROSTIC_HEADING.fullmatch(text)):
        return match[1], match[2]
    return text, ""


def _join(pieces: Iterable[str]) -> str:
    return _normalise(" ".join(_clean(piece) for piece in pieces))


@functools.cache
def _read_version(name: str) -> dict[int, str]:
    pieces = _recover(name)
    ids = kjv_ids()
    extra = sorted(set(pieces) - set(ids))
    if extra:
        raise LmfuseError(
            f"{name}: {len(extra)} verse ids outside KJV versification (first "
            f"{extra[0]}); lmfuse reads the 0.0.2 pythonbible-{name} package, reinstall it"
        )
    return {verse_id: _join(pieces.get(verse_id, ())) for verse_id in ids}


def read_version(name: str) -> dict[int, str]:
    """Verse texts of an English version keyed by KJV verse id, recovered from the raw text.

    One entry for every id in `kjv_verse_ids()`, '' where the version has no text. KJV keeps
    its [bracketed] italics; see `strip_brackets`. Results are cached in-process; the returned
    dict is a fresh copy.
    """
    _check_name(name)
    if name in _REFUSED:
        raise LmfuseError(
            f"Bible version {name!r} {_REFUSED[name]}; use one of {', '.join(VALIDATED_VERSIONS)}"
        )
    _shipped_bible(name)  # a clear error if the package is missing, even when cached
    return dict(_read_version(name))


def read_api_version(name: str) -> dict[int, str]:
    """What pythonbible's own `get_verse_text` returns for every KJV id ('' where it has none).

    Kept to demonstrate the API's misalignment of BBE and WBS; train on `read_version`.
    """
    _shipped_bible(name)
    pythonbible = import_package("pythonbible", "pythonbible")
    version = pythonbible.Version[_API_VERSIONS[name]]
    texts = {}
    for verse_id in kjv_ids():
        try:
            texts[verse_id] = _normalise(pythonbible.get_verse_text(verse_id, version))
        except pythonbible.VersionMissingVerseError:
            texts[verse_id] = ""
    return texts


def strip_brackets(text: str) -> str:
    """Drops KJV's '[' and ']' italics markers, keeping the words: 'It [is] so' -> 'It is so'."""
    return _normalise(text.replace("[", "").replace("]", ""))
