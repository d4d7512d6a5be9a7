"""Config loading: variants, overrides, and one-line errors that name the key."""

import sys

import pytest

from lmfuse import cli
from lmfuse.config import load_config, split_override_args
from lmfuse.errors import LmfuseError

CONFIG = "configs/data_bible.py"


def test_variant_and_overrides_apply():
    config = load_config(
        f"{CONFIG}:translate",
        ["--config.data.source=ylt", "--config.seed=7", "--config.data.keep_brackets=false",
         "--config.data.augment.token_dropout=0.1", "--config.tokenizer.character_coverage=1"],
    )
    assert config.data.view == "translate"
    assert config.data.source == "ylt"
    assert config.seed == 7
    assert config.data.keep_brackets is False
    assert config.data.augment.token_dropout == pytest.approx(0.1)
    assert isinstance(config.tokenizer.character_coverage, float)


def test_config_is_locked_against_new_keys():
    config = load_config(CONFIG)
    with pytest.raises(AttributeError):
        config.data.new_key = 1


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--config.data.viewz=lm", "unknown config key 'data.viewz'"),
        ("--config.trian.batch_size=3", "unknown config key 'trian'"),
        ("--config.train.batch_size=big", "'train.batch_size' expects int"),
        ("--config.data.keep_brackets=maybe", "'data.keep_brackets' expects bool"),
        ("--config.seed.x=1", "'seed' is a value, not a group"),
        ("--config.seed", "has no value"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, fragment):
    with pytest.raises(LmfuseError) as info:
        overrides, _ = split_override_args([override])
        load_config(CONFIG, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_variant_and_missing_file():
    with pytest.raises(LmfuseError, match="unknown variant 'huge'"):
        load_config(f"{CONFIG}:huge")
    with pytest.raises(LmfuseError, match="not found"):
        load_config("configs/nope.py")


def test_split_override_args_accepts_space_separated_values():
    overrides, rest = split_override_args(["show", "--config.seed", "3", "--n", "2"])
    assert overrides == ["--config.seed=3"]
    assert rest == ["show", "--n", "2"]


def test_cli_prints_one_line_error_and_exits_2(capsys):
    status = cli.main(["data", "show", "--config", CONFIG, "--config.data.nope=1"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("lmfuse: error: unknown config key 'data.nope'")


def test_a_variant_combines_a_kind_with_tiny_in_any_order():
    lstm = load_config("configs/lm_rnn.py:lstm,tiny")
    assert lstm.model.name == "lstm" and lstm.model.emb_dim == 128
    assert load_config("configs/lm_rnn.py:tiny,lstm").to_dict() == lstm.to_dict()
    assert load_config("configs/lm_rnn.py:gru").model.name == "gru"
    # The kind defaults to the Elman RNN, so ':rnn' may be left out.
    assert load_config("configs/lm_rnn.py:rnn").to_dict() == load_config("configs/lm_rnn.py").to_dict()
    deep = load_config("configs/fusion.py:deep,tiny")
    assert deep.fusion.method == "deep" and deep.fusion.s2s_workdir == "workdirs/fusion_s2s_tiny"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("configs/lm_rnn.py:lstm,gru", "unknown variant 'lstm,gru'; choose one of rnn, lstm, gru"),
        ("configs/lm_rnn.py:huge", "unknown variant 'huge'"),
        ("configs/lm_rnn.py:tiny,tiny", "unknown variant 'tiny,tiny'"),
        ("configs/lm_transformer.py:lstm", "unknown variant 'lstm'; choose tiny or leave it out"),
        ("configs/fusion.py", "needs a variant naming one of deep, cold"),
        ("configs/fusion.py:tiny", "needs a variant naming one of deep, cold"),
        ("configs/fusion.py:deep,huge", "unknown variant 'deep,huge'; choose one of deep"),
    ],
)
def test_bad_variants_are_one_line_errors(spec, fragment):
    with pytest.raises(LmfuseError) as info:
        load_config(spec)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_a_config_file_imports_the_helpers_next_to_it(tmp_path):
    # Two folders, each with its own helper of the same name: each file gets its own, and
    # sys.path is left as it was.
    path_before = list(sys.path)
    for name, value in (("a", 1), ("b", 2)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "helper.py").write_text(f"SEED = {value}\n")
        (folder / "exp.py").write_text(
            "from helper import SEED\n\nfrom lmfuse.schema import base_config\n\n\n"
            "def get_config():\n    config = base_config()\n    config.seed = SEED\n"
            "    return config\n"
        )
        assert load_config(str(folder / "exp.py")).seed == value
    assert sys.path == path_before
