"""`python experiments/fusion_ablation.py` end to end on real verse pairs, with tiny models: a
3-cell grid (none, shallow fusion, and a cold-fusion cell whose override cannot work) writes its
tables and plots, a rerun skips the finished cells without training anything, and mistakes are
one-line errors."""

from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import fusion_ablation
import pytest
from conftest import REPO, run_cli
from grid_runs import (
    checkpoint_mtimes,
    fast_cli,
    fast_study,
    read_csv,
    run_grid,
    run_study,
    tiny_grid_overrides,
)
from lib import runner
from lib.tables import fmt

from lmfuse.errors import LmfuseError

SCRIPT = "experiments/fusion_ablation.py"
LAMBDAS = (0.2, 0.5)
STEPS = 20
GRID_METHODS = ("none", "shallow", "cold")


def grid_args(corpus: dict[str, str], root: Path, methods: tuple[str, ...] = GRID_METHODS,
              results: Path | None = None, eval_sentences: int = 12) -> list[str]:
    # cold_dim=0 only matters to cold fusion: that cell fails, the others must not notice.
    # The study spaces its checkpoints itself (--checkpoints 2: steps 10 and 20).
    overrides = tiny_grid_overrides(corpus, **{"train.steps": STEPS, "fusion.cold_dim": 0,
                                               "decode.beam_size": 2})
    return ["--workdir", str(root / "work"), "--results", str(results or root / "results"),
            "--fractions", "100", "--backbones", "transformer", "--methods", *methods,
            "--eval_sentences", str(eval_sentences), "--lambdas", *map(str, LAMBDAS),
            "--checkpoints", "2", *overrides]


@pytest.fixture(scope="module")
def grid(pair_corpus, tmp_path_factory):
    """The grid run twice in one workdir: (first run, rerun) outputs and the csv rows."""
    root = tmp_path_factory.mktemp("ablation")
    first = run_grid(SCRIPT, grid_args(pair_corpus, root))
    rows = read_csv(root / "results" / "fusion_ablation.csv")
    mtimes = checkpoint_mtimes(root / "work")
    second = run_grid(SCRIPT, grid_args(pair_corpus, root))
    return {"root": root, "first": first, "second": second, "rows": rows, "mtimes": mtimes,
            "rerun_rows": read_csv(root / "results" / "fusion_ablation.csv")}


