"""The validated English Bibles: per-version spot checks and `load_validated`.

`bible_text.read_version` recovers each pythonbible version's alignment to KJV verse ids; this
module proves it before anything trains on it. `check_alignment` runs the `alignment` checks with
the spot checks listed here for each version (verses that fail on misaligned data), and
`load_validated` refuses a version that does not pass. The builders and corpora read the English
versions through `load_validated`.
"""

from __future__ import annotations

import functools

from lmfuse.data.alignment import AlignmentReport, SpotCheck, alignment_report
from lmfuse.data.bible_ids import parse_reference
from lmfuse.data.bible_text import read_version
from lmfuse.errors import LmfuseError


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
