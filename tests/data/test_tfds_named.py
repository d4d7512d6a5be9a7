"""Tests for lm1b/WMT through TFDS's data_source, with TensorFlow made unimportable.

Two paths are covered:

* `tfds.testing.mock_data(policy=MockPolicy.USE_CODE)`: TFDS builds the dataset info from the
  builder's code (there are no prepared metadata files, which `USE_FILES` would need and
  `AUTO` would fall back from) and serves deterministic random text through its mocked
  ArrayRecord data source. Split names aren't known in this mode, so any split is accepted.
* A real prepare: `prepare_named` runs the real builder and ArrayRecord writer, with only the
  download-and-generate step replaced by a few lines, so reading sees real files, UTF-8
  bytes and real split names.

Without network access (simulated by a proxy that refuses connections, whether or not the
machine is online) preparing fails within seconds and leaves nothing behind, and training's
`corpora.prepare` never downloads.
"""

import importlib.abc
import sys
import time
from unittest import mock

import grain
import pytest
import tensorflow_datasets as tfds

from lmfuse.config import load_config
from lmfuse.data import corpora, tfds_named
from lmfuse.errors import LmfuseError

N = 5
MOCK_ALPHABET = set(" abcdefghij")  # TFDS's mock text generator draws from these


class _WithoutTensorFlow(importlib.abc.MetaPathFinder):
    """Import finder that answers "not installed" for TensorFlow, even where it is.

    It wraps the usual finders rather than raising, because TFDS/etils probe with
    `importlib.util.find_spec("tensorflow")` and carry on when it returns None. (A `None`
    entry in `sys.modules` would not do: TFDS reads that as "TensorFlow is loaded".)
    """

    def __init__(self, finders):
        self._finders = list(finders)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        for finder in self._finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None


def _hide_tensorflow():
    return mock.patch.object(sys, "meta_path", [_WithoutTensorFlow(sys.meta_path)])


@pytest.fixture(autouse=True)
def no_tensorflow():
    with _hide_tensorflow():
        yield
    assert "tensorflow" not in sys.modules


def _mock():
    return tfds.testing.mock_data(num_examples=N, policy=tfds.testing.MockPolicy.USE_CODE)


def _read(name, split="train", **kwargs):
    kwargs.setdefault("view", "lm")
    with _mock():
        ds = tfds_named.named_source(name, split, data_dir=None, **kwargs)
        assert isinstance(ds, grain.MapDataset)
        return [ds[i] for i in range(len(ds))]


def _raw(name):
    """The examples exactly as tfds.data_source serves them under the same mock."""
    import tensorflow_datasets.translate  # noqa: F401  (registers the WMT builders)

    with _mock():
        source = tfds.data_source(name, split="train", download=False)
        return [source[i] for i in range(len(source))]


def test_named_datasets_match_tfds_configs():
    import tensorflow_datasets.translate as translate

    expected = ["lm1b"]
    for cls in (translate.Wmt14Translate, translate.Wmt17Translate):
        expected += [f"{cls.name}/{config.name}" for config in cls.BUILDER_CONFIGS]
    assert list(tfds_named.NAMED_DATASETS) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lm1b", True),
        ("wmt14_translate/de-en", True),
        ("wmt17_translate/zh-en", True),
        ("wmt14_translate/en-de", False),
        ("wmt14_translate", False),
        ("lm1b/1.1.0", False),
        ("mnist", False),
        ("", False),
    ],
)
def test_is_named_dataset(name, expected):
    assert tfds_named.is_named_dataset(name) is expected


def test_lm1b_lm_view():
    rows = _read("lm1b")
    assert len(rows) == N
    for row in rows:
        assert set(row) == {"text"}
        assert isinstance(row["text"], str) and row["text"]
        assert set(row["text"]) <= MOCK_ALPHABET
    assert len({r["text"] for r in rows}) == N  # distinct examples, not one repeated
    assert rows == _read("lm1b")  # deterministic
    assert [r["text"] for r in rows] == [r["text"] for r in _raw("lm1b")]


def test_wmt_translate_view_default_direction():
    rows = _read("wmt14_translate/de-en", view="translate")
    raw = _raw("wmt14_translate/de-en")
    assert len(rows) == N
    assert [set(r) for r in rows] == [{"source", "target"}] * N
    assert all(isinstance(v, str) for r in rows for v in r.values())
    assert [(r["source"], r["target"]) for r in rows] == [(x["de"], x["en"]) for x in raw]
    assert all(r["source"] != r["target"] for r in rows)


@pytest.mark.parametrize(
    "langs",
    [
        {"source_lang": "en", "target_lang": "de"},
        {"source_lang": "en"},
        {"target_lang": "de"},
    ],
)
def test_wmt_direction_override_swaps(langs):
    default = _read("wmt14_translate/de-en", view="translate")
    swapped = _read("wmt14_translate/de-en", view="translate", **langs)
    assert swapped == [{"source": r["target"], "target": r["source"]} for r in default]