def test_the_grid_writes_tables_and_plots_with_real_scores(grid):
    code, out = grid["first"]
    assert code == 1  # one cell failed, the grid finished
    results = grid["root"] / "results"
    for name in ("fusion_ablation.md", "fusion_ablation.csv", "fusion_ablation_sweeps.csv"):
        assert (results / name).stat().st_size > 0
    for name in ("fusion_ablation_bleu.png", "fusion_ablation_lambda.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = grid["rows"]
    assert set(rows) == {"none", "shallow", "cold"}
    for method in ("none", "shallow"):
        row = rows[method]
        assert row["status"] == "ok" and row["fraction"] == "100"
        for key in ("val_bleu", "test_bleu", "test_chrf", "test_pinc"):
            assert 0 <= float(row[key]) <= 100 and math.isfinite(float(row[key]))
        assert int(row["step"]) in (STEPS // 2, STEPS)  # two kept checkpoints to choose from
        assert row["commands"].startswith("lmfuse train --config configs/")
        assert "lmfuse translate" in row["commands"]
    assert float(rows["shallow"]["lambda"]) in LAMBDAS
    assert rows["shallow"]["step"] == rows["none"]["step"]  # fuses none's chosen checkpoint
    assert "--fusion shallow" in rows["shallow"]["commands"]
    assert math.isfinite(float(rows["shallow"]["lm_perplexity"]))
    assert rows["none"]["lambda"] == "" and rows["none"]["lm_perplexity"] == ""
    assert "[1/3] f100-transformer-none: ok" in out
    # The shared-model record holds the perplexity the cell reports, not a rounding of it.
    shared = json.loads((grid["root"] / "work" / "artifacts.json").read_text(encoding="utf-8"))
    assert rows["shallow"]["lm_perplexity"] == fmt(shared["lm_target"]["validation_perplexity"])


def test_the_table_names_the_copy_baseline_of_the_scored_verses(grid):
    import sacrebleu

    # Independently: sacrebleu on the test sources themselves, as if copied as the output.
    evaluated = grid["root"] / "work" / "eval"
    sources = (evaluated / "test.first12.src").read_text(encoding="utf-8").splitlines()
    references = (evaluated / "test.first12.ref").read_text(encoding="utf-8").splitlines()
    copy_bleu = sacrebleu.corpus_bleu(sources, [references]).score
    table = (grid["root"] / "results" / "fusion_ablation.md").read_text(encoding="utf-8")
    assert f"Copying the source as the output scores test BLEU {copy_bleu:.2f} " in table


def test_choices_are_the_best_validation_points_of_the_stored_sweeps(grid):
    with (grid["root"] / "results" / "fusion_ablation_sweeps.csv").open(encoding="utf-8") as f:
        sweeps = list(csv.DictReader(f))
    for method, kind, values in (("shallow", "lambda", LAMBDAS), ("none", "step", (10, 20))):
        points = [p for p in sweeps if p["method"] == method]
        assert [float(p["value"]) for p in points] == list(values)
        assert all(p["kind"] == kind for p in points)
        (chosen,) = [p for p in points if p["chosen"] == "yes"]
        assert float(chosen["val_bleu"]) == max(float(p["val_bleu"]) for p in points)
        row = grid["rows"][method]
        assert chosen["value"] == row["lambda" if kind == "lambda" else "step"]
        assert chosen["val_bleu"] == row["val_bleu"]


def test_a_failing_cell_is_recorded_and_the_others_finish(grid):
    cold = grid["rows"]["cold"]
    assert cold["status"] == "failed" and "cold_dim" in cold["error"]
    assert cold["test_bleu"] == cold["val_bleu"] == cold["commands"] == ""
    md = (grid["root"] / "results" / "fusion_ablation.md").read_text(encoding="utf-8")
    assert "| cold | failed: " in md and "cold_dim" in md
    assert "cpu budget" in md and "BLEU signature: `nrefs:1" in md and "device: " in md
    assert "first 12 verses" in md
    assert "Command: `python experiments/fusion_ablation.py --workdir" in md
    log = (grid["root"] / "work" / "cells" / "f100-transformer-cold.log").read_text()
    assert "Traceback" in log and "cold_dim" in log


def test_a_rerun_skips_finished_cells_and_retries_failed_ones(grid):
    code, out = grid["second"]
    assert code == 1
    assert "[1/3] f100-transformer-none: skipped" in out
    assert "[2/3] f100-transformer-shallow: skipped" in out
    assert "[3/3] f100-transformer-cold: running (retrying a failed cell)" in out
    assert "done: step" not in out  # nothing was trained
    work = grid["root"] / "work"
    assert grid["mtimes"] and checkpoint_mtimes(work) == grid["mtimes"]
    for method in ("none", "shallow"):
        assert grid["rerun_rows"][method] == grid["rows"][method]


def test_a_recorded_train_command_is_a_no_op_on_its_finished_workdir(grid):
    """The commands in the table reproduce the runs: `lmfuse train` with the shared LM's
    recorded command finds the same config in its workdir and trains nothing."""
    command = grid["rows"]["shallow"]["commands"].split(" && ")[0]
    args = shlex.split(command)
    assert args[:2] == ["lmfuse", "train"] and "lm_target" in command
    workdir = Path(args[args.index("--workdir") + 1])
    before = checkpoint_mtimes(workdir.parent)
    result = fast_cli([*args[1:], "--no_progress"])
    assert result.returncode == 0, result.stderr
    assert f"resuming {workdir} from step {STEPS}" in result.stdout
    assert checkpoint_mtimes(workdir.parent) == before


def test_a_recorded_translate_command_reproduces_the_cells_test_output(grid):
    """The shallow cell's test command (its checkpoint, fusion flags and λ) writes the very
    hypotheses the runner scored."""
    command = grid["rows"]["shallow"]["commands"].split(" && ")[-1]
    args = shlex.split(command)
    assert args[:2] == ["lmfuse", "translate"] and "--fusion" in args and "--step" in args
    output = Path(args[args.index("--output") + 1])
    scored = output.read_text(encoding="utf-8")
    assert len(scored.splitlines()) == 12
    output.unlink()
    result = fast_cli(args[1:])
    assert result.returncode == 0, result.stderr
    assert output.read_text(encoding="utf-8") == scored


def test_translate_names_the_kept_steps_for_a_missing_one(grid):
    workdir = grid["root"] / "work" / "s2s_transformer_f100"
    result = run_cli(["translate", "--workdir", str(workdir), "--step", "7", "--split", "test"])
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "no checkpoint at step 7 (kept steps: 10, 20)" in result.stderr


def test_a_workdir_refuses_results_made_with_other_settings(grid, pair_corpus):
    args = grid_args(pair_corpus, grid["root"], eval_sentences=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the study names its configs relative to the repository
        with pytest.raises(LmfuseError, match="eval_sentences"):
            runner.run_command_line(fusion_ablation.build_parser(), fusion_ablation.make_study,
                                    args)


def test_report_only_tables_the_ledger_without_running_anything(grid, pair_corpus):
    """A grid run in parts is reported as one table: finished cells as they were scored,
    the others as not run yet, and nothing trained or decoded."""
    results = grid["root"] / "report_only"
    args = grid_args(pair_corpus, grid["root"], methods=("none", "shallow", "deep"),
                     results=results)
    work = grid["root"] / "work"
    before = sorted(p.name for p in work.iterdir())
    result = fast_study(SCRIPT, [*args, "--report_only"])
    assert result.returncode == 0, result.stderr
    assert "reported 2/3 cells finished" in result.stdout
    rows = read_csv(results / "fusion_ablation.csv")
    for method in ("none", "shallow"):
        assert rows[method] == grid["rows"][method]
    assert rows["deep"]["status"] == "pending" and rows["deep"]["test_bleu"] == ""
    md = (results / "fusion_ablation.md").read_text(encoding="utf-8")
    assert "| deep | not run yet |" in md
    assert "--report_only" not in md  # the table names the command that runs its cells
    assert sorted(p.name for p in work.iterdir()) == before  # no deep-fusion workdir
    assert checkpoint_mtimes(work) == grid["mtimes"]


def test_report_only_on_an_empty_workdir_is_a_one_line_error(tmp_path):
    result = run_study(SCRIPT, ["--workdir", str(tmp_path / "w"), "--report_only"])
    assert result.returncode == 2
    assert "holds no results of this experiment" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, message", [
    (["--fractoins", "5"], "unrecognized arguments: --fractoins"),
    (["--methods", "none", "shalow"], "argument --methods: invalid choice: 'shalow'"),
    (["--fractions", "0"], "fraction 0 is not a percentage in (0, 100]"),
    (["--checkpoints", "0"], "--checkpoints=0 must be at least 1"),
])
def test_a_setting_mistake_is_an_error_that_trains_nothing(tmp_path, args, message):
    result = run_study(SCRIPT, ["--workdir", str(tmp_path / "w"), *args])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("fusion_ablation.py: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_settings_take_the_budgets_defaults_and_types():
    args = fusion_ablation.build_parser().parse_args(
        ["--fractions", "5", "20", "--methods", "none", "shallow", "--eval_sentences", "0"])
    settings = runner.settings_from(args, fusion_ablation.defaults("cpu"))
    assert settings["fractions"] == (5.0, 20.0) and settings["methods"] == ("none", "shallow")
    assert settings["eval_sentences"] == 0
    assert settings["checkpoints"] == fusion_ablation.SIZES["cpu"]["checkpoints"]
    assert settings["backbones"] == ("transformer", "rnn")


def _train_steps(run) -> int:
    return run.load().train.steps


def test_the_cpu_budget_gives_both_backbones_the_same_training_tokens(monkeypatch):
    """The tiny RNN trains 16 rows a step and the tiny Transformer 32, so the cpu budget runs
    the RNN's from-scratch and fine-tuned models for twice the steps; a user's train.steps
    still wins."""
    monkeypatch.chdir(REPO)
    plan = fusion_ablation.plan("cpu", fusion_ablation.defaults("cpu"))

    def rows_seen(overrides: tuple[str, ...], backbone: str, method: str) -> int:
        ctx = runner.RunContext(Path("unused"), "cpu", {}, overrides)
        run = fusion_ablation.s2s_run(ctx, plan, 5.0, backbone, method)
        return _train_steps(run) * run.load().train.batch_size

    for method in ("none", "cold", "deep", "linear"):
        assert rows_seen((), "rnn", method) == rows_seen((), "transformer", method), method
    user = ("--config.train.steps=7",)
    assert rows_seen(user, "rnn", "none") * 2 == rows_seen(user, "transformer", "none")
