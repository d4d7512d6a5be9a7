"""Every workdir says what made it: config.json / config.txt and one provenance.json entry per
run (`lmfuse.train.provenance`), shown by `lmfuse inspect`; and what an encoder-decoder's
TensorBoard holds: validation loss, BLEU and chrF curves, the config as text and as
hyperparameters, the split's counts as text, not curves."""

from __future__ import annotations

import json
import re
import shutil
import sys

import jax
import ml_collections
import pytest
from conftest import tiny_s2s_overrides

from lmfuse.cli import main
from lmfuse.train import provenance
from lmfuse.train.workdir import load_workdir_config

S2S_CONFIG = "configs/s2s_transformer.py:tiny"
# Evaluations every 5 steps; the resumed run's budget (13) is off that grid, so its last step
# is evaluated as well. A 4-verse greedy sample keeps the decoding to a second.
TINY = {"train.eval_every": 5, "train.log_every": 5, "train.checkpoint_every": 10,
        "train.eval_translate_sample": 4, "decode.beam_size": 1, "decode.max_new_tokens": 16}
COUNTS = ("tokens", "words", "chars", "docs")


def train_s2s(workdir, corpus, steps: int) -> None:
    argv = ["train", "--config", S2S_CONFIG, "--workdir", str(workdir), "--no_progress",
            *tiny_s2s_overrides(corpus, **{**TINY, "train.steps": steps})]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def resumed_s2s(pair_corpus, tmp_path_factory):
    """A tiny encoder-decoder trained 10 steps through `lmfuse train`, then resumed to 13."""
    workdir = tmp_path_factory.mktemp("s2s")
    train_s2s(workdir, pair_corpus, 10)
    first = json.loads((workdir / "config.json").read_text())
    train_s2s(workdir, pair_corpus, 13)
    return workdir, first


def test_config_json_and_text_hold_the_resolved_config(resumed_s2s):
    workdir, first = resumed_s2s
    stored = load_workdir_config(workdir)  # what the checkpoint holds: the resolved config
    rebuilt = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    assert rebuilt.to_dict() == stored.to_dict()
    assert rebuilt.train.steps == 13 and first["train"]["steps"] == 10  # each run rewrites it
    assert (workdir / "config.txt").read_text() == str(stored)
    assert not list(workdir.glob("*.tmp"))  # written beside, then renamed


def test_provenance_lists_every_run_with_its_sources_versions_and_devices(resumed_s2s):
    workdir, _ = resumed_s2s
    runs = json.loads((workdir / "provenance.json").read_text())["runs"]
    assert [run["start_step"] for run in runs] == [0, 10]
    for run in runs:
        assert set(run) == {"command", "start_step", "git", "versions", "devices", "utc"}
        assert run["command"] == sys.argv
        assert run["versions"]["jax"] == jax.__version__
        assert run["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
        assert set(run["versions"]) == {*provenance.DISTRIBUTIONS, "python"}
        assert run["devices"] == {"platform": jax.devices()[0].platform,
                                  "device_kind": jax.devices()[0].device_kind,
                                  "count": jax.device_count(), "process_count": 1,
                                  "cpu": provenance.cpu_model()}
        assert run["devices"]["cpu"] and run["devices"]["cpu"] != "unknown CPU"  # Linux
        assert run["utc"].endswith("+00:00")
        git = run["git"]
        assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"])
                               and isinstance(git["dirty"], bool))
    assert runs[0]["utc"] <= runs[1]["utc"]


def test_git_state_is_null_without_git_or_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run
    assert provenance.git_state() is None
    monkeypatch.undo()
    package = tmp_path / "lmfuse"  # a copy of lmfuse that no git checkout tracks
    package.mkdir()
    monkeypatch.setattr(provenance, "__file__", str(package / "train" / "provenance.py"))
    assert provenance.git_state() is None


