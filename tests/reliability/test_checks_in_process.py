"""The checks behind the one-line errors, in-process: every training-config value that cannot
work, the path checks, invalid UTF-8 in users' files, and results files that stay JSON when a
number is not finite. (test_bad_inputs.py runs the CLI itself.)"""

from __future__ import annotations

import json
import math
import types

import ml_collections
import numpy as np
import pytest

from lmfuse import cli
from lmfuse.cli import paths
from lmfuse.config import load_config
from lmfuse.errors import LmfuseError


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as every non-Python JSON reader does."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("overrides, fragment", [
    ({"steps": 0}, "train.steps=0 must be >= 1"),
    ({"steps": -5}, "train.steps=-5 must be >= 1"),
    ({"keep_checkpoints": 0}, "train.keep_checkpoints=0 must be >= 1"),
    ({"checkpoint_every": 0}, "train.checkpoint_every=0 must be >= 1"),
    ({"log_every": 0}, "train.log_every=0 must be >= 1"),
    ({"batch_size": -8}, "train.batch_size=-8 must be >= 1"),
    ({"accum_steps": 0}, "train.accum_steps=0 must be >= 1"),
    ({"eval_every": -1}, "train.eval_every=-1 must be >= 0"),
    ({"eval_batches": -1}, "train.eval_batches=-1 must be >= 0"),
    ({"label_smoothing": 1.0}, "train.label_smoothing=1.0 must be in [0, 1)"),
    ({"epochs": -1.0}, "train.epochs=-1.0 must be >= 0"),
    ({"patience": 2, "eval_every": 0}, "needs validation evaluations"),
])
def test_training_values_that_cannot_work_are_refused(overrides, fragment):
    from lmfuse.schema import train_config
    from lmfuse.train.budget import check_config

    train = train_config()
    train.update(overrides)
    with pytest.raises(LmfuseError) as info:
        check_config(train)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_an_epoch_budget_needs_no_step_count():
    from lmfuse.schema import train_config
    from lmfuse.train.budget import check_config

    train = train_config()
    train.update({"steps": 0, "epochs": 2.0})
    check_config(train)  # train.steps is not the budget here