def test_wmt_lm_view_is_target_side():
    pairs = _read("wmt17_translate/de-en", view="translate")
    assert _read("wmt17_translate/de-en") == [{"text": r["target"]} for r in pairs]
    reverse = _read("wmt17_translate/de-en", target_lang="de")
    assert reverse == [{"text": r["source"]} for r in pairs]


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("wmt99/de-en", {}, r"unknown TFDS dataset 'wmt99/de-en'; use one of: lm1b, wmt14"),
        ("lm1b", {"view": "translate"}, "no 'translate' view; use view 'lm'"),
        ("lm1b", {"view": "summarize"}, "unknown data view 'summarize'; use one of: lm, translate"),
        ("lm1b", {"source_lang": "en"}, "lm1b has no languages"),
        (
            "wmt14_translate/de-en",
            {"source_lang": "fr"},
            "languages de and en, but source_lang='fr'",
        ),
        ("wmt14_translate/de-en", {"source_lang": "en", "target_lang": "en"}, "pick them from"),
    ],
)
def test_bad_arguments(name, kwargs, message):
    with pytest.raises(LmfuseError, match=message):
        _read(name, **kwargs)


# --- real ArrayRecord files -------------------------------------------------------------

LINES = ["In the beginning", "ünïcödé ▁ 「」 👨‍👩‍👧‍👦", "  spaced  "]


def _prepare_without_download(name, data_dir, examples):
    """Run `prepare_named` with the builder's download+generate step replaced by `examples`."""
    tfds_named._register_builders(name)
    cls = tfds.builder_cls(name.split("/")[0])

    def split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(examples),
            "test": self._generate_examples(examples[:1]),
        }

    def generate_examples(self, rows):
        yield from ((str(i), row) for i, row in enumerate(rows))

    with (
        mock.patch.object(cls, "_split_generators", split_generators),
        mock.patch.object(cls, "_generate_examples", generate_examples),
        _online(),
    ):
        tfds_named.prepare_named(name, str(data_dir))


def _online():
    """The network check passes (the download itself is replaced or made to fail)."""
    return mock.patch.object(tfds_named, "check_network", lambda name: None)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    with _hide_tensorflow():
        _prepare_without_download("lm1b", data_dir, [{"text": t} for t in LINES])
        pairs = [{"de": f"de {t}", "en": t} for t in LINES]
        _prepare_without_download("wmt14_translate/de-en", data_dir, pairs)
    return str(data_dir)


def test_prepared_lm1b_reads_bytes_as_str(prepared_dir):
    raw = tfds.data_source("lm1b", split="train", data_dir=prepared_dir, download=False)
    assert all(isinstance(raw[i]["text"], bytes) for i in range(len(raw)))
    ds = tfds_named.named_source("lm1b", "train", view="lm", data_dir=prepared_dir)
    texts = [ds[i]["text"] for i in range(len(ds))]
    assert all(type(t) is str for t in texts)
    assert sorted(texts) == sorted(LINES)  # TFDS shuffles on write


def test_prepared_wmt_translate(prepared_dir):
    ds = tfds_named.named_source(
        "wmt14_translate/de-en", "train", view="translate", data_dir=prepared_dir
    )
    rows = sorted((ds[i]["source"], ds[i]["target"]) for i in range(len(ds)))
    assert rows == sorted((f"de {t}", t) for t in LINES)


def test_prepared_missing_split(prepared_dir):
    with pytest.raises(LmfuseError, match=r"bad split 'validation' for lm1b .*'train', 'test'"):
        tfds_named.named_source("lm1b", "validation", view="lm", data_dir=prepared_dir)


def test_not_prepared(tmp_path):
    message = r"wmt17_translate/de-en is not prepared as ArrayRecord in .*lmfuse data prepare"
    with pytest.raises(LmfuseError, match=message):
        tfds_named.named_source(
            "wmt17_translate/de-en", "train", view="translate", data_dir=str(tmp_path)
        )


def test_prepare_unknown_name(tmp_path):
    with pytest.raises(LmfuseError, match="unknown TFDS dataset 'c4'"):
        tfds_named.prepare_named("c4", str(tmp_path))


def test_tensorflow_is_hidden_during_tests():
    import importlib.util

    assert importlib.util.find_spec("tensorflow") is None
    with pytest.raises(ModuleNotFoundError):
        import tensorflow  # noqa: F401


def test_prepare_lm1b_names_tensorflow_when_generation_needs_it(tmp_path):
    # lm1b's own generation code globs its files with tf.io.gfile.
    fake_download = mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(tmp_path)
    )
    with fake_download, _online(), pytest.raises(LmfuseError, match="needs 'tensorflow'"):
        tfds_named.prepare_named("lm1b", str(tmp_path))


