"""`python experiments/carlson_table.py` end to end on real verse pairs with tiny
models: one row (KJV→ASV user files) without and with shallow fusion writes its table with
real scores and the λ chosen on validation, and a rerun skips both cells; the plans of both
budgets name the paper-size configs and one LM per target version."""

from __future__ import annotations

import json
import math
from pathlib import Path

import carlson_table
import pytest
from conftest import REPO
from grid_runs import checkpoint_mtimes, read_csv, run_grid, run_study, tiny_grid_overrides
from lib import runner

from lmfuse.config import load_config

SCRIPT = "experiments/carlson_table.py"
LAMBDAS = (0.2, 0.5)
EPOCHS = 50
BEST, STOPPED_AT = 5, 10  # best loss at the first evaluation, then one without improvement
SENTENCES = 12


def grid_args(corpus: dict[str, str], root: Path) -> list[str]:
    # An epoch budget with early stopping: validation loss every 5 steps, patience 1, with a
    # learning rate so small that the loss never improves after the first evaluation.
    overrides = tiny_grid_overrides(corpus, **{"train.epochs": EPOCHS, "train.patience": 1,
                                               "train.eval_every": 5, "train.min_delta": 0.01,
                                               "decode.beam_size": 2,
                                               "optimizer.learning_rate": 1e-9})
    return ["--workdir", str(root / "work"), "--results", str(root / "results"),
            "--rows", "kjv_asv", "--methods", "none", "shallow", "deep",
            "--val_sample", str(SENTENCES), "--test_sample", str(SENTENCES), "--checkpoints",
            "1", "--lambdas", *map(str, LAMBDAS), *overrides]


@pytest.fixture(scope="module")
def table(pair_corpus, tmp_path_factory):
    """The one-row table run twice in one workdir."""
    root = tmp_path_factory.mktemp("carlson")
    first = run_grid(SCRIPT, grid_args(pair_corpus, root))
    rows = read_csv(root / "results" / "carlson_table.csv")
    mtimes = checkpoint_mtimes(root / "work")
    second = run_grid(SCRIPT, grid_args(pair_corpus, root))
    return {"root": root, "first": first, "second": second, "rows": rows, "mtimes": mtimes,
            "rerun_rows": read_csv(root / "results" / "carlson_table.csv")}


# End to end (about a minute): the fusion study's test covers the runner by default.
@pytest.mark.slow
def test_every_cell_finishes(table):
    code, out = table["first"]
    assert code == 0 and table["second"][0] == 0
    assert "[1/3] kjv_asv-none: ok" in out and "[2/3] kjv_asv-shallow: ok" in out
    assert "[3/3] kjv_asv-deep: ok" in out and "carlson_table: 3/3 cells ok" in out


def first_lines(path: str, n: int) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()[:n]


@pytest.mark.slow
def test_every_system_has_real_scores_and_the_copy_baseline(table, pair_corpus):
    from sacrebleu.metrics import BLEU

    rows = table["rows"]
    assert list(rows) == ["none", "shallow", "deep"]
    evaluated = table["root"] / "work" / "eval" / "kjv_asv"
    name = f"test.sample{SENTENCES}.seed0"
    copy_bleu = BLEU().corpus_score(first_lines(evaluated / f"{name}.src", SENTENCES),
                                    [first_lines(evaluated / f"{name}.ref", SENTENCES)]).score
    ids = first_lines(evaluated / f"{name}.ids", SENTENCES + 1)  # written beside the results
    assert len(ids) == len(set(ids)) == SENTENCES
    for row in rows.values():
        assert (row["row"], row["source"], row["target"]) == ("kjv_asv", "kjv", "asv")
        assert row["status"] == "ok" and row["error"] == ""
        for key in ("test_bleu", "test_pinc", "test_chrf", "val_bleu"):
            assert math.isfinite(float(row[key])) and 0 <= float(row[key]) <= 100
        assert float(row["copy_bleu"]) == pytest.approx(copy_bleu, abs=1e-4)
        assert row["copy_pinc"] == "0" and row["test_sentences"] == str(SENTENCES)
        # Early stopping chose the checkpoint; the row reports the steps and epochs trained.
        if row["method"] != "deep":  # deep fusion: see the test of its own
            assert row["step"] == str(BEST) and row["train_steps"] == str(STOPPED_AT)
            assert 0 < float(row["train_epochs"]) < EPOCHS
        assert row["budget"] == "cpu" and row["date"]
        assert row["bleu_signature"].startswith("nrefs:1|") and row["device"]
        assert "lmfuse train --config configs/s2s_transformer.py:tiny" in row["commands"]
    assert rows["none"]["weights"] == "" and rows["none"]["lm_perplexity"] == ""
    assert math.isfinite(float(rows["shallow"]["lm_perplexity"]))
    assert rows["deep"]["lm_perplexity"] == rows["shallow"]["lm_perplexity"]  # the same LM


