"""The Spanish Reina-Valera 1909 from the SWORD module `spaRV1909eb` (Debian: sword-text-sparv).

The module declares KJV versification, so its verse slots key onto `bible_ids.kjv_verse_ids()`.
Reading, in order:

1. pysword, one chapter at a time through `get_iter` (`get(join=None)` crashes), with
   `clean=False`. pysword re-inflates a whole book for every verse it returns (about 40 s for the
   Bible); memoising that per book brings a full read to a few seconds, and `read_rv1909` can
   also keep a JSON cache.
2. Markup. The text is OSIS with a `<w>` element per Strong's-tagged word and `<transChange>` for
   words the translators added, and the source often omits the space between two elements
   ("enviada</transChange><w>por"). We strip the tags and put the space back, except where the
   added word is a pronoun attached to a verb ("Júrame" + "lo" = "Júramelo").
3. Versification. The underlying text does not always divide verses as KJV does: where its
   chapter starts earlier (Hebrew-style, e.g. its Num 13:1 is KJV Num 12:16) or it splits or
   merges a verse, the module packs the text into KJV slots in order, leaves empty slots, and
   folds the overflow into the chapter's last verse. Ten such runs (found by the clustered
   lexical flags, Judg 14 by its overlong last verse, and read verse by verse) are moved back
   onto their KJV verses (`_SHIFTED_RUNS`). A KJV verse whose text sits merged in its neighbour
   stays empty.
4. Subscriptions. The epistles end with notes such as "Fué escrita de Corinto..." after the final
   "Amén."; KJV's text has none, so they are dropped.

`check_rv1909` validates the result: verse count, Spanish spot checks (including the moved runs)
and the lexical check against KJV through shared names and a small Spanish-English glossary.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from types import ModuleType

from lmfuse.data import alignment, bible_ids, bible_text
from lmfuse.errors import LmfuseError

SPANISH_VERSION = "rv1909"
DEFAULT_SWORD_DIR = "/usr/share/sword"
SWORD_DIR_ENV = "LMFUSE_SWORD_DIR"  # a SWORD library elsewhere (e.g. ~/.sword)
_MODULE = "spaRV1909eb"
_CACHE_FORMAT = 1  # bump when the text processing changes, to invalidate old caches
_INSTALL = "install it with apt-get install sword-text-sparv"


def sword_home() -> str:
    """The SWORD library read for rv1909: $LMFUSE_SWORD_DIR, else Debian's /usr/share/sword."""
    return os.environ.get(SWORD_DIR_ENV) or DEFAULT_SWORD_DIR


def has_module(sword_dir: str | None = None) -> bool:
    """Whether the SWORD library at `sword_dir` (default: `sword_home()`) holds the Reina-Valera
    1909 module, without opening it."""
    return (Path(sword_dir or sword_home()) / "mods.d" / f"{_MODULE}.conf").exists()


# --- markup -------------------------------------------------------------------------------------

# Clitic pronouns the translators added after a verb ("tráeme" + "lo" = "tráemelo").
_CLITICS = frozenset("lo la los las le les me te se nos os".split())
# Verb forms that take a clitic: infinitives, plural imperatives, gerunds, and any word with a
# written accent (RV1909 marks the stress of "sáca", "púso", "oyéndo" before a clitic).
_CLITIC_HOST = re.compile(r"\w*(?:[aeiou]r|d|ndo|[áéíóú]\w*)|da|di|haz|vi", re.IGNORECASE)
# Accented words that are not verbs: interrogatives, and the names that precede an added
# pronoun in this text ("Josué los circuncidó").
_NOT_HOSTS = frozenset("cuánto cuántos qué cómo cuándo dónde quién él jehová josué".split())
_ADDED_AFTER_WORD = re.compile(r"(\S*)</w>(<transChange[^>]*>)([^<]*)(?=</transChange>)")
_TAG = re.compile(r"<[^>]*>")


def _attaches(host: str, added: str) -> bool:
    host = host.rsplit(">", 1)[-1]
    if added not in _CLITICS or host.lower() in _NOT_HOSTS:
        return False
    return bool(_CLITIC_HOST.fullmatch(host))


def _space_added_words(osis: str) -> str:
    def boundary(match: re.Match[str]) -> str:
        host, tag, added = match[1], match[2], match[3]
        space = "" if _attaches(host, added) else " "
        return f"{host}</w>{space}{tag}{added}"

    osis = _ADDED_AFTER_WORD.sub(boundary, osis)
    return osis.replace("</transChange><w", "</transChange> <w")


def clean_osis(osis: str) -> str:
    """Plain verse text from the module's OSIS: markup stripped, spaces restored, normalised."""
    return " ".join(_TAG.sub("", _space_added_words(osis)).split())


