"""`bench_eval.py` runs an older revision on a workdir trained now: the old side reads a copy
whose config leaves out the model keys added since (when at their defaults), with each
checkpoint's config item edited and re-signed, so the copy loads as intact and as the same
model; a key set away from its default stops the benchmark instead."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from bench_eval import workdir_for_old_side
from training_runs import train

from lmfuse.models.registry import model_defaults
from lmfuse.train import integrity
from lmfuse.train.workdir import load_model


@pytest.fixture(scope="module")
def trained(text_corpus, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("bench_eval") / "lm"
    result = train(workdir, text_corpus, **{"train.steps": 20})
    assert result.returncode == 0, result.stderr
    return workdir


def config_items(workdir: Path) -> list[Path]:
    return sorted(workdir.glob(f"checkpoints/*/config/{integrity.JSON_FILE}"))


def test_the_copy_drops_added_keys_and_stays_intact(trained: Path, tmp_path: Path):
    new = model_defaults().to_dict()
    old = {key: value for key, value in new.items() if key != "fused_qkv"}
    copy = workdir_for_old_side(trained, old, new, tmp_path / "old")

    assert copy != trained
    assert "fused_qkv" not in json.loads((copy / "config.json").read_text())["model"]
    assert config_items(copy)
    for item in config_items(copy):
        assert "fused_qkv" not in json.loads(item.read_text())["model"]
        step_dir = item.parents[1]
        integrity.check_step(step_dir, int(step_dir.name))  # re-signed: no Damaged raised
    # The original is untouched and still carries the key.
    assert all("fused_qkv" in json.loads(i.read_text())["model"] for i in config_items(trained))
    (_, want, step), (_, got, copy_step) = load_model(trained), load_model(copy)
    assert step == copy_step
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nothing_to_drop_reads_the_workdir_itself(trained: Path, tmp_path: Path):
    defaults = model_defaults().to_dict()
    assert workdir_for_old_side(trained, defaults, defaults, tmp_path / "old") == trained
    assert not (tmp_path / "old").exists()


def test_an_added_key_away_from_its_default_stops_the_benchmark(trained: Path, tmp_path: Path):
    new = {**model_defaults().to_dict(), "fused_qkv": True}  # as if True were the default now
    old = {key: value for key, value in new.items() if key != "fused_qkv"}
    with pytest.raises(SystemExit, match="sets model.fused_qkv=False, which the old revision"):
        workdir_for_old_side(trained, old, new, tmp_path / "old")
    assert not (tmp_path / "old").exists()