@pytest.mark.slow
def test_deep_fusion_starts_from_the_chosen_checkpoint_and_is_compared_with_none(table):
    row = table["rows"]["deep"]
    commands = row["commands"].split(" && ")
    work = table["root"] / "work"
    assert f"--workdir {work / 'deep_kjv_asv'}" in commands[-2]
    assert f"--config.fusion.s2s_workdir={work / 's2s_kjv_asv'}" in commands[-2]
    assert f"--config.fusion.s2s_step={BEST}" in commands[-2]
    assert row["delta_none"] and row["p_none"]  # against the row's own `none`


@pytest.mark.slow
def test_shallow_fuses_the_target_lm_at_the_best_validation_lambda(table):
    row = table["rows"]["shallow"]
    cell = json.loads((table["root"] / "work" / "cells" / "kjv_asv-shallow.json").read_text())
    sweep = cell["values"]["sweep"]
    assert [p["weights"]["lm"] for p in sweep] == [0.0, *LAMBDAS]  # 0 joins the grid
    best = max(sweep, key=lambda p: p["val"]["bleu"])  # the first of equals, as selection keeps
    assert cell["values"]["weights"] == best["weights"]
    assert float(row["val_bleu"]) == pytest.approx(best["val"]["bleu"], abs=1e-4)
    commands = row["commands"].split(" && ")
    lm = table["root"] / "work" / "lm_asv"
    assert commands[0].startswith("lmfuse train --config configs/lm_transformer.py:tiny")
    assert f"--workdir {lm}" in commands[0]
    assert commands[-1].startswith("lmfuse translate")
    assert f"--split test --sample {SENTENCES} --seed 0" in commands[-1]
    if best["weights"]["lm"]:
        assert (f"--fusion shallow --lm {lm} --lm_weight {best['weights']['lm']:g}"
                in commands[-1])


@pytest.mark.slow
def test_the_markdown_table_names_rows_systems_and_provenance(table):
    md = (table["root"] / "results" / "carlson_table.md").read_text(encoding="utf-8")
    figure = table["root"] / "results" / "carlson_table_methods.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "carlson_table_methods.png" in md
    weights = table["rows"]["shallow"]["weights"]
    assert f"| KJV→ASV | 0 | seq2seq | step {BEST} |" in md
    assert f"| KJV→ASV | 0 | seq2seq + LM (shallow fusion) | step {BEST}; {weights} |" in md
    assert "(cpu budget)" in md and "BLEU signature: `nrefs:1" in md and "device: " in md
    assert f"a seeded sample of {SENTENCES} pairs over every book" in md
    assert "Command: `python experiments/carlson_table.py" in md
    assert "| lm_asv |" in md and "| s2s_kjv_asv |" in md  # the shared models
    assert "kjv_asv-shallow:" in md and "failed" not in md


@pytest.mark.slow
def test_a_rerun_skips_every_cell_and_trains_nothing(table):
    out = table["second"][1]
    assert "[1/3] kjv_asv-none: skipped" in out and "[3/3] kjv_asv-deep: skipped" in out
    assert "done: step" not in out
    assert table["mtimes"] and checkpoint_mtimes(table["root"] / "work") == table["mtimes"]
    for method, row in table["rows"].items():
        rerun = table["rerun_rows"][method]
        assert {k: v for k, v in rerun.items() if k != "date"} == \
               {k: v for k, v in row.items() if k != "date"}


# ---------------------------------------------------------------------------------------------
# Plans (nothing trained)


def plan_runs(budget: str, tmp_path: Path) -> dict[str, tuple]:
    settings = carlson_table.defaults(budget)
    plan = carlson_table.plan(budget, settings)
    ctx = runner.RunContext(tmp_path, budget, settings, ())
    return {row: (carlson_table.s2s_run(ctx, plan, row), carlson_table.lm_run(ctx, plan, row))
            for row in settings["rows"]}


