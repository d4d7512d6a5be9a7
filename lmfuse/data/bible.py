"""Verse-aligned public-domain English Bibles from the pythonbible packages.

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

`check_alignment` proves the result: every KJV id present, per-version spot checks, and a
lexical check against KJV that catches verse shifts (see `lexical_flags`).
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType

from lmfuse.errors import LmfuseError

ENGLISH_VERSIONS: tuple[str, ...] = ("asv", "bbe", "dar", "dr", "kjv", "wbs", "web", "ylt")
VALIDATED_VERSIONS: tuple[str, ...] = ("asv", "bbe", "dar", "kjv", "wbs", "web", "ylt")

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


# --- ids, books and splits ---------------------------------------------------------------------


def verse_key(verse_id: int) -> tuple[int, int, int]:
    """(book, chapter, verse) of a verse id."""
    return verse_id // 1_000_000, verse_id // 1000 % 1000, verse_id % 1000


def _verse_id(book: int, chapter: int, verse: int) -> int:
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
    return _verse_id(_BOOK_NAMES.index(match[1]) + 1, int(match[2]), int(match[3]))


def _import(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LmfuseError(
            f"{package} is not installed; run pip install 'lmfuse[demo]' (or pip install {package})"
        ) from e


@functools.cache
def _kjv_ids() -> tuple[int, ...]:
    verses = _import("pythonbible.verses", "pythonbible")
    # pythonbible also numbers the Apocrypha (books 67-72); KJV versification stops at 66.
    return tuple(v for v in verses.VERSE_IDS if verse_key(v)[0] <= len(_BOOK_NAMES))


def kjv_verse_ids() -> list[int]:
    """The 31,102 KJV verse ids in canonical order."""
    return list(_kjv_ids())


@functools.cache
def _kjv_chapter_lengths() -> dict[tuple[int, int], int]:
    lengths: dict[tuple[int, int], int] = {}
    for verse_id in _kjv_ids():
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
    module = _import(f"pythonbible_{name}.plain_text_bible", f"pythonbible-{name}")
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
        kept.append(_RawVerse(_verse_id(book, chapter, verse - shift), raw.tag, raw.body))
    return kept


def _kjv_target(raw: _RawVerse, correction: int) -> tuple[int, int]:
    """(KJV verse id, chapter correction to carry on) for one verse of a tagged version."""
    book, chapter, verse = verse_key(raw.verse_id)
    if raw.tag is None:
        return _verse_id(book, chapter + correction, verse), correction
    tag_chapter, tag_verse = raw.tag
    return _verse_id(book, tag_chapter, tag_verse), tag_chapter - chapter


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
        pieces[_verse_id(book, chapter, count[book, chapter])] = [raw.body]
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
    if verse_id == _verse_id(18, 42, 17) or book == 19:
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
    ids = _kjv_ids()
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
    pythonbible = _import("pythonbible", "pythonbible")
    version = pythonbible.Version[_API_VERSIONS[name]]
    texts = {}
    for verse_id in _kjv_ids():
        try:
            texts[verse_id] = _normalise(pythonbible.get_verse_text(verse_id, version))
        except pythonbible.VersionMissingVerseError:
            texts[verse_id] = ""
    return texts


def strip_brackets(text: str) -> str:
    """Drops KJV's '[' and ']' italics markers, keeping the words: 'It [is] so' -> 'It is so'."""
    return _normalise(text.replace("[", "").replace("]", ""))


# --- alignment checks ---------------------------------------------------------------------------

# A version passes the lexical check when at most this share of its verses is flagged. Measured
# with `lexical_flags` against KJV: the recovered versions flag 0.00-0.05% (a handful of verses
# that really are divided differently, e.g. YLT Gen 18:10-13), while pythonbible's API output
# flags 20.6% (BBE) and 28.9% (WBS). 0.5% sits ten times above the worst correct version and
# forty times below the best broken one; a shift confined to a chapter or two stays under any
# global rate, which is what `shifted_chapters` is for.
MAX_LEXICAL_FLAG_RATE = 0.005
# "Clearly higher": a neighbour must beat a verse's own KJV match by this much (weighted Dice).
_LEXICAL_MARGIN = 0.15
_STEM = 5  # compare word stems, so "loved"/"love" and "believeth"/"believes" match


Tokenizer = Callable[[str], frozenset[str]]


def english_tokens(text: str) -> frozenset[str]:
    """Stems of the words of 3+ letters in an English verse, for the lexical check."""
    return frozenset(w[:_STEM] for w in re.findall(r"[a-z]{3,}", text.lower()))


