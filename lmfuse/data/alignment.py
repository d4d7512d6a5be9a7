"""Checks that a Bible version keyed by KJV verse ids really is aligned to KJV.

Three checks: every KJV id is present, known verses read as expected (`SpotCheck`), and a lexical
check against KJV that catches verses sitting a slot off, overall (`lexical_flags`) and clustered
in a chapter (`shifted_chapters`). They are language-neutral (a tokenizer is a parameter), so the
English versions (`bible`) and the Spanish RV1909 (`sword`) share them; which verses to
spot-check is up to each caller.
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lmfuse.data.bible_ids import kjv_ids, reference

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
    ids = [verse_id for verse_id in kjv_ids() if verse_id in kjv]
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
    ids = kjv_ids()
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