def test_the_gpu_plan_trains_the_paper_configs_and_one_lm_per_target(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = plan_runs("gpu", tmp_path)
    assert list(runs) == ["kjv_asv", "public_asv", "bbe_asv", "ylt_bbe", "public_bbe",
                          "ylt_asv"]
    for row, (s2s, lm) in runs.items():
        source, target = row.split("_")
        assert s2s.config == f"configs/carlson/{row}.py"
        data = s2s.load().data
        assert (data.source, data.target, data.view) == (source, target, "translate")
        assert lm.config == "configs/lm_transformer.py" and lm.load().data.versions == target
        assert lm.workdir == str(tmp_path / f"lm_{target}")
    assert len({lm.workdir for _, lm in runs.values()}) == 2


def test_the_cpu_plan_sets_each_rows_pair_on_the_tiny_config(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    sizes = carlson_table.SIZES["cpu"]
    assert carlson_table.defaults("cpu")["test_sample"] == 0  # every test split whole
    assert 0.0 not in carlson_table.defaults("cpu")["lambdas"]  # added by the protocol
    for row, (s2s, lm) in plan_runs("cpu", tmp_path).items():
        config = s2s.load()
        assert s2s.config == "configs/s2s_transformer.py:tiny"
        assert (config.data.source, config.data.target) == tuple(row.split("_"))
        assert config.train.steps == sizes["s2s_steps"] and lm.config.endswith(":tiny")
        # Stopped on the BLEU of a validation sample, with every kept checkpoint a candidate.
        assert (config.train.stop_metric, config.train.patience) == ("bleu", 3)
        assert config.train.keep_checkpoints == 4 and config.model.copy_source
        assert lm.load().train.steps == sizes["lm_steps"]
        assert lm.load().data.seq_len >= config.data.max_length  # the LM sees whole outputs


def test_deep_fusion_fine_tunes_the_rows_chosen_checkpoint_with_its_target_lm(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(REPO)
    settings = carlson_table.defaults("cpu")
    plan = carlson_table.plan("cpu", settings)
    ctx = runner.RunContext(tmp_path, "cpu", settings, ())
    deep = carlson_table.s2s_run(ctx, plan, "ylt_bbe", 0, "deep", 450)
    config = deep.load()
    assert deep.workdir == str(tmp_path / "deep_ylt_bbe")
    assert config.fusion.method == "deep" and config.fusion.s2s_step == 450
    assert config.fusion.s2s_workdir == str(tmp_path / "s2s_ylt_bbe")
    assert config.fusion.lm_workdir == str(tmp_path / "lm_bbe")
    assert config.train.steps == 100 and config.train.patience == 0
    assert config.optimizer.learning_rate == pytest.approx(
        load_config("configs/fusion.py:deep,tiny").optimizer.learning_rate)
    assert (config.data.source, config.data.target) == ("ylt", "bbe")


def test_cold_fusion_trains_from_scratch_under_the_plain_models_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    settings = carlson_table.defaults("cpu")
    plan = carlson_table.plan("cpu", settings)
    ctx = runner.RunContext(tmp_path, "cpu", settings, ())
    plain = carlson_table.s2s_run(ctx, plan, "ylt_asv").load()
    cold_run = carlson_table.s2s_run(ctx, plan, "ylt_asv", 0, "cold", 0)
    cold = cold_run.load()
    assert cold_run.workdir == str(tmp_path / "cold_ylt_asv")
    assert cold.fusion.method == "cold" and cold.fusion.lm_workdir == str(tmp_path / "lm_asv")
    assert not cold.fusion.s2s_workdir  # nothing to start from
    assert (cold.train.steps, cold.train.patience, cold.train.stop_metric) == \
           (plain.train.steps, plain.train.patience, plain.train.stop_metric)
    assert cold.optimizer.learning_rate == plain.optimizer.learning_rate


def test_each_decode_time_cell_reads_only_its_own_weight_grids():
    # A wider μ grid reruns the ILME cells and leaves shallow fusion's standing.
    settings = carlson_table.defaults("cpu")
    plan = carlson_table.plan("cpu", settings)
    cells = carlson_table.build_cells(plan, ["ylt_asv"], carlson_table.METHODS)
    assert {c.key: c.settings for c in cells} == {
        "ylt_asv-none": (), "ylt_asv-deep": (), "ylt_asv-cold": (),
        "ylt_asv-shallow": ("lambdas", "length_rewards"),
        "ylt_asv-ilme": ("lambdas", "ilm_weights", "length_rewards")}
    assert plan.grids == {"lm": settings["lambdas"], "ilm": settings["ilm_weights"],
                          "length_reward": settings["length_rewards"]}


def test_an_unknown_row_is_an_error_naming_the_rows(tmp_path):
    result = run_study(SCRIPT, ["--workdir", str(tmp_path / "w"), "--rows", "kjv_bbe"])
    assert result.returncode == 2
    assert "argument --rows: invalid choice: 'kjv_bbe'" in result.stderr
    assert "kjv_asv" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "w").exists()
