"""`lmfuse config`: the config `lmfuse train` would run with, printed, after train's checks."""

from __future__ import annotations

import json

import pytest

from lmfuse import cli
from lmfuse.config import load_config

SPEC = "configs/lm_rnn.py:lstm,tiny"
OVERRIDES = ["--config.train.steps=7", "--config.optimizer.name=sgd"]


def test_prints_the_config_train_resolves_with_its_overrides(capsys):
    assert cli.main(["config", "--config", SPEC, *OVERRIDES]) == 0
    out = capsys.readouterr().out
    expected = load_config(SPEC, OVERRIDES)
    assert out.rstrip("\n") == str(expected).rstrip("\n")
    assert expected.train.steps == 7 and expected.model.name == "lstm"
    assert "  steps: 7" in out.splitlines()


def test_json_and_data_dir_as_train_applies_them(capsys, tmp_path):
    args = ["config", "--config", SPEC, "--json", "--data_dir", str(tmp_path), *OVERRIDES]
    assert cli.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = load_config(SPEC, OVERRIDES)
    with expected.unlocked():
        expected.data.data_dir = str(tmp_path)
    assert printed == json.loads(expected.to_json())
    assert printed["train"]["steps"] == 7 and printed["data"]["data_dir"] == str(tmp_path)
    assert not any(tmp_path.iterdir())  # printing a config prepares nothing


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.train.stepz=7"], "unknown config key 'train.stepz'"),
        (["--config.train.steps=many"], "config key 'train.steps' expects int"),
        # A check of `lmfuse train` that needs no data: the config must fail here too.
        (["--config.train.batch_size=7", "--config.train.accum_steps=2"],
         "train.batch_size=7 is not divisible by train.accum_steps=2"),
    ],
)
def test_a_config_train_would_refuse_is_one_line_and_exit_2(capsys, overrides, message):
    assert cli.main(["config", "--config", SPEC, *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"lmfuse: error: {message}"), line


def test_no_check_prints_a_config_train_would_refuse(capsys):
    overrides = ["--config.train.batch_size=7", "--config.train.accum_steps=2"]
    assert cli.main(["config", "--config", SPEC, "--no_check", *overrides]) == 0
    assert capsys.readouterr().out.rstrip("\n") == str(load_config(SPEC, overrides)).rstrip("\n")