# --- versification ------------------------------------------------------------------------------

# (first slot, last slot, KJV verse the first slot really is): the slots' texts move, in order,
# onto consecutive KJV verses from there (joined to any text already there).
_SHIFTED_RUNS: tuple[tuple[str, str, str], ...] = (
    ("Numbers 13:1", "Numbers 13:33", "Numbers 12:16"),
    ("Numbers 30:1", "Numbers 30:16", "Numbers 29:40"),
    ("Judges 14:19", "Judges 14:20", "Judges 14:18"),  # KJV 14:18 split in two
    ("1 Samuel 24:1", "1 Samuel 24:22", "1 Samuel 23:29"),
    ("1 Kings 22:44", "1 Kings 22:53", "1 Kings 22:43"),  # KJV 22:43 split in two
    ("1 Chronicles 21:16", "1 Chronicles 21:30", "1 Chronicles 21:15"),  # 21:15 split
    ("2 Chronicles 33:11", "2 Chronicles 33:24", "2 Chronicles 33:12"),  # 33:10-11 merged
    ("Job 39:1", "Job 39:30", "Job 38:39"),  # its Job 39 = KJV 38:39-40:5
    ("Job 40:1", "Job 40:19", "Job 40:6"),
    ("Hosea 12:1", "Hosea 12:14", "Hosea 11:12"),
    ("Jonah 2:1", "Jonah 2:10", "Jonah 1:17"),
    ("2 Corinthians 13:13", "2 Corinthians 13:13", "2 Corinthians 13:14"),  # 13:12-13 merged
)


def _move_shifted_runs(texts: dict[int, str]) -> dict[int, str]:
    ids = bible_ids.kjv_verse_ids()
    index = {verse_id: i for i, verse_id in enumerate(ids)}
    moved = dict(texts)
    runs = []
    for first, last, target in _SHIFTED_RUNS:
        slots = ids[
            index[bible_ids.parse_reference(first)] : index[bible_ids.parse_reference(last)] + 1
        ]
        runs.append((index[bible_ids.parse_reference(target)], [texts[slot] for slot in slots]))
        for slot in slots:
            moved[slot] = ""
    for start, run in runs:
        for offset, text in enumerate(run):
            verse_id = ids[start + offset]
            moved[verse_id] = f"{moved[verse_id]} {text}".strip()
    return moved


# "... Amén. Fué escrita de Corinto á los Romanos, enviada por medio de Febe, ..."
_SUBSCRIPTION = re.compile(r"(.*\bAmén\.)\s+[^.]*\b(?:[Ee]scrita|[Ee]nviada)\b[^.]*\.")


def _drop_subscriptions(texts: dict[int, str]) -> dict[int, str]:
    last_verse: dict[int, int] = {}
    for verse_id in texts:
        last_verse[bible_ids.verse_key(verse_id)[0]] = verse_id
    dropped = dict(texts)
    for verse_id in last_verse.values():
        if match := _SUBSCRIPTION.fullmatch(texts[verse_id]):
            dropped[verse_id] = match[1]
    return dropped


# --- reading ------------------------------------------------------------------------------------


def _import_pysword() -> ModuleType:
    try:
        return importlib.import_module("pysword.modules")
    except ImportError as e:
        raise LmfuseError(
            "pysword is not installed; run pip install 'lmfuse[demo]' (or pip install pysword)"
        ) from e


def _open_module(sword_dir: str):
    modules = _import_pysword().SwordModules(sword_dir)
    try:
        found = modules.parse_modules()
    except OSError as e:
        raise LmfuseError(f"no SWORD library at {sword_dir}; {_INSTALL}") from e
    if _MODULE not in found:
        raise LmfuseError(f"SWORD module {_MODULE} is not in {sword_dir}; {_INSTALL}")
    try:
        module = modules.get_bible_from_module(_MODULE)
    except OSError as e:  # the .conf is there but the text files are not
        raise LmfuseError(f"cannot open SWORD module {_MODULE} in {sword_dir}; {_INSTALL}") from e
    decompress = getattr(module, "_decompressed_text", None)
    if callable(decompress):
        # pysword re-inflates the whole book for every verse; remember the current book.
        module._decompressed_text = functools.lru_cache(maxsize=4)(decompress)
    return module


def _books(module) -> list:
    books = module.get_structure().get_books()
    ordered = [*books.get("ot", []), *books.get("nt", [])]
    if len(ordered) != 66:
        raise LmfuseError(f"{_MODULE} has {len(ordered)} books, not 66; {_INSTALL}")
    return ordered


