"""Fused training's workdirs: every fusion config names its bases; each way a fusion cannot
work is a one-line error (through the CLI, before any data is prepared, or when the trainer is
built); and a fused workdir rebuilds from its own checkpoint after its LM's workdir is gone.

Base workdirs hold random tiny models (nothing here compiles a model)."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
from conftest import run_cli
from tiny_fusion import (
    LM,
    METHODS,
    fused_config,
    lm_config,
    save_workdir,
    tokenizer,
)

from lmfuse.config import load_config
from lmfuse.data.tokenizer import train_tokenizer
from lmfuse.errors import LmfuseError
from lmfuse.models.fusion import PRETRAINED_S2S, FusedSeq2Seq
from lmfuse.train import checkpoint
from lmfuse.train.trainer import build_trainer, tokenizer_ref
from lmfuse.train.workdir import load_model, params_digest


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """Base workdirs: a transformer LM, an s2s_transformer base, and odd ones for the errors."""
    root = tmp_path_factory.mktemp("bases")
    save_workdir(root / "lm", lm_config("transformer"))
    save_workdir(root / "s2s", fused_config("deep", **{"fusion.method": ""}))
    save_workdir(root / "other_vocab_lm", lm_config("transformer"), tokenizer("e" * 64))
    save_workdir(root / "short_lm", load_config("configs/lm_transformer.py:tiny", [
        "--config.model.positions=learned", "--config.model.max_len=8",
        "--config.data.seq_len=8", "--config.data.max_length=8",
        *(f"--config.model.{k}={v}" for k, v in LM.items() if k != "max_len")]))
    save_workdir(root / "rnn_s2s", fused_config("deep", "s2s_rnn", **{"fusion.method": ""}))
    save_workdir(root / "wide_s2s", fused_config("deep", **{"fusion.method": "",
                                                           "model.emb_dim": 24}))
    return root


def fusion_error(method: str, **extra) -> str:
    """The LmfuseError of building a fused trainer (asserted to be one line)."""
    with pytest.raises(LmfuseError) as error:
        build_trainer(fused_config(method, **extra), tokenizer())
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", [None, "tiny"])
def test_fusion_configs_name_their_bases(method, variant):
    config = load_config(f"configs/fusion.py:{method}" + (f",{variant}" if variant else ""))
    suffix = "_tiny" if variant else ""
    assert config.fusion.method == method and config.data.view == "translate"
    assert config.fusion.lm_workdir == f"workdirs/lm_transformer{suffix}"
    assert config.fusion.s2s_workdir == (f"workdirs/fusion_s2s{suffix}" if method in PRETRAINED_S2S
                                         else "")
    assert not config.fusion.lm_model  # filled in from the LM's workdir when training starts
    rnn = load_config(f"configs/fusion.py:{method},tiny", ["--config.model.name=s2s_rnn"])
    assert rnn.model.name == "s2s_rnn"


def test_a_missing_lm_workdir_fails_on_the_command_line_before_any_data(tmp_path):
    result = run_cli(["train", "--config", "configs/fusion.py:cold,tiny",
                      f"--config.fusion.lm_workdir={tmp_path / 'nowhere'}",
                      f"--config.data.data_dir={tmp_path / 'data'}",
                      "--workdir", str(tmp_path / "fused")])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "fusion.lm_workdir" in result.stderr and "no finished checkpoint" in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "fused").exists()


def test_fusing_into_a_decoder_only_lm_fails_on_the_command_line(tmp_path):
    result = run_cli(["train", "--config", "configs/lm_transformer.py:tiny",
                      "--config.fusion.method=cold", "--workdir", str(tmp_path / "fused")])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "encoder-decoder" in result.stderr and "model.name='transformer'" in result.stderr


def test_unknown_method_and_weights_kind(workdirs):
    assert "unknown fusion.method 'shallow'" in fusion_error(
        "cold", **{"fusion.method": "shallow", "fusion.lm_workdir": workdirs / "lm"})
    assert "fusion.weights_kind='gates'" in fusion_error(
        "linear", **{"fusion.weights_kind": "gates", "fusion.lm_workdir": workdirs / "lm",
                     "fusion.s2s_workdir": workdirs / "s2s"})


def test_vocab_mismatch(workdirs):
    message = fusion_error("cold", **{"fusion.lm_workdir": workdirs / "other_vocab_lm"})
    assert message.startswith("vocab mismatch") and "eeeeeeeeeeee" in message


def test_bases_that_cannot_be_fused(workdirs):
    assert "fusion needs a decoder-only LM" in fusion_error(
        "cold", **{"fusion.lm_workdir": workdirs / "s2s"})
    assert "max_len=8 learned positions" in fusion_error(
        "cold", **{"fusion.lm_workdir": workdirs / "short_lm"})
    assert "needs fusion.s2s_workdir" in fusion_error(
        "deep", **{"fusion.lm_workdir": workdirs / "lm", "fusion.s2s_workdir": ""})
    assert "trains the encoder-decoder from scratch" in fusion_error(
        "cold", **{"fusion.lm_workdir": workdirs / "lm", "fusion.s2s_workdir": workdirs / "s2s"})
    assert "holds a 's2s_rnn' model" in fusion_error(
        "deep", **{"fusion.lm_workdir": workdirs / "lm",
                   "fusion.s2s_workdir": workdirs / "rnn_s2s"})


def test_an_s2s_base_of_another_shape_names_the_parameter(workdirs):
    config = fused_config("linear", **{"fusion.lm_workdir": workdirs / "lm",
                                       "fusion.s2s_workdir": workdirs / "wide_s2s"})
    trainer = build_trainer(config, tokenizer())  # shapes are compared when the bases load
    with pytest.raises(LmfuseError) as error:
        trainer.init_fn.load_bases()
    message = str(error.value)
    assert "\n" not in message and "does not fit" in message
    # Heads of width 24 / 2 in the workdir, 16 / 2 in the config.
    assert "s2s['decoder']['blocks_0']['attn']['key']['bias'] is (2, 12) there and (2, 8) here" \
        in message


def test_a_fused_workdir_is_no_base(workdirs, tmp_path):
    fused = build_trainer(fused_config("cold", **{"fusion.lm_workdir": workdirs / "lm"}),
                          tokenizer())
    save_workdir(tmp_path / "fused", fused.config)
    assert "holds a fused model" in fusion_error(
        "deep", **{"fusion.lm_workdir": workdirs / "lm", "fusion.s2s_workdir": tmp_path / "fused"})


def test_a_fused_workdir_rebuilds_without_its_lm_workdir(tmp_path):
    """What `lmfuse train` saves (the trainer's config, with fusion.lm_model filled in) is all
    load_model (eval, translate, inspect, resume) needs."""
    words = "and the lord said unto moses in the land of egypt be not afraid".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 8)) for _ in range(300)]
    tok = train_tokenizer(lines, vocab_size=300, cache_dir=tmp_path / "tokenizers")
    save_workdir(tmp_path / "lm", lm_config("lstm"), tok)
    config = fused_config("cold", "s2s_rnn", **{"fusion.lm_workdir": tmp_path / "lm"})
    trainer = build_trainer(config, tok)
    assert trainer.config.fusion.lm_model.name == "lstm" and not config.fusion.lm_model
    saved = save_workdir(tmp_path / "fused", trainer.config, tok, seed=5)
    shutil.rmtree(tmp_path / "lm")

    rebuilt, params, step = load_model(tmp_path / "fused")
    assert step == 1 and isinstance(rebuilt.model, FusedSeq2Seq)
    assert rebuilt.model == trainer.model
    assert params_digest(params) == params_digest(saved)
    assert jax.tree.structure(params) == jax.tree.structure(trainer.abstract_params)
    resumed = build_trainer(rebuilt.config, tok)  # what resuming builds from the stored config
    with pytest.raises(LmfuseError, match="no finished checkpoint"):
        resumed.init_fn.load_bases()  # only a fresh start reads the bases


def test_save_workdir_writes_what_fusion_reads(tmp_path):
    tok = tokenizer()
    save_workdir(tmp_path / "lm", lm_config("transformer"), tok)
    assert checkpoint.read_json_item(tmp_path / "lm", "tokenizer") == tokenizer_ref(tok)


def test_deep_fusion_starts_from_the_s2s_checkpoint_it_names(workdirs, tmp_path):
    """fusion.s2s_step picks the base's checkpoint (a study's choice on validation); 0 is the
    newest. A step that is not kept, or a step for a method that trains from scratch, is a
    one-line error."""
    base = fused_config("deep", **{"fusion.method": ""})
    early = save_workdir(tmp_path / "s2s", base, seed=1, step=10)
    late = save_workdir(tmp_path / "s2s", base, seed=2, step=20)

    def start(step: int):
        config = fused_config("deep", **{"fusion.lm_workdir": workdirs / "lm",
                                         "fusion.s2s_workdir": tmp_path / "s2s",
                                         "fusion.s2s_step": step})
        return build_trainer(config, tokenizer()).init_fn.load_bases()["s2s"]

    assert params_digest(start(10)) == params_digest(early)
    assert params_digest(start(0)) == params_digest(start(20)) == params_digest(late)
    with pytest.raises(LmfuseError, match="no checkpoint at step 15 .kept steps: 10, 20") as error:
        start(15)
    assert "\n" not in str(error.value)
    assert "fusion.s2s_step are for deep and linear" in fusion_error(
        "cold", **{"fusion.lm_workdir": workdirs / "lm", "fusion.s2s_step": 10})
    assert "fusion.s2s_step=-1 must be >= 0" in fusion_error(
        "deep", **{"fusion.lm_workdir": workdirs / "lm", "fusion.s2s_workdir": tmp_path / "s2s",
                   "fusion.s2s_step": -1})