@dataclass(frozen=True)
class _LexicalReference:
    """KJV's tokens per verse and their IDF weights, computed once per KJV text."""

    tokens: tuple[frozenset[str], ...]
    idf: dict[str, float]
    unknown: float  # weight of a token KJV never uses: the largest, as it can never match

    def weight(self, tokens: Iterable[str]) -> float:
        return sum(self.idf.get(token, self.unknown) for token in tokens)


@functools.lru_cache(maxsize=4)
def _lexical_reference(texts: tuple[str, ...], tokenize: Tokenizer) -> _LexicalReference:
    tokens = tuple(tokenize(text) for text in texts)
    counts: dict[str, int] = defaultdict(int)
    for verse_tokens in tokens:
        for token in verse_tokens:
            counts[token] += 1
    idf = {token: math.log(len(tokens) / count) for token, count in counts.items()}
    return _LexicalReference(tokens, idf, math.log(len(tokens) + 1))


def lexical_flags(
    texts: dict[int, str],
    kjv: dict[int, str],
    tokenize: Tokenizer = english_tokens,
    kjv_tokenize: Tokenizer | None = None,
) -> tuple[list[int], list[int]]:
    """(flagged verse ids, compared verse ids) of the lexical alignment check against KJV.

    A verse is flagged when its IDF-weighted word overlap (Dice) with the KJV verse before or
    after it is clearly (`_LEXICAL_MARGIN`) higher than with its own KJV verse: the signature of
    a verse that sits a slot off. Rare words (names, places) dominate the weights, which makes the
    check work across very different translations (BBE). `kjv_tokenize` (default `tokenize`)
    lets another language map its words onto the same tokens as KJV's.
    """
    ids = [verse_id for verse_id in _kjv_ids() if verse_id in kjv]
    ref = _lexical_reference(tuple(kjv[verse_id] for verse_id in ids), kjv_tokenize or tokenize)
    kjv_weights = [ref.weight(tokens) for tokens in ref.tokens]
    flagged, compared = [], []
    for i, verse_id in enumerate(ids):
        tokens = tokenize(texts.get(verse_id, ""))
        if not tokens or not ref.tokens[i]:
            continue
        compared.append(verse_id)
        weight = ref.weight(tokens)
        dice = [  # previous, own, next KJV verse
            2 * ref.weight(tokens & ref.tokens[j]) / (weight + kjv_weights[j])
            if 0 <= j < len(ids) and ref.tokens[j]
            else 0.0
            for j in (i - 1, i, i + 1)
        ]
        if max(dice[0], dice[2]) > dice[1] + _LEXICAL_MARGIN:
            flagged.append(verse_id)
    return flagged, compared


# A chapter counts as shifted when at least this many of its verses, and this share of those
# compared, are flagged. Correct versions never reach it (at most 3 flags in one chapter, 3 of 15
# in RV1909 Num 30), while a run of verses one slot off flags most of the run.
_SHIFTED_CHAPTER_FLAGS = 4
_SHIFTED_CHAPTER_SHARE = 0.25