@pytest.mark.parametrize("spec, overrides, fragment", [
    ("configs/lm_transformer.py:tiny", ["--config.train.keep_checkpoints=0"],
     "train.keep_checkpoints=0"),
    ("configs/lm_transformer.py:tiny", ["--config.model.name=gpt"],
     "model.name='gpt' is not one of"),
    ("configs/lm_transformer.py:tiny", ["--config.optimizer.name=adamz"],
     "unknown optimizer.name 'adamz'"),
    ("configs/lm_transformer.py:tiny", ["--config.mesh.rules.embed=model"],
     "names 'model', not a mesh axis"),
    ("configs/lm_transformer.py:tiny", ["--config.mesh.tensor=0"],
     "mesh sizes must be positive or -1"),
    ("configs/lm_transformer.py:tiny", ["--config.optimizer.learning_rate=-1"],
     "optimizer.learning_rate must be positive"),
    ("configs/lm_transformer.py:tiny", ["--config.optimizer.schedule=cosine"],
     "unknown optimizer.schedule 'cosine'"),
    ("configs/lm_transformer.py:tiny", ["--config.data.view=translate"],
     "reads monolingual text, but data.view='translate'"),
    ("configs/lm_transformer.py:tiny", ["--config.model.num_heads=3"],
     "model.emb_dim=128 is not divisible by model.num_heads=3"),
    ("configs/lm_transformer.py:tiny", ["--config.model.dropout=1.0"],
     "model.dropout=1.0 must be in [0, 1)"),
    ("configs/s2s_transformer.py:tiny", ["--config.train.accum_steps=3"],
     "not divisible by train.accum_steps=3"),
    ("configs/s2s_transformer.py:tiny", ["--config.fusion.method=deep",
                                         "--config.model.copy_source=false"],
     "needs fusion.lm_workdir"),
])
def test_a_training_config_is_checked_whole_before_any_data(spec, overrides, fragment):
    """`lmfuse train` runs this before it makes the workdir or prepares data."""
    from lmfuse.train.trainer import check_config

    check_config(load_config(spec))  # the shipped tiny configs pass
    with pytest.raises(LmfuseError) as info:
        check_config(load_config(spec, overrides))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_workdir_and_output_paths(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(LmfuseError, match="is a file, not a directory"):
        paths.workdir_to_write(str(a_file))
    with pytest.raises(LmfuseError, match=f"cannot be created: {a_file} is a file"):
        paths.workdir_to_write(str(a_file / "run"))
    with pytest.raises(LmfuseError, match="is a file, not a directory"):
        paths.workdir_to_read(str(a_file), "--lm")
    with pytest.raises(LmfuseError, match="it is a directory; pass --output elsewhere"):
        paths.output_to_write(tmp_path, "pass --output elsewhere")
    with pytest.raises(LmfuseError, match=f"{a_file} is a file, not a directory"):
        paths.output_to_write(a_file / "out.txt", "pass --output elsewhere")
    # Fine: a missing workdir or output folder is created when written.
    paths.workdir_to_write(str(tmp_path / "a" / "b"))
    paths.workdir_to_read(str(tmp_path / "missing"))  # left to the checkpoint reader
    paths.output_to_write(tmp_path / "new" / "out.txt", "")
    paths.write_files({tmp_path / "new" / "out.txt": "ok\n"}, "")
    assert (tmp_path / "new" / "out.txt").read_text() == "ok\n"
    assert not (tmp_path / "a").exists()  # checking creates nothing


def test_a_users_text_file_with_invalid_utf8_is_read_line_by_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"caf\xc3\xa9\r\nLatin-1 caf\xe9\rcut \xe2\x82\n\n\xff last\n")
    lines, invalid = paths.read_text_lines(str(path), "--input")
    assert lines == ["café", "Latin-1 caf\ufffd", "cut \ufffd", "", "\ufffd last"]
    assert invalid == 3
    path.write_bytes(b"")
    assert paths.read_text_lines(str(path), "--input") == ([], 0)
    with pytest.raises(LmfuseError, match="is not a file"):
        paths.read_text_lines(str(tmp_path), "--input")


def test_results_json_writes_non_finite_numbers_as_null():
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32("nan"),
             "d": np.int64(3), "e": (np.float64(2.0), None, "x", True)}
    assert strict_json(paths.json_text(value)) == {
        "a": None, "b": [None, None, 1.5], "c": None, "d": 3, "e": [2.0, None, "x", True]}


def test_eval_results_file_is_json_even_for_a_diverged_model(tmp_path, monkeypatch, capsys):
    """A model whose parameters went NaN evaluates to NaN perplexity: printed as nan, written
    as null (a bare NaN in eval_validation.json broke every strict JSON reader)."""
    import lmfuse.train.evaluation as evaluation
    import lmfuse.train.workdir as workdir

    config = ml_collections.ConfigDict({"model": {"name": "transformer"}, "data": {"view": "lm"}})
    model = types.SimpleNamespace(config=config, objective=types.SimpleNamespace(name="lm"))
    monkeypatch.setattr(workdir, "load_model", lambda path, step=None: (model, {}, 7))
    monkeypatch.setattr(evaluation, "evaluate", lambda m, p, split: {
        "nll": math.nan, "tokens": 12.0, "accuracy": 0.0, "perplexity": math.nan,
        "perplexity_per_word": math.inf, "perplexity_per_char": math.nan})
    assert cli.main(["eval", "--workdir", str(tmp_path)]) == 0
    assert "perplexity nan per token" in capsys.readouterr().out
    report = strict_json((tmp_path / "eval_validation.json").read_text())
    assert report == {"nll": None, "tokens": 12.0, "accuracy": 0.0, "perplexity": None,
                      "perplexity_per_word": None, "perplexity_per_char": None, "step": 7}
