"""Proves the facts about the pythonbible packages that the English Bible modules rely on.

Each test states a measured fact (a defect of the packages or of pythonbible's API, or a number
the builders depend on) and shows that `read_version` handles it.
"""

from __future__ import annotations

import re
import sys

import pytest

from lmfuse.data import alignment, bible, bible_ids, bible_text
from lmfuse.errors import LmfuseError

ref = bible_ids.parse_reference
PLACEHOLDERS = {"+", "...", "[]", "***"}


@pytest.fixture(scope="module")
def texts() -> dict[str, dict[int, str]]:
    return {name: bible_text.read_version(name) for name in bible_text.VALIDATED_VERSIONS}


@pytest.fixture(scope="module")
def kjv(texts) -> dict[int, str]:
    return texts["kjv"]


@pytest.fixture(scope="module")
def reports(texts, kjv) -> dict[str, alignment.AlignmentReport]:
    return {name: bible.check_alignment(name, texts[name], kjv) for name in texts}


@pytest.fixture(scope="module")
def api() -> dict[str, dict[int, str]]:
    return {name: bible_text.read_api_version(name) for name in ("bbe", "wbs")}


@pytest.fixture(scope="module")
def api_reports(api, kjv) -> dict[str, alignment.AlignmentReport]:
    return {name: bible.check_alignment(name, api[name], kjv) for name in api}


# --- ids, books and splits ---------------------------------------------------------------------


def test_kjv_has_31102_verses_in_canonical_order():
    ids = bible_ids.kjv_verse_ids()
    assert len(ids) == 31_102 == len(set(ids))
    assert ids == sorted(ids)
    assert ids[0] == ref("Genesis 1:1") and ids[-1] == ref("Revelation 22:21")


def test_verse_key_and_reference_round_trip():
    assert bible_ids.verse_key(43_003_016) == (43, 3, 16)
    assert ref("John 3:16") == 43_003_016
    assert bible_ids.reference(9_020_042) == "1 Samuel 20:42"
    assert all(ref(bible_ids.reference(v)) == v for v in bible_ids.kjv_verse_ids()[::97])


def test_book_names():
    assert bible_ids.book_name(1) == "Genesis"
    assert bible_ids.book_name(19) == "Psalms"
    assert bible_ids.book_name(66) == "Revelation"
    with pytest.raises(LmfuseError, match="1 .Genesis. to 66"):
        bible_ids.book_name(67)


def test_split_books_are_carlson_2018():
    names = {
        split: {bible_ids.book_name(b) for b in books}
        for split, books in bible_ids.SPLIT_BOOKS.items()
    }
    assert names == {
        "test": {"Judges", "1 Samuel", "Philippians", "Hebrews"},
        "validation": {"1 Kings", "Mark", "Colossians", "Zephaniah"},
    }
    assert bible_ids.book_split(7) == "test"
    assert bible_ids.book_split(41) == "validation"
    assert bible_ids.book_split(1) == "train"


def _by_split(verse_ids) -> dict[str, int]:
    counts = {"train": 0, "validation": 0, "test": 0}
    for verse_id in verse_ids:
        counts[bible_ids.book_split(bible_ids.verse_key(verse_id)[0])] += 1
    return counts


def test_kjv_verses_per_split():
    assert _by_split(bible_ids.kjv_verse_ids()) == {
        "train": 27_625,
        "validation": 1_642,
        "test": 1_835,
    }


def test_kjv_asv_pairs_per_split(texts):
    both = [v for v in bible_ids.kjv_verse_ids() if texts["kjv"][v] and texts["asv"][v]]
    assert _by_split(both) == {"train": 27_614, "validation": 1_637, "test": 1_835}


# --- the offset bug -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", bible_text.ENGLISH_VERSIONS)
def test_every_raw_slice_starts_with_its_verse_number(name):
    raw = bible_text.raw_verses(name)
    wrong = [v for v, text in raw.items() if not text.lstrip().startswith(f"{v % 1000}.")]
    assert wrong == []


@pytest.mark.parametrize("name, drift", [("bbe", 2752), ("wbs", 2734), ("dr", 4), ("kjv", 0)])
def test_shipped_offsets_drift_by_one_character_per_backslash(name, drift):
    shipped = bible_text._shipped_bible(name)
    assert shipped.scripture_content.count("\\") == drift
    last = max(shipped.verse_start_indices)
    start, end = shipped.verse_start_indices[last], shipped.verse_end_indices[last]
    naive = shipped.scripture_content[start:end]  # what pythonbible slices
    assert naive.lstrip().startswith(f"{last % 1000}.") == (drift == 0)


