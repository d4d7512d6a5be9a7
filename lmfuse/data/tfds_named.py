"""Standard corpora (lm1b, WMT) read through TFDS's own code, without TensorFlow.

Reading uses `tfds.data_source`, which serves a prepared ArrayRecord dataset by random access
with numpy only; the result is wrapped in a `grain.MapDataset` of plain dicts:

* view ``"lm"``: ``{"text": str}``;
* view ``"translate"``: ``{"source": str, "target": str}``.

WMT examples are keyed by language code (``{"de": ..., "en": ...}``). The default direction is
the order in the config name ("wmt14_translate/de-en" translates de -> en) and can be
overridden with ``source_lang``/``target_lang``; the "lm" view of a WMT pair is its target
side. Text arrives as UTF-8 bytes from prepared files (and as ``str`` from TFDS's mock data),
so both are accepted.

Preparing (`prepare_named`, called by `lmfuse data prepare` only) runs TFDS's builder once to
download and write ArrayRecord files. Some builders' generation code (lm1b's) calls
TensorFlow; reading never does. Training and evaluation never download: an unprepared dataset
is a one-line error that names `lmfuse data prepare`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from lmfuse.data import partial
from lmfuse.errors import LmfuseError

if TYPE_CHECKING:
    import grain

VIEWS = ("lm", "translate")

# WMT language pairs as TFDS 4.9 defines them (`BUILDER_CONFIGS` of each builder).
_WMT_PAIRS = {
    "wmt14_translate": ("cs-en", "de-en", "fr-en", "hi-en", "ru-en"),
    "wmt17_translate": ("cs-en", "de-en", "fi-en", "lv-en", "ru-en", "tr-en", "zh-en"),
}
NAMED_DATASETS: tuple[str, ...] = ("lm1b",) + tuple(
    f"{builder}/{pair}" for builder, pairs in _WMT_PAIRS.items() for pair in pairs
)

_PREPARE_HINT = (
    "run `lmfuse data prepare --config <this config>` once, which downloads it (train and "
    "eval never download)"
)


def is_named_dataset(name: str) -> bool:
    """True for the TFDS datasets this module serves ('lm1b', 'wmt14_translate/de-en', ...)."""
    return name in NAMED_DATASETS


def named_source(
    name: str,
    split: str,
    *,
    view: str,
    data_dir: str | None,
    source_lang: str | None = None,
    target_lang: str | None = None,
) -> grain.MapDataset:
    """A `grain.MapDataset` of text dicts for `split` of the prepared TFDS dataset `name`."""
    import grain

    fields = _fields(name, view, source_lang, target_lang)
    source = _data_source(name, split, data_dir)
    return grain.MapDataset.source(source).map(_ToText(fields))


def is_prepared(name: str, data_dir: str | None) -> bool:
    """Whether `name` is fully prepared under `data_dir` (nothing is downloaded or written)."""
    import tensorflow_datasets as tfds

    _check_name(name)
    _register_builders(name)
    return tfds.builder(name, data_dir=data_dir).is_prepared()


def require_prepared(name: str, data_dir: str | None) -> None:
    """A one-line LmfuseError naming `lmfuse data prepare` unless `name` is prepared under
    `data_dir`: how training and evaluation meet a dataset that they never download."""
    if not is_prepared(name, data_dir):
        raise LmfuseError(f"{name} is not prepared in {data_dir}; {_PREPARE_HINT}")


def prepare_named(name: str, data_dir: str | None) -> None:
    """Download `name` and write it as ArrayRecord under `data_dir` (TFDS default if None).

    Only `lmfuse data prepare` calls this. Without network access it fails within seconds
    (`check_network`), and a failed preparation leaves nothing behind in `data_dir`."""
    import tensorflow_datasets as tfds

    _check_name(name)
    _register_builders(name)
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return
    check_network(name)
    try:
        with partial.no_partial_paths(builder.data_dir_root):
            builder.download_and_prepare(file_format="array_record")
    except ImportError as e:
        raise LmfuseError(
            f"preparing {name} runs TFDS generation code that needs '{e.name or e}'; "
            f"install it for this one-off step (reading the prepared data does not need it)"
        ) from None
    except (OSError, tfds.download.DownloadError) as e:
        raise LmfuseError(
            f"preparing {name} failed ({type(e).__name__}: {_first_line(e)}); check network access and "
            f"free space in {builder.data_dir_root}, then rerun"
        ) from None


# A page on the server each dataset downloads its files from. One request there, with a short
# timeout, tells a machine without network access in seconds, where TFDS's downloader would
# retry each file for minutes. (urllib, like TFDS, honours $HTTP_PROXY / $HTTPS_PROXY.)
_DOWNLOAD_SERVERS = {
    "lm1b": "http://www.statmt.org/lm-benchmark/",
    "wmt14_translate": "http://www.statmt.org/wmt14/",
    "wmt17_translate": "http://data.statmt.org/wmt17/",
}
NETWORK_TIMEOUT_S = 10.0


def check_network(name: str) -> None:
    """Raises a one-line LmfuseError unless the server `name` downloads from answers (with any
    HTTP status) within `NETWORK_TIMEOUT_S`."""
    import urllib.error
    import urllib.request

    url = _DOWNLOAD_SERVERS[name.split("/")[0]]
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=NETWORK_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # the server answered: the network is there
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = _first_line(e.reason) if isinstance(e, urllib.error.URLError) else _first_line(e)
        raise LmfuseError(
            f"cannot download {name}: {url} is unreachable ({reason}); lmfuse data prepare "
            "needs network access for it once (set HTTPS_PROXY if you use a proxy)"
        ) from None


def _check_name(name: str) -> None:
    if not is_named_dataset(name):
        raise LmfuseError(f"unknown TFDS dataset {name!r}; use one of: {', '.join(NAMED_DATASETS)}")


def _fields(
    name: str, view: str, source_lang: str | None, target_lang: str | None
) -> tuple[tuple[str, str], ...]:
    """Map output keys ('text' or 'source'/'target') to the dataset's feature keys."""
    _check_name(name)
    if view not in VIEWS:
        raise LmfuseError(f"unknown data view {view!r}; use one of: {', '.join(VIEWS)}")
    if name == "lm1b":
        if view == "translate":
            raise LmfuseError(
                "lm1b is monolingual text and has no 'translate' view; use view 'lm' "
                "or a wmt*_translate dataset"
            )
        if source_lang or target_lang:
            raise LmfuseError("lm1b has no languages to choose; drop source_lang/target_lang")
        return (("text", "text"),)
    source, target = _direction(name, source_lang, target_lang)
    if view == "lm":
        return (("text", target),)
    return (("source", source), ("target", target))