@functools.cache
def _read_slots(sword_dir: str) -> dict[int, str]:
    """The module's text per KJV slot, markup stripped, before any repair (do not mutate)."""
    module = _open_module(sword_dir)
    texts: dict[int, str] = {}
    for number, book in enumerate(_books(module), start=1):
        for chapter, length in enumerate(book.chapter_lengths, start=1):
            verses = list(module.get_iter(books=book.name, chapters=chapter, clean=False))
            if len(verses) != length:  # get_iter skips unreadable verses: never shift the rest
                raise LmfuseError(
                    f"{_MODULE} {book.name} {chapter} has {len(verses)} of {length} verses; "
                    f"reinstall it with apt-get install --reinstall sword-text-sparv"
                )
            for verse, osis in enumerate(verses, start=1):
                texts[number * 1_000_000 + chapter * 1000 + verse] = clean_osis(osis)
    if list(texts) != bible_ids.kjv_verse_ids():
        raise LmfuseError(f"{_MODULE} does not have KJV's verses; {_INSTALL}")
    return texts


def _read_module(sword_dir: str) -> dict[int, str]:
    return _drop_subscriptions(_move_shifted_runs(_read_slots(sword_dir)))


def check_available(
    sword_dir: str | None = None, cache_path: str | os.PathLike | None = None
) -> None:
    """Raises a one-line LmfuseError, without reading any text, unless `read_rv1909` can work:
    a valid cache at `cache_path`, or pysword and the module's .conf in the SWORD library."""
    if cache_path is not None and _load_cache(Path(cache_path)) is not None:
        return
    where = Path(sword_dir or sword_home())
    confs = where.glob("mods.d/*.conf") if (where / "mods.d").is_dir() else ()
    if not any(conf.name.lower() == f"{_MODULE.lower()}.conf" for conf in confs):
        raise LmfuseError(
            f"the Spanish Bible (rv1909) needs the SWORD module {_MODULE}, which is not in "
            f"{where} (${SWORD_DIR_ENV} sets another library); {_INSTALL}"
        )
    _import_pysword()


def _load_cache(path: Path) -> dict[int, str] | None:
    """The cached texts, or None when the cache is missing, stale or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("module") != _MODULE or data.get("format") != _CACHE_FORMAT:
            return None
        texts = {int(key): value for key, value in data["verses"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return texts if list(texts) == bible_ids.kjv_verse_ids() else None


def _write_cache(path: Path, texts: dict[int, str]) -> None:
    """Writes atomically, so a concurrent or interrupted run never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"module": _MODULE, "format": _CACHE_FORMAT, "verses": texts}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
        os.chmod(tmp, 0o644)  # mkstemp creates it private; the cache is ordinary data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_rv1909(
    sword_dir: str | None = None, cache_path: str | os.PathLike | None = None
) -> dict[int, str]:
    """Reina-Valera 1909 keyed by KJV verse id ('' where it has no text), whitespace normalised.

    Reads the SWORD library at `sword_dir` (default: `sword_home()`). With `cache_path`, reads
    the JSON cache there if it is valid, else reads the module and writes the cache. Results
    are also cached in-process per library.
    """
    cache = Path(cache_path) if cache_path is not None else None
    if cache is not None and (texts := _load_cache(cache)) is not None:
        return texts
    texts = _read_module(os.fspath(sword_dir or sword_home()))
    if cache is not None:
        _write_cache(cache, texts)
    return texts


# --- checks -------------------------------------------------------------------------------------

# The lexical check needs tokens both languages share: names and places (folded spelling, first
# four letters: "Faraón"/"Pharaoh" -> "fara") and these glossed words, numbers first. A Spanish
# word maps to itself; its English equivalents map to it.
_GLOSSARY = """
uno=one una=one dos=two tres=three cuatro=four cinco=five seis=six siete=seven ocho=eight
nueve=nine diez=ten doce=twelve veinte=twenty treinta=thirty cuarenta=forty cincuenta=fifty
ciento=hundred cien=hundred mil=thousand rey=king reyes=kings hijo=son hijos=sons/children
hija=daughter hijas=daughters padre=father padres=fathers madre=mother hermano=brother
hermanos=brethren/brothers mujer=woman/wife casa=house ciudad=city ciudades=cities
tierra=land/earth pueblo=people sacerdote=priest sacerdotes=priests oro=gold plata=silver
agua=water aguas=waters fuego=fire pan=bread espada=sword sangre=blood cielo=heaven
cielos=heavens mar=sea monte=mount/mountain camino=way día=day días=days año=year años=years
noche=night corazón=heart alma=soul ley=law pecado=sin muerte=death vida=life ojos=eyes
mano=hand manos=hands voz=voice palabra=word nombre=name templo=temple gloria=glory
misericordia=mercy justicia=righteousness siervo=servant siervos=servants ángel=angel
discípulos=disciples espíritu=spirit reino=kingdom ovejas=sheep carneros=rams corderos=lambs
caballos=horses carros=chariots piedra=stone piedras=stones árbol=tree vino=wine aceite=oil
tribu=tribe príncipe=prince príncipes=princes enemigos=enemies guerra=war profeta=prophet
puerta=gate/door muro=wall
"""
_SPANISH_GLOSSES = {pair.split("=")[0]: pair.split("=")[0] for pair in _GLOSSARY.split()}
_ENGLISH_GLOSSES = {
    english: spanish
    for spanish, englishes in (pair.split("=") for pair in _GLOSSARY.split())
    for english in englishes.split("/")
}
_SOUNDS = (("ph", "f"), ("th", "t"), ("ch", "c"), ("y", "i"), ("k", "c"), ("z", "s"), ("h", ""))