# --- pythonbible's API misaligns BBE and WBS ----------------------------------------------------


def test_api_bbe_john_3_16_is_the_text_of_john_4(api, texts):
    api_text = api["bbe"][ref("John 3:16")]
    assert not api_text.startswith("For God had such love for the world")
    assert texts["bbe"][ref("John 4:3")] in api_text  # "He went out of Judaea into Galilee again."
    assert texts["bbe"][ref("John 3:16")].startswith("For God had such love for the world")


def test_api_loses_the_last_verse_and_leaks_tags(api, texts):
    assert api["bbe"][ref("Revelation 22:21")] == ""
    assert api["wbs"][ref("Revelation 22:21")] == ""
    assert texts["bbe"][ref("Revelation 22:21")] == (
        "The grace of the Lord Jesus be with the saints. So be it."
    )
    assert api["bbe"][ref("Genesis 43:1")].startswith("3:2\\")
    assert texts["bbe"][ref("Genesis 43:1")] == "Now the land was in bitter need of food."


def test_length_correlation_does_not_reveal_the_misalignment(api, kjv):
    # Why a lexical check is needed: the shifted WBS still correlates in length with KJV.
    ids = [v for v in bible_ids.kjv_verse_ids() if api["wbs"][v] and kjv[v]]
    xs = [len(api["wbs"][v]) for v in ids]
    ys = [len(kjv[v]) for v in ids]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    var = sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)
    assert cov / var**0.5 > 0.95


@pytest.mark.parametrize("name, low, high", [("bbe", 0.15, 0.30), ("wbs", 0.22, 0.40)])
def test_api_bbe_and_wbs_fail_the_alignment_check(api_reports, name, low, high):
    report = api_reports[name]
    assert not report.passed
    assert low < report.lexical_flag_rate < high
    assert report.failed_spot_checks
    assert len(report.shifted_chapters) > 300
    assert "FAILED" in report.summary()


# --- every recovered version passes -------------------------------------------------------------


@pytest.mark.parametrize("name", bible_text.VALIDATED_VERSIONS)
def test_recovered_version_passes_alignment(reports, name):
    report = reports[name]
    assert report.passed, report.summary()
    assert report.verses == 31_102
    assert report.spot_checks_passed == report.spot_checks_total >= 4
    assert report.lexical_flag_rate < 0.001  # well below 1%, and below the 0.5% threshold
    assert report.shifted_chapters == ()
    assert report.summary().endswith("-> ok") and "\n" not in report.summary()


def test_nonempty_counts(reports):
    nonempty = {name: report.nonempty for name, report in reports.items()}
    assert nonempty == {
        "asv": 31_086,
        "bbe": 31_067,
        "dar": 31_102,
        "kjv": 31_102,
        "wbs": 31_098,
        "web": 31_102,
        "ylt": 31_102,
    }


@pytest.mark.parametrize("name", bible_text.VALIDATED_VERSIONS)
def test_texts_are_clean(texts, name):
    values = texts[name].values()
    assert list(texts[name]) == bible_ids.kjv_verse_ids()
    assert not any("\\" in t or "\n" in t or "  " in t or t != t.strip() for t in values)
    assert not any(t in PLACEHOLDERS or "***" in t or "[]" in t for t in values)