def shifted_chapters(flagged: Iterable[int], compared: Iterable[int]) -> tuple[str, ...]:
    """Chapters whose lexical flags cluster, e.g. ('Numbers 13',): a local shift the global
    flag rate would hide."""
    flags: dict[int, int] = defaultdict(int)
    totals: dict[int, int] = defaultdict(int)
    for verse_id in flagged:
        flags[verse_id // 1000] += 1
    for verse_id in compared:
        totals[verse_id // 1000] += 1
    return tuple(
        reference(chapter * 1000 + 1).removesuffix(":1")
        for chapter in sorted(flags)
        if flags[chapter] >= max(_SHIFTED_CHAPTER_FLAGS, _SHIFTED_CHAPTER_SHARE * totals[chapter])
    )


@dataclass(frozen=True)
class SpotCheck:
    """A known verse: empty, or non-empty and starting with / equal to a given text."""

    verse_id: int
    starts: str = ""
    equals: str | None = None
    empty: bool = False

    def failure(self, texts: dict[int, str]) -> str | None:
        """None if the check passes, else a short description of what was found."""
        text = texts.get(self.verse_id)
        where = reference(self.verse_id)
        if text is None:
            return f"{where}: missing"
        if self.empty:
            return None if not text else f"{where}: expected no text, got {text[:40]!r}"
        expected = self.equals if self.equals is not None else self.starts
        ok = text == self.equals if self.equals is not None else text.startswith(self.starts)
        if text and ok:
            return None
        return f"{where}: expected {expected[:40]!r}, got {text[:40]!r}"


def _spot(ref: str, starts: str = "") -> SpotCheck:
    return SpotCheck(parse_reference(ref), starts=starts)


def _equals(ref: str, text: str) -> SpotCheck:
    return SpotCheck(parse_reference(ref), equals=text)


def _empty(ref: str) -> SpotCheck:
    return SpotCheck(parse_reference(ref), empty=True)


# Per version, verses whose text proves the quirks were handled: each fails on misaligned data.
SPOT_CHECKS: dict[str, tuple[SpotCheck, ...]] = {
    "asv": (
        _spot("Genesis 1:1", "In the beginning God created the heavens and the earth."),
        _spot("John 3:16", "For God so loved the world, that he gave his only begotten Son"),
        _equals("Genesis 43:1", "And the famine was sore in the land."),
        _empty("Matthew 17:21"),  # omitted by the ASV
        _spot("Revelation 22:21", "The grace of the Lord Jesus be with the saints."),
    ),
    "bbe": (
        _spot("Genesis 1:1", "At the first God made the heaven and the earth."),
        _spot("John 3:16", "For God had such love for the world"),
        _equals("Genesis 43:1", "Now the land was in bitter need of food."),
        _spot("John 1:39", "He said to them, Come and see."),  # after the inserted '+' slot
        _spot("Isaiah 66:1", "The Lord says, Heaven is the seat of my power"),  # not "Isaiah 67"
        _spot("Psalms 3:1", "A Psalm. Of David. When he went in flight from Absalom his son. Lord"),
        _spot("Revelation 13:1", "And he took his place on the sand of the sea. And I saw a beast"),
        _spot("Revelation 22:21", "The grace of the Lord Jesus be with the saints."),
    ),
    "dar": (
        _spot("Genesis 1:1", "In the beginning God created the heavens and the earth."),
        _spot("John 3:16", "For God so loved the world, that he gave his only-begotten Son"),
        _spot("Numbers 30:2", "If a man vow a vow to Jehovah"),  # DAR skips the number 2
        _spot("Deuteronomy 29:29", "The hidden things belong to Jehovah our God"),  # 29:3 empty
        _spot("Psalms 3:8", "Salvation is of Jehovah"),  # followed by an empty extra verse
        _spot("Revelation 13:2", "And the beast which I saw was like to a leopardess"),
        _spot("Revelation 22:21", "The grace of the Lord Jesus Christ [be] with all the saints."),
    ),
    "kjv": (
        _spot("Genesis 1:1", "In the beginning God created the heaven and the earth."),
        _spot("John 3:16", "For God so loved the world, that he gave his only begotten Son"),
        _equals("Genesis 43:1", "And the famine [was] sore in the land."),
        _spot("Psalms 3:1", "LORD, how are they increased that trouble me!"),
        _spot("Romans 16:27", "To God only wise, [be] glory through Jesus Christ for ever. Amen."),
        _spot("Revelation 22:21", "The grace of our Lord Jesus Christ [be] with you all. Amen."),
    ),
    "wbs": (
        _spot("Genesis 1:1", "In the beginning God created the heaven and the earth."),
        _spot("John 3:16", "For God so loved the world, that he gave his only-begotten Son"),
        _equals("Genesis 43:1", "And the famine was severe in the land."),
        _spot("Psalms 3:1", "A Psalm of David, when he fled from Absalom his son. LORD,"),
        _spot("Revelation 13:1", "And I stood upon the sand of the sea, and saw a beast"),
        # WBS has no text for these four: the verse before covers them.
        _empty("Isaiah 64:2"),
        _empty("Daniel 10:19"),
        _empty("Acts 19:41"),
        _empty("2 Corinthians 13:13"),
        _spot("Revelation 22:21", "The grace of our Lord Jesus Christ be with you all. Amen."),
    ),
    "web": (
        _spot("Genesis 1:1", "In the beginning God created the heavens and the earth."),
        _spot("John 3:16", "For God so loved the world, that he gave his one and only Son"),
        _spot("Romans 16:25", "Now to him who is able to establish you"),  # shipped at 14:24
        _spot("Romans 16:27", "to the only wise God, through Jesus Christ"),
        _spot("Psalms 3:1", "A Psalm by David, when he fled from Absalom, his son. Yahweh,"),
        _equals(  # Psalm 3's heading is shipped at the end of this verse
            "Psalms 2:12",
            "Kiss the son, lest he be angry, and you perish in the way, For his wrath will soon "
            "be kindled. Blessed are all those who take refuge in him.",
        ),
        _spot("Revelation 22:21", "The grace of the Lord Jesus be with all the saints. Amen."),
    ),
    "ylt": (
        _spot("Genesis 1:1", "In the beginning of God`s preparing the heavens and the earth"),
        _spot("John 3:16", "for God did so love the world, that His Son"),
        _equals("Genesis 43:1", "And the famine [is] severe in the land;"),
        _spot("Revelation 22:21", "The grace of our Lord Jesus Christ [is] with you all. Amen."),
    ),
}
_DEFAULT_SPOT_CHECKS = (_spot("Genesis 1:1"), _spot("John 3:16"), _spot("Revelation 22:21"))


@dataclass(frozen=True)
class AlignmentReport:
    """Outcome of the alignment checks of one version against KJV verse ids."""

    version: str
    verses: int  # KJV ids present
    nonempty: int
    spot_checks_passed: int
    spot_checks_total: int
    failed_spot_checks: tuple[str, ...]
    lexical_flag_rate: float
    passed: bool
    shifted_chapters: tuple[str, ...] = ()  # chapters where lexical flags cluster

    def summary(self) -> str:
        """One line, e.g. 'bbe: 31102 ids, 31067 non-empty, spot 8/8, lexical flags 0.05% -> ok'."""
        line = (
            f"{self.version}: {self.verses} ids, {self.nonempty} non-empty, "
            f"spot {self.spot_checks_passed}/{self.spot_checks_total}, "
            f"lexical flags {100 * self.lexical_flag_rate:.2f}% -> "
        )
        if self.passed:
            return line + "ok"
        problems = list(self.failed_spot_checks[:3])
        if self.shifted_chapters:
            shown = ", ".join(self.shifted_chapters[:3])
            more = len(self.shifted_chapters) - 3
            problems.append(
                f"shifted chapters: {shown}" + (f" and {more} more" if more > 0 else "")
            )
        return line + "FAILED" + "".join(f"; {problem}" for problem in problems)


def alignment_report(
    name: str,
    texts: dict[int, str],
    kjv: dict[int, str],
    spot_checks: Iterable[SpotCheck],
    tokenize: Tokenizer = english_tokens,
    kjv_tokenize: Tokenizer | None = None,
    max_flag_rate: float = MAX_LEXICAL_FLAG_RATE,
) -> AlignmentReport:
    """Runs the count, spot and lexical checks; the version passes only if all pass.

    The lexical check fails on a high overall flag rate (a misaligned version) or on flags that
    cluster in a chapter (a local shift).
    """
    ids = _kjv_ids()
    verses = sum(1 for verse_id in ids if verse_id in texts)
    nonempty = sum(1 for verse_id in ids if texts.get(verse_id))
    checks = tuple(spot_checks)
    failures = tuple(f for f in (check.failure(texts) for check in checks) if f is not None)
    flagged, compared = lexical_flags(texts, kjv, tokenize, kjv_tokenize)
    rate = len(flagged) / len(compared) if compared else 1.0
    shifted = shifted_chapters(flagged, compared)
    passed = verses == len(ids) and not failures and rate <= max_flag_rate and not shifted
    return AlignmentReport(
        version=name,
        verses=verses,
        nonempty=nonempty,
        spot_checks_passed=len(checks) - len(failures),
        spot_checks_total=len(checks),
        failed_spot_checks=failures,
        lexical_flag_rate=rate,
        passed=passed,
        shifted_chapters=shifted,
    )


def check_alignment(name: str, texts: dict[int, str], kjv: dict[int, str]) -> AlignmentReport:
    """Checks that `texts` (keyed by KJV id) really is aligned to KJV: see `alignment_report`."""
    return alignment_report(name, texts, kjv, SPOT_CHECKS.get(name, _DEFAULT_SPOT_CHECKS))


@functools.cache
def _load_validated(name: str) -> tuple[dict[int, str], AlignmentReport]:
    texts = read_version(name)
    report = check_alignment(name, texts, read_version("kjv"))
    if not report.passed:
        raise LmfuseError(
            f"Bible version {name!r} failed its alignment check, refusing to use misaligned "
            f"data ({report.summary()}); reinstall pythonbible-{name} 0.0.2 or drop the version"
        )
    return texts, report


def load_validated(name: str) -> tuple[dict[int, str], AlignmentReport]:
    """`read_version` plus `check_alignment` against KJV; raises LmfuseError if it fails."""
    texts, report = _load_validated(name)
    return dict(texts), report