def test_prepare_download_failure(tmp_path):
    offline = mock.patch.object(
        tfds.download.DownloadManager,
        "download_and_extract",
        side_effect=ConnectionError("name resolution failed"),
    )
    message = r"preparing wmt14_translate/de-en failed \(ConnectionError: name resolution failed\)"
    with offline, _online(), pytest.raises(LmfuseError, match=message):
        tfds_named.prepare_named("wmt14_translate/de-en", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no metadata, downloads or incomplete folders left


# --- no network, and no download outside `lmfuse data prepare` -------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Every HTTP(S) request goes to a proxy port that refuses connections, as urllib and
    requests (TFDS's downloader) both honour: no network, whatever the machine has."""
    for key in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(key, raising=False)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")


def _no_download():
    """Fails the test if TFDS starts downloading."""
    return mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                             side_effect=AssertionError("a download was attempted"))


@pytest.mark.parametrize("name", ["lm1b", "wmt14_translate/de-en", "wmt17_translate/de-en"])
def test_prepare_offline_fails_within_seconds_leaving_nothing(offline, tmp_path, name):
    data_dir = tmp_path / "data"
    start = time.monotonic()
    with _no_download(), pytest.raises(LmfuseError) as info:
        tfds_named.prepare_named(name, str(data_dir))
    assert time.monotonic() - start < tfds_named.NETWORK_TIMEOUT_S
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download {name}: http://") and "unreachable" in message
    assert not data_dir.exists()


def test_prepared_dataset_needs_no_network(offline, prepared_dir):
    with _no_download():
        tfds_named.prepare_named("lm1b", prepared_dir)  # already there: returns at once
    assert tfds_named.is_prepared("lm1b", prepared_dir)


def _lm_config(corpus, data_dir):
    return load_config("configs/lm_transformer.py:tiny",
                       [f"--config.data.corpus={corpus}", f"--config.data.data_dir={data_dir}"])


@pytest.mark.parametrize("name", ["lm1b", "wmt17_translate/de-en"])
def test_training_never_downloads_an_unprepared_dataset(tmp_path, name):
    """`lmfuse train` (and a resume) call corpora.prepare(config): one line naming the command,
    before any network access or any folder is made."""
    data_dir = tmp_path / "data"
    network = mock.patch.object(tfds_named, "check_network",
                                side_effect=AssertionError("the network was probed"))
    with network, _no_download(), pytest.raises(LmfuseError) as info:
        corpora.prepare(_lm_config(name, data_dir))
    assert str(info.value) == (
        f"{name} is not prepared in {data_dir}; run `lmfuse data prepare --config <this config>` "
        "once, which downloads it (train and eval never download)")
    assert not data_dir.exists()


def test_training_reads_a_prepared_dataset_without_downloading(prepared_dir):
    with _no_download(), mock.patch.object(corpora, "load_tokenizer", return_value="tok"):
        assert corpora.prepare(_lm_config("lm1b", prepared_dir)) == "tok"


def test_data_prepare_downloads_only_when_asked(tmp_path):
    from lmfuse.data import report

    calls = []
    with mock.patch.object(tfds_named, "prepare_named", lambda *a: calls.append(a)), \
            mock.patch.object(corpora, "load_tokenizer"), \
            mock.patch.object(report, "build_report"), \
            mock.patch.object(report, "write_report") as write:
        report.prepare(_lm_config("lm1b", tmp_path))
    assert calls == [("lm1b", str(tmp_path))]
    assert write.call_count == 1  # then the data report is stored


OFFLINE_ENV = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "NO_PROXY": "", "no_proxy": ""}


def test_cli_data_prepare_offline_and_train_unprepared_are_one_line(tmp_path):
    from conftest import run_cli

    data_dir = tmp_path / "data"
    config = ["--config", "configs/lm_transformer.py:tiny", "--config.data.corpus=lm1b",
              "--data_dir", str(data_dir)]
    start = time.monotonic()
    prepare = run_cli(["data", "prepare", *config], env=OFFLINE_ENV, timeout=120)
    assert time.monotonic() - start < 60  # interpreter start-up included; TFDS retries took minutes
    assert prepare.returncode == 2
    (line,) = prepare.stderr.strip().splitlines()
    assert line.startswith("lmfuse: error: cannot download lm1b: "
                           "http://www.statmt.org/lm-benchmark/ is unreachable (")
    assert line.endswith("); lmfuse data prepare needs network access for it once "
                         "(set HTTPS_PROXY if you use a proxy)")
    assert not data_dir.exists()

    train = run_cli(["train", *config, "--workdir", str(tmp_path / "work")], env=OFFLINE_ENV,
                    timeout=120)
    assert train.returncode == 2
    assert train.stderr.strip().splitlines() == [
        f"lmfuse: error: lm1b is not prepared in {data_dir}; run `lmfuse data prepare --config "
        "<this config>` once, which downloads it (train and eval never download)"]
    assert not data_dir.exists()