def _name_key(word: str) -> str:
    """Spelling-folded stem of a name, so "Babilonia"/"Babylon" and "Fariseos"/"Pharisees" meet."""
    word = unicodedata.normalize("NFKD", word.lower())
    word = "".join(c for c in word if not unicodedata.combining(c))
    for spelling, sound in _SOUNDS:
        word = word.replace(spelling, sound)
    return re.sub(r"(.)\1+", r"\1", word)[:4]


def _shared_tokens(text: str, glosses: dict[str, str]) -> frozenset[str]:
    words = re.findall(r"\w+", text)
    names = {"name:" + _name_key(w) for w in words if w[:1].isupper() and len(w) >= 3}
    return frozenset(names | {"word:" + glosses[w.lower()] for w in words if w.lower() in glosses})


def spanish_tokens(text: str) -> frozenset[str]:
    """Names and glossed words of a Spanish verse, for the lexical check against KJV."""
    return _shared_tokens(text, _SPANISH_GLOSSES)


def kjv_tokens(text: str) -> frozenset[str]:
    """The same tokens for an English (KJV) verse."""
    return _shared_tokens(text, _ENGLISH_GLOSSES)


# Across languages the lexical check is noisier: the repaired text flags 0.57% of its verses
# (repeated names and stock phrases), a text one verse off 70%. The overall rate therefore only
# guards against wholesale misalignment; a local shift shows as a shifted chapter (the text as
# the module packs it has 7, e.g. Numbers 13 with 29 of 32 verses flagged; the repaired text 0).
MAX_SPANISH_FLAG_RATE = 0.02


def _spot(ref: str, starts: str = "", equals: str | None = None) -> alignment.SpotCheck:
    return alignment.SpotCheck(bible_ids.parse_reference(ref), starts=starts, equals=equals)


# Known verses of the 1909 edition (its orthography: "á", "fué"), including repaired runs.
SPOT_CHECKS: tuple[alignment.SpotCheck, ...] = (
    _spot("Genesis 1:1", equals="EN el principio crió Dios los cielos y la tierra."),
    _spot("Psalms 23:1", equals="Salmo de David. JEHOVÁ es mi pastor; nada me faltará."),
    _spot("John 3:16", "Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito"),
    _spot("Numbers 12:16", "Y DESPUÉS movió el pueblo de Haseroth"),
    _spot("Numbers 13:1", equals="Y Jehová habló á Moisés, diciendo:"),
    _spot("1 Kings 22:44", equals="Y Josaphat hizo paz con el rey de Israel."),
    _spot("Job 39:1", "¿Sabes tú el tiempo en que paren las cabras monteses"),
    _spot("Job 40:6", "ENTONCES respondió Jehová á Job desde la oscuridad"),
    _spot("Jonah 1:17", "MAS Jehová había prevenido un gran pez que tragase á Jonás"),
    _spot(
        "Romans 16:27", equals="Al solo Dios sabio, sea gloria por Jesucristo para siempre. Amén."
    ),
    _spot("2 Corinthians 13:14", "La gracia del Señor Jesucristo, y el amor de Dios"),
    _spot(
        "Revelation 22:21",
        equals="La gracia de nuestro Señor Jesucristo sea con todos vosotros. Amén.",
    ),
    alignment.SpotCheck(bible_ids.parse_reference("Acts 19:41"), empty=True),  # merged into 19:40
)


def check_rv1909(texts: dict[int, str]) -> alignment.AlignmentReport:
    """Verse count, Spanish spot checks and the cross-language lexical check against KJV."""
    kjv = bible_text.read_version("kjv")
    return alignment.alignment_report(
        SPANISH_VERSION,
        texts,
        kjv,
        SPOT_CHECKS,
        tokenize=spanish_tokens,
        kjv_tokenize=kjv_tokens,
        max_flag_rate=MAX_SPANISH_FLAG_RATE,
    )
