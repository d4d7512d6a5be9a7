"""The Reina-Valera 1909 from SWORD: markup, versification repairs, cache and checks."""

from __future__ import annotations

import json
import sys

import pytest

from lmfuse.data import alignment, bible_ids, sword
from lmfuse.errors import LmfuseError

ref = bible_ids.parse_reference

HAS_MODULE = sword.has_module()


def _need_module() -> None:
    if not HAS_MODULE:
        pytest.skip(f"needs the SWORD module spaRV1909eb in {sword.sword_home()} "
                    "(apt-get install sword-text-sparv)")


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return tmp_path_factory.mktemp("sword") / "cache" / "rv1909.json"


@pytest.fixture(scope="module")
def rv(cache_path) -> dict[int, str]:
    _need_module()
    return sword.read_rv1909(cache_path=cache_path)


@pytest.fixture(scope="module")
def report(rv) -> alignment.AlignmentReport:
    return sword.check_rv1909(rv)


@pytest.fixture(scope="module")
def slots() -> dict[int, str]:
    """The text as the module packs it into KJV slots, before the versification repairs."""
    _need_module()
    return sword._read_slots(sword.sword_home())


def test_keyed_by_every_kjv_verse(rv):
    assert list(rv) == bible_ids.kjv_verse_ids()
    assert sum(1 for text in rv.values() if text) == 31_081


def test_passes_its_alignment_check(report):
    assert report.passed, report.summary()
    assert report.verses == 31_102
    assert report.spot_checks_passed == report.spot_checks_total == len(sword.SPOT_CHECKS)
    assert report.lexical_flag_rate < 0.01
    assert report.shifted_chapters == ()
    assert report.summary().startswith("rv1909: 31102 ids, 31081 non-empty, spot 13/13")


def test_spot_checks(rv):
    assert rv[ref("John 3:16")].startswith("Porque de tal manera amó Dios al mundo")
    assert rv[ref("Genesis 1:1")] == "EN el principio crió Dios los cielos y la tierra."


def test_markup_is_stripped_and_whitespace_normalised(rv):
    assert not any("<" in t or ">" in t or "  " in t or t != t.strip() for t in rv.values())


@pytest.mark.parametrize(
    "osis, text",
    [
        ('<w lemma="strong:G2316">Dios</w> <w lemma="x">sabio</w>, ', "Dios sabio,"),
        (  # the source drops the space between elements: put it back
            '<transChange type="added">enviada</transChange><w lemma="x">por</w>'
            '<transChange type="added">medio de</transChange><w lemma="x">Febe</w>,',
            "enviada por medio de Febe,",
        ),
        (  # ... unless the added word is a pronoun attached to the verb
            '<w lemma="x">Júrame</w><transChange type="added">lo</transChange> <w>en</w>',
            "Júramelo en",
        ),
        (
            '<w lemma="x">Y no</w><transChange type="added">lo</transChange><w>oímos</w>',
            "Y no lo oímos",
        ),
        (
            '<w>Josué</w><transChange type="added">los</transChange> circuncidó',
            "Josué los circuncidó",
        ),
        ('<w>fin</w>. <chapter eID="Rom.16"/><div eID="g" type="x-p"/> ', "fin."),
    ],
)
def test_clean_osis(osis, text):
    assert sword.clean_osis(osis) == text


def test_spaces_restored_in_real_verses(rv):
    assert "hay allí también bdelio" in rv[ref("Genesis 2:12")]
    assert "Y dijo Jacob: Júramelo en este día." in rv[ref("Genesis 25:33")]


def test_the_module_packs_some_chapters_off_by_verses(slots):
    # KJV Num 12:16 is empty in the module: its text opens chapter 13, shifting it by one.
    assert slots[ref("Numbers 12:16")] == ""
    assert slots[ref("Numbers 13:1")].startswith("Y DESPUÉS movió el pueblo de Haseroth")
    # ... and the overflow is folded into the chapter's last verse.
    assert "También vimos allí gigantes" in slots[ref("Numbers 13:33")]
    report = sword.check_rv1909(slots)
    assert not report.passed
    assert set(report.shifted_chapters) == {
        "Numbers 13",
        "Numbers 30",
        "1 Samuel 24",
        "1 Chronicles 21",
        "2 Chronicles 33",
        "Hosea 12",
        "Jonah 2",
    }


@pytest.mark.parametrize(
    "reference, opening",
    [
        ("Numbers 12:16", "Y DESPUÉS movió el pueblo de Haseroth"),
        ("Numbers 13:1", "Y Jehová habló á Moisés, diciendo:"),
        ("Numbers 29:40", "Y MOISÉS dijo á los hijos de Israel"),
        ("1 Samuel 23:29", "ENTONCES David subió de allí"),
        ("1 Kings 22:44", "Y Josaphat hizo paz con el rey de Israel."),
        ("2 Chronicles 33:12", "Mas luego que fué puesto en angustias"),
        ("Job 38:39", "¿CAZARÁS tú la presa para el león?"),
        ("Job 40:6", "ENTONCES respondió Jehová á Job desde la oscuridad"),
        ("Hosea 11:12", "CERCÓME Ephraim con mentira"),
        ("Jonah 1:17", "MAS Jehová había prevenido un gran pez"),
        ("Jonah 2:1", "Y oró Jonás desde el vientre del pez"),
        ("2 Corinthians 13:14", "La gracia del Señor Jesucristo"),
    ],
)
def test_shifted_runs_are_moved_back(rv, reference, opening):
    assert rv[ref(reference)].startswith(opening)