def _direction(name: str, source_lang: str | None, target_lang: str | None) -> tuple[str, str]:
    """Source and target language; defaults follow the pair order in the config name."""
    first, second = name.split("/")[1].split("-")
    if source_lang is None and target_lang is None:
        return first, second
    other = {first: second, second: first}
    source = source_lang or other.get(target_lang, "?")
    target = target_lang or other.get(source_lang, "?")
    if {source, target} != {first, second}:
        raise LmfuseError(
            f"{name} has languages {first} and {second}, but source_lang={source_lang!r} "
            f"and target_lang={target_lang!r} were given; pick them from that pair"
        )
    return source, target


def _register_builders(name: str) -> None:
    """Import the legacy WMT builders; TFDS doesn't register them on its own import."""
    if name.startswith("wmt"):
        import tensorflow_datasets.translate  # noqa: F401



def _data_source(name: str, split: str, data_dir: str | None) -> Any:
    """`tfds.data_source` with TFDS's errors turned into one-line `LmfuseError`s."""
    import tensorflow_datasets as tfds

    _register_builders(name)
    where = data_dir or f"{tfds.core.constants.DATA_DIR} (the TFDS default)"
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except ValueError as e:
        reason = _first_line(e)
        if "split" in reason.lower():
            raise LmfuseError(f"bad split {split!r} for {name} ({reason}); fix the split") from None
        raise LmfuseError(f"cannot read {name} from {where} ({reason}); {_PREPARE_HINT}") from None
    except (NotImplementedError, FileNotFoundError, KeyError, AssertionError):
        # TFDS reports missing data in several ways: "format TFRECORD is not supported" (its
        # default format), or a KeyError for a split when there is no metadata at all.
        raise LmfuseError(
            f"{name} is not prepared as ArrayRecord in {where}; {_PREPARE_HINT}"
        ) from None


def _first_line(error: object) -> str:
    """TFDS messages span many lines; the first one says what went wrong."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclasses.dataclass(frozen=True)
class _ToText:
    """Turn a TFDS example into a dict of `str` (a class, so Grain workers can pickle it)."""

    fields: tuple[tuple[str, str], ...]

    def __call__(self, example: dict[str, Any]) -> dict[str, str]:
        return {out: _as_str(example[key]) for out, key in self.fields}


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):  # includes numpy.bytes_
        return value.decode("utf-8")
    return str(value)
