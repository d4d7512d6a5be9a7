"""Which training runs get BLEU and chrF curves (`lmfuse.evaluate.validation.translation_hook`):
encoder-decoders on a translate view, unless train.eval_translate_sample is 0; a negative
sample size is a one-line error before anything is written."""

from __future__ import annotations

import pytest
from conftest import tiny_lm_overrides, tiny_s2s_overrides

from lmfuse.cli import main
from lmfuse.config import load_config
from lmfuse.errors import LmfuseError
from lmfuse.evaluate.validation import translation_hook
from lmfuse.schema import base_config


def test_the_default_sample_is_64_pairs():
    assert base_config().train.eval_translate_sample == 64


@pytest.mark.parametrize("spec, expected", [
    ("configs/s2s_transformer.py:tiny", True),
    ("configs/s2s_rnn.py:tiny", True),
    ("configs/fusion.py:cold,tiny", True),  # a fused encoder-decoder decodes like any
    ("configs/lm_transformer.py:tiny", False),
    ("configs/t5_span.py:tiny", False),  # an encoder-decoder on monolingual text: no pairs
])
def test_encoder_decoders_on_pairs_get_the_hook(spec, expected):
    config = load_config(spec)
    assert (translation_hook(config) is not None) is expected
    config.train.eval_translate_sample = 0
    assert translation_hook(config) is None


def test_a_negative_sample_is_refused():
    config = load_config("configs/lm_transformer.py:tiny")
    config.train.eval_translate_sample = -1
    with pytest.raises(LmfuseError, match=r"train.eval_translate_sample=-1 must be >= 0") as e:
        translation_hook(config)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec, overrides", [
    ("configs/s2s_transformer.py:tiny", tiny_s2s_overrides),
    ("configs/lm_transformer.py:tiny", tiny_lm_overrides),
])
def test_lmfuse_train_refuses_a_negative_sample_before_writing(spec, overrides, pair_corpus,
                                                               tmp_path, capsys):
    workdir = tmp_path / "new"
    argv = ["train", "--config", spec, "--workdir", str(workdir), "--no_progress",
            *overrides(pair_corpus, **{"train.eval_translate_sample": -2})]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.eval_translate_sample=-2 must be >= 0" in err
    assert not workdir.exists()