def test_split_verses_are_joined(rv):
    assert rv[ref("1 Kings 22:43")].endswith("quemaba perfumes en los altos.")
    assert "Basta ya; detén tu mano." in rv[ref("1 Chronicles 21:15")]
    assert rv[ref("Judges 14:18")].endswith("nunca hubierais descubierto mi enigma.")


def test_epistle_subscriptions_are_dropped(rv):
    assert rv[ref("Romans 16:27")].endswith("para siempre. Amén.")
    assert rv[ref("Hebrews 13:25")] == "La gracia sea con todos vosotros. Amén."
    assert not any("Fué escrita" in t or "Epístola á" in t for t in rv.values())


def test_text_merged_into_a_neighbour_leaves_an_empty_verse(rv):
    empty = [bible_ids.reference(v) for v, text in rv.items() if not text]
    assert "Acts 19:41" in empty and "Numbers 13:33" in empty and "Job 40:1" in empty
    assert "despidió la concurrencia" in rv[ref("Acts 19:40")]
    assert len(empty) == 21


def test_one_verse_off_fails_the_check(rv):
    ids = bible_ids.kjv_verse_ids()
    off = dict(zip(ids[1:], (rv[v] for v in ids), strict=False)) | {ids[0]: rv[ids[0]]}
    report = sword.check_rv1909(off)
    assert not report.passed and report.lexical_flag_rate > 0.5


def test_tokens_meet_across_languages():
    assert sword.spanish_tokens("Faraón dió orden á sus gentes acerca de Abram") & sword.kjv_tokens(
        "And Pharaoh commanded [his] men concerning him"
    ) == {"name:fara"}
    assert sword.spanish_tokens("la tierra") == sword.kjv_tokens("the earth")


# --- cache --------------------------------------------------------------------------------------


def test_cache_is_written_and_used(rv, cache_path, tmp_path):
    data = json.loads(cache_path.read_text(encoding="utf-8"))
    assert data["module"] == "spaRV1909eb" and len(data["verses"]) == 31_102
    assert not list(cache_path.parent.glob("*.tmp"))  # written atomically
    # With a valid cache the SWORD library is not touched at all.
    assert sword.read_rv1909(sword_dir=str(tmp_path / "nowhere"), cache_path=cache_path) == rv


def test_stale_or_broken_cache_is_rebuilt(rv, tmp_path):
    broken = tmp_path / "rv.json"
    broken.write_text('{"module": "spaRV1909eb", "format": 1, "verses": {"1001001": "x"}}')
    assert sword.read_rv1909(cache_path=broken) == rv
    broken.write_text("not json")
    assert sword.read_rv1909(cache_path=broken) == rv
    assert len(json.loads(broken.read_text(encoding="utf-8"))["verses"]) == 31_102


# --- errors -------------------------------------------------------------------------------------


def test_missing_sword_library_names_the_debian_package(tmp_path):
    with pytest.raises(LmfuseError, match="apt-get install sword-text-sparv") as e:
        sword.read_rv1909(sword_dir=str(tmp_path / "missing"))
    assert "\n" not in str(e.value)


def test_library_without_the_module_names_the_debian_package(tmp_path):
    (tmp_path / "mods.d").mkdir()
    with pytest.raises(LmfuseError, match="spaRV1909eb.*sword-text-sparv"):
        sword.read_rv1909(sword_dir=str(tmp_path))


def test_missing_pysword_names_the_pip_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pysword", None)
    monkeypatch.setitem(sys.modules, "pysword.modules", None)
    with pytest.raises(LmfuseError, match=r"pip install 'lmfuse\[demo\]'"):
        sword.read_rv1909(sword_dir=str(tmp_path))


def test_library_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(sword.SWORD_DIR_ENV, raising=False)
    assert sword.sword_home() == "/usr/share/sword"
    monkeypatch.setenv(sword.SWORD_DIR_ENV, str(tmp_path))
    assert sword.sword_home() == str(tmp_path)
    with pytest.raises(LmfuseError, match="apt-get install sword-text-sparv"):
        sword.read_rv1909()  # reads the library the variable names


@pytest.mark.parametrize("library", ["missing", "empty", "other_module"])
def test_check_available_is_one_line_naming_package_and_command(tmp_path, library):
    where = tmp_path / library
    if library != "missing":
        (where / "mods.d").mkdir(parents=True)
    if library == "other_module":
        (where / "mods.d" / "kjv.conf").write_text("[KJV]\n")
    with pytest.raises(LmfuseError) as e:
        sword.check_available(sword_dir=str(where))
    message = str(e.value)
    assert "\n" not in message
    assert "sword-text-sparv" in message and "apt-get install" in message
    assert str(where) in message and sword.SWORD_DIR_ENV in message


def test_check_available_passes_with_the_module_conf(tmp_path):
    (tmp_path / "mods.d").mkdir()
    (tmp_path / "mods.d" / "spaRV1909eb.conf").write_text("[spaRV1909eb]\n")
    sword.check_available(sword_dir=str(tmp_path))  # the .conf is all it looks at


def test_check_available_passes_with_a_valid_cache_and_no_library(rv, cache_path, tmp_path):
    sword.check_available(sword_dir=str(tmp_path / "nowhere"), cache_path=cache_path)
    with pytest.raises(LmfuseError, match="sword-text-sparv"):
        sword.check_available(sword_dir=str(tmp_path / "nowhere"), cache_path=tmp_path / "no.json")