def test_inspect_prints_the_provenance_and_where_the_config_is(resumed_s2s, capsys):
    workdir, _ = resumed_s2s
    assert main(["inspect", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    runs = json.loads((workdir / "provenance.json").read_text())["runs"]
    git = runs[-1]["git"]
    commit = (git["commit"] + (" (dirty)" if git["dirty"] else "")) if git else "unknown"
    assert f"commit: {commit}" in out
    assert f"config: {workdir / 'config.json'}" in out
    assert "provenance: 2 run(s)" in out
    assert f"jax {jax.__version__}" in out and "versions: lmfuse " in out
    assert f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}" in out
    assert f", host CPU {provenance.cpu_model()}\n" in out
    first = next(line for line in out.splitlines() if "first run:" in line)
    latest = next(line for line in out.splitlines() if "latest run:" in line)
    assert "from step 0:" in first and "from step 10:" in latest
    assert runs[0]["utc"] in first and runs[1]["utc"] in latest


def test_inspect_of_a_workdir_from_before_provenance_says_none_was_recorded(
        resumed_s2s, tmp_path, capsys):
    workdir, _ = resumed_s2s
    older = tmp_path / "older"
    shutil.copytree(workdir, older)
    for name in ("provenance.json", "config.json", "config.txt"):
        (older / name).unlink()
    assert main(["inspect", "--workdir", str(older)]) == 0
    out = capsys.readouterr().out
    assert "provenance: none recorded" in out and "params sha256:" in out
    assert "no config.json" in out


def tensorboard_run(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return events


def texts(events, tag: str) -> list[tuple[int, str]]:
    return [(event.step, event.tensor_proto.string_val[0].decode())
            for event in events.Tensors(f"{tag}/text_summary")]


def test_tensorboard_has_validation_loss_bleu_and_chrf_curves(resumed_s2s):
    workdir, _ = resumed_s2s
    events = tensorboard_run(workdir)
    for tag in ("validation/nll", "validation/perplexity", "validation/bleu", "validation/chrf"):
        assert [e.step for e in events.Scalars(tag)] == [5, 10, 13], tag
    assert all(0 <= e.value <= 100 for e in events.Scalars("validation/chrf"))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    validation = [row for row in rows if row["split"] == "validation"]
    assert [row["step"] for row in validation] == [5, 10, 13]
    for row, bleu in zip(validation, events.Scalars("validation/bleu"), strict=True):
        assert row["bleu"] == pytest.approx(bleu.value) and row["chrf"] is not None


def test_counts_are_text_once_per_run_not_curves_and_stay_in_the_json_rows(resumed_s2s):
    workdir, _ = resumed_s2s
    events = tensorboard_run(workdir)
    scalars = events.Tags()["scalars"]
    assert not [tag for tag in scalars if tag.rsplit("/", 1)[-1] in COUNTS]
    assert "train/tokens_per_sec" in scalars
    tables = texts(events, "validation/counts")
    assert [step for step, _ in tables] == [5, 13]  # the first evaluation of each run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in rows if row["split"] == "validation"][-1]
    for name in COUNTS:
        assert f"| {name} | {int(last[name]):,} |" in tables[-1][1]


def test_the_config_is_text_and_one_hparams_session_in_the_run_itself(resumed_s2s):
    from tensorboard.plugins.hparams import metadata

    workdir, _ = resumed_s2s
    events = tensorboard_run(workdir)
    configs = texts(events, "config")
    assert [step for step, _ in configs] == [0, 10]  # each run start
    assert str(load_workdir_config(workdir)) in configs[-1][1]
    # No sub-run folder (what add_hparams makes): the HPARAMS row is this workdir's run.
    assert not [p for p in (workdir / "tensorboard").iterdir() if p.is_dir()]
    content = events.PluginTagToContent("hparams")
    assert set(content) == {metadata.SESSION_START_INFO_TAG}
    hparams = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]).hparams
    assert hparams["model.name"].string_value == "s2s_transformer"
    # A tag's metadata is read from its first event: the row holds the first run's values
    # (each run's own config is the `config` text at its start step).
    assert hparams["train.steps"].number_value == 10
    assert hparams["train.eval_translate_sample"].number_value == 4
    assert hparams["model.tie_embeddings"].bool_value is True