def test_a_local_shift_fails_although_the_overall_rate_stays_low(texts, kjv):
    shifted = dict(texts["bbe"])
    chapter = [v for v in bible_ids.kjv_verse_ids() if v // 1000 == ref("Genesis 43:1") // 1000]
    for earlier, later in zip(chapter, chapter[1:], strict=False):
        shifted[later] = texts["bbe"][earlier]
    report = bible.check_alignment("bbe", shifted, kjv)
    assert report.lexical_flag_rate < alignment.MAX_LEXICAL_FLAG_RATE
    assert report.shifted_chapters == ("Genesis 43",)
    assert not report.passed


def test_kjv_one_verse_off_fails(kjv):
    ids = bible_ids.kjv_verse_ids()
    off = dict(zip(ids[1:], (kjv[v] for v in ids), strict=False)) | {ids[0]: kjv[ids[0]]}
    report = alignment.alignment_report("kjv", off, kjv, ())
    assert report.lexical_flag_rate > 0.5 and not report.passed


# --- BBE and WBS re-versification ---------------------------------------------------------------


def test_bbe_isaiah_has_no_chapter_67(texts):
    raw = bible_text.raw_verses("bbe")
    assert len([v for v in raw if v // 1000 == ref("Isaiah 67:1") // 1000]) == 24
    assert texts["bbe"][ref("Isaiah 66:24")] == raw[ref("Isaiah 67:24")].split(".", 1)[1].strip()
    assert texts["bbe"][ref("Isaiah 66:1")].startswith("The Lord says, Heaven is the seat of my")


def test_bbe_plus_slot_in_john_1_shifts_the_rest_of_the_chapter(texts):
    raw = bible_text.raw_verses("bbe")
    assert raw[ref("John 1:39")].strip() == "39.+"
    assert texts["bbe"][ref("John 1:39")].startswith("He said to them, Come and see.")
    assert texts["bbe"][ref("John 1:51")] == raw[ref("John 1:52")].split(".", 1)[1].strip()


def test_tagged_versions_put_verses_where_the_tag_says(texts):
    raw = bible_text.raw_verses("bbe")
    assert (
        raw[ref("Genesis 42:39")].strip() == "39.\\43:1\\Now the land was in bitter need of food."
    )
    assert texts["bbe"][ref("Genesis 42:38")].startswith("And he said, I will not let my son go")


@pytest.mark.parametrize(
    "name, opening",
    [
        ("bbe", "A Psalm. Of David. When he went in flight from Absalom his son. Lord, how"),
        ("wbs", "A Psalm of David, when he fled from Absalom his son. LORD, how"),
        ("dar", "{A Psalm of David, when he fled from Absalom his son.} Jehovah, how"),
        ("ylt", "A Psalm of David, in his fleeing from the face of Absalom his son. Jehovah"),
        ("web", "A Psalm by David, when he fled from Absalom, his son. Yahweh, how"),
    ],
)
def test_psalm_superscriptions_open_verse_1(texts, name, opening):
    assert texts[name][ref("Psalms 3:1")].startswith(opening)


def test_continuation_backslash_joins_the_next_tagged_verse(texts):
    for name in ("bbe", "wbs"):
        assert bible_text.raw_verses(name)[ref("1 Samuel 20:42")].rstrip().endswith("\\")
    assert texts["bbe"][ref("1 Samuel 20:42")].endswith(
        "your seed for ever. Then David went away, and Jonathan went into the town."
    )
    assert texts["wbs"][ref("Revelation 13:1")].startswith(
        "And I stood upon the sand of the sea, and saw a beast rise"
    )


@pytest.mark.parametrize(
    "reference, placeholder",
    [("Matthew 17:21", "[]"), ("Job 34:29", "..."), ("1 Samuel 13:1", "***")],
)
def test_bbe_placeholders_become_empty(texts, reference, placeholder):
    assert bible_text.raw_verses("bbe")[ref(reference)].split(".", 1)[1] == placeholder
    assert texts["bbe"][ref(reference)] == ""


def test_bbe_inline_gap_marks_are_dropped(texts):
    assert "*** I took you" in bible_text.raw_verses("bbe")[ref("Judges 2:1")]
    assert "And he said, I took you out of Egypt" in texts["bbe"][ref("Judges 2:1")]


@pytest.mark.parametrize(
    "reference", ["Isaiah 64:2", "Daniel 10:19", "Acts 19:41", "2 Corinthians 13:13"]
)
def test_wbs_has_no_text_for(texts, reference):
    assert texts["wbs"][ref(reference)] == ""
    assert texts["kjv"][ref(reference)]


# --- DAR, WEB, YLT ------------------------------------------------------------------------------


def test_dar_numbers_30_skips_verse_2_and_is_renumbered(texts):
    raw = bible_text.raw_verses("dar")
    assert ref("Numbers 30:2") not in raw and ref("Numbers 30:17") in raw
    assert texts["dar"][ref("Numbers 30:2")].startswith("If a man vow a vow to Jehovah")
    assert texts["dar"][ref("Numbers 30:16")].startswith("These are the statutes")


@pytest.mark.parametrize("reference", ["Deuteronomy 29:3", "1 Kings 22:44", "Revelation 13:2"])
def test_dar_empty_slots_are_renumbered_away(texts, reference):
    raw = bible_text.raw_verses("dar")
    assert raw[ref(reference)].strip() == f"{ref(reference) % 1000}."
    assert texts["dar"][ref(reference)]  # the next verse moved up into it


def test_dar_psalms_end_with_an_empty_extra_verse(texts):
    raw = bible_text.raw_verses("dar")
    assert raw[ref("Psalms 3:9")].strip() == "9."
    assert ref("Psalms 3:9") not in texts["dar"]
    assert texts["dar"][ref("Psalms 3:8")].startswith("Salvation is of Jehovah")


def test_web_romans_doxology_is_rekeyed(texts):
    raw = bible_text.raw_verses("web")
    assert ref("Romans 14:24") in raw and ref("Romans 16:25") not in raw
    for shipped, kjv_ref in [("Romans 14:24", "Romans 16:25"), ("Romans 14:26", "Romans 16:27")]:
        assert texts["web"][ref(kjv_ref)] == raw[ref(shipped)].split(".", 1)[1].strip()
    assert texts["web"][ref("Romans 16:27")].startswith("to the only wise God")


def test_web_psalm_headings_move_to_the_psalm_they_head(texts):
    web = texts["web"]
    assert "Psalm 3" in bible_text.raw_verses("web")[ref("Psalms 2:12")]
    assert not any(re.search(r"Psalm \d|BOOK [IV]", t) for t in web.values())
    assert web[ref("Job 42:17")] == "So Job died, being old and full of days."
    assert web[ref("Psalms 2:12")].endswith("Blessed are all those who take refuge in him.")
    assert web[ref("Psalms 42:1")].startswith("For the Chief Musician. A contemplation by the sons")
    assert web[ref("Psalms 119:1")].startswith("ALEPH Blessed are those")
    assert web[ref("Psalms 119:9")].startswith("BEIT How can a young man")
    assert web[ref("Psalms 119:8")].endswith("Don`t utterly forsake me.")


def test_ylt_genesis_18_is_divided_differently_but_passes(texts, kjv):
    # YLT's 18:11 is KJV's 18:10b: a real division difference the lexical check tolerates.
    assert texts["ylt"][ref("Genesis 18:11")].startswith("And Sarah is hearkening at the opening")
    assert "Sarah heard [it] in the tent door" in kjv[ref("Genesis 18:10")]


# --- brackets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("And the famine [was] sore in the land.", "And the famine was sore in the land."),
        ("doing [that which was] right", "doing that which was right"),
        ("[the] only wise God", "the only wise God"),
        ("no brackets here", "no brackets here"),
        ("He beholdeth all high [things:] he", "He beholdeth all high things: he"),
    ],
)
def test_strip_brackets(text, expected):
    assert bible_text.strip_brackets(text) == expected


def test_kjv_keeps_its_brackets(kjv):
    assert kjv[ref("Genesis 43:1")] == "And the famine [was] sore in the land."
    assert sum("[" in t for t in kjv.values()) > 10_000


# --- errors and caching -------------------------------------------------------------------------


def test_dr_is_refused_for_its_versification():
    with pytest.raises(LmfuseError, match="Vulgate versification") as e:
        bible_text.read_version("dr")
    assert "\n" not in str(e.value)
    with pytest.raises(LmfuseError, match="versification"):
        bible.load_validated("dr")


def test_dr_really_has_vulgate_versification():
    ids = set(bible_ids.kjv_verse_ids())
    dr = set(bible_text.raw_verses("dr"))
    assert (len(ids - dr), len(dr - ids)) == (372, 2152)


def test_unknown_version_lists_valid_names():
    with pytest.raises(LmfuseError, match="unknown Bible version 'niv'") as e:
        bible_text.read_version("niv")
    assert all(name in str(e.value) for name in bible_text.VALIDATED_VERSIONS)


def test_missing_package_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pythonbible_ylt", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "pythonbible_ylt.plain_text_bible", None)
    with pytest.raises(LmfuseError, match=r"pip install 'lmfuse\[demo\]'.*pythonbible-ylt"):
        bible_text.read_version("ylt")


def test_read_version_is_cached_and_returns_copies(texts):
    first = bible_text.read_version("asv")
    first[ref("Genesis 1:1")] = "changed"
    assert bible_text.read_version("asv")[ref("Genesis 1:1")] == texts["asv"][ref("Genesis 1:1")]
    assert bible_text._read_version.cache_info().hits > 0


def test_load_validated_returns_text_and_report(texts):
    loaded, report = bible.load_validated("bbe")
    assert loaded == texts["bbe"] and report.passed and report.version == "bbe"


def test_load_validated_refuses_misaligned_text(monkeypatch, api):
    real = bible_text.read_version
    monkeypatch.setattr(bible, "read_version", lambda n: api["wbs"] if n == "wbs" else real(n))
    bible._load_validated.cache_clear()
    try:
        with pytest.raises(LmfuseError, match="misaligned") as e:
            bible.load_validated("wbs")
        assert "\n" not in str(e.value)
    finally:
        bible._load_validated.cache_clear()
