"""`python experiments/fusion_study.py` end to end on real verse pairs, with tiny models: a
4-cell grid (none, shallow fusion, density ratio at 100% data, which is N/A, and a cold-fusion
cell whose override cannot work) writes its tables and plots under the evaluation protocol
(seeded samples, 0 in every grid, intervals against none and copy), selection never reads test
data, a rerun skips the finished cells without training anything, and mistakes are one-line
errors."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import shlex
import shutil
import uuid
from pathlib import Path

import fusion_study
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
from lib import runner, study_cli
from lib.tables import fmt

from lmfuse.config import split_override_args
from lmfuse.errors import LmfuseError

SCRIPT = "experiments/fusion_study.py"
LAMBDAS = (0.2, 0.5)
STEPS = 20
GRID_METHODS = ("none", "shallow", "density_ratio", "cold")
SAMPLE = 12  # validation and test pairs, seeded samples of the pair corpus' splits


def grid_args(corpus: dict[str, str], root: Path, methods: tuple[str, ...] = GRID_METHODS,
              results: Path | None = None, sample: int = SAMPLE) -> list[str]:
    # cold_dim=0 only matters to cold fusion: that cell fails, the others must not notice.
    # The study spaces its checkpoints itself (--checkpoints 2: steps 10 and 20).
    # A step budget (the cpu budget's epochs and early stopping are tested on their own).
    overrides = tiny_grid_overrides(corpus, **{"train.steps": STEPS, "train.epochs": 0,
                                               "train.patience": 0, "fusion.cold_dim": 0,
                                               "decode.beam_size": 2})
    return ["--workdir", str(root / "work"), "--results", str(results or root / "results"),
            "--fractions", "100", "--backbones", "transformer", "--methods", *methods,
            "--val_sample", str(sample), "--test_sample", str(sample), "--sample_seed", "3",
            "--lambdas", *map(str, LAMBDAS), "--checkpoints", "2", *overrides]


@pytest.fixture(scope="module")
def grid(pair_corpus, tmp_path_factory):
    """The grid run twice in one workdir: (first run, rerun) outputs and the csv rows."""
    root = tmp_path_factory.mktemp("fusion_study")
    first = run_grid(SCRIPT, grid_args(pair_corpus, root))
    rows = read_csv(root / "results" / "fusion_study.csv")
    mtimes = checkpoint_mtimes(root / "work")
    second = run_grid(SCRIPT, grid_args(pair_corpus, root))
    return {"root": root, "first": first, "second": second, "rows": rows, "mtimes": mtimes,
            "rerun_rows": read_csv(root / "results" / "fusion_study.csv")}


def test_the_grid_writes_tables_and_plots_with_real_scores(grid):
    code, out = grid["first"]
    assert code == 1  # one cell failed, the grid finished
    results = grid["root"] / "results"
    for name in ("fusion_study.md", "fusion_study.csv", "fusion_study_sweeps.csv"):
        assert (results / name).stat().st_size > 0
    for name in ("fusion_study_bleu.png", "fusion_study_lambda.png", "fusion_study_methods.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = grid["rows"]
    assert set(rows) == set(GRID_METHODS)
    for method in ("none", "shallow"):
        row = rows[method]
        assert row["status"] == "ok" and row["fraction"] == "100"
        for key in ("val_bleu", "test_bleu", "test_chrf", "test_pinc"):
            assert 0 <= float(row[key]) <= 100 and math.isfinite(float(row[key]))
        assert int(row["step"]) in (STEPS // 2, STEPS)  # two kept checkpoints to choose from
        assert row["commands"].startswith("lmfuse train --config configs/")
        assert "lmfuse translate" in row["commands"]
    assert rows["shallow"]["step"] == rows["none"]["step"]  # fuses none's chosen checkpoint
    assert math.isfinite(float(rows["shallow"]["lm_perplexity"]))
    assert rows["none"]["weights"] == "" and rows["none"]["lm_perplexity"] == ""
    assert rows["none"]["delta_none"] == "" and rows["shallow"]["delta_none"] != ""
    for method in ("none", "shallow"):  # intervals and p-values against copying the source
        assert float(rows[method]["test_bleu_ci"]) >= 0 and 0 <= float(rows[method]["p_copy"]) <= 1
        assert float(rows[method]["test_length_ratio"]) >= 0
    assert "[1/4] f100-transformer-none: ok" in out
    assert "[3/4] f100-transformer-density_ratio: N/A (at 100% data the source LM" in out
    # The shared-model record holds the perplexity the cell reports, not a rounding of it.
    shared = json.loads((grid["root"] / "work" / "artifacts.json").read_text(encoding="utf-8"))
    assert rows["shallow"]["lm_perplexity"] == fmt(shared["lm_target"]["validation_perplexity"])


def test_the_table_names_the_copy_baseline_of_the_scored_verses(grid):
    import sacrebleu

    # Independently: sacrebleu on the test sources themselves, as if copied as the output.
    evaluated = grid["root"] / "work" / "eval"
    sources = (evaluated / "test.sample12.seed3.src").read_text(encoding="utf-8").splitlines()
    references = (evaluated / "test.sample12.seed3.ref").read_text(encoding="utf-8").splitlines()
    copy_bleu = sacrebleu.corpus_bleu(sources, [references]).score
    table = (grid["root"] / "results" / "fusion_study.md").read_text(encoding="utf-8")
    assert f"Copying the source as the output scores test BLEU {copy_bleu:.2f} " in table


def test_choices_are_the_best_validation_points_of_the_stored_sweeps(grid):
    with (grid["root"] / "results" / "fusion_study_sweeps.csv").open(encoding="utf-8") as f:
        sweeps = list(csv.DictReader(f))
    # 0 joins the λ grid: the plain decode is a candidate, so fusion never loses on validation.
    shallow = ["all weights 0 (no fusion)", *(f"λ {w:g}" for w in LAMBDAS)]
    for method, kind, values in (("shallow", "weights", shallow),
                                 ("none", "step", ["10", "20"])):
        points = [p for p in sweeps if p["method"] == method]
        assert [p["value"] for p in points] == values
        assert all(p["kind"] == kind for p in points)
        (chosen,) = [p for p in points if p["chosen"] == "yes"]
        assert float(chosen["val_bleu"]) == max(float(p["val_bleu"]) for p in points)
        row = grid["rows"][method]
        assert chosen["value"] == row["weights" if kind == "weights" else "step"] or (
            chosen["value"] == shallow[0] and row["weights"] == shallow[0])
        assert chosen["val_bleu"] == row["val_bleu"]
    none_val = float(grid["rows"]["none"]["val_bleu"])
    assert float(grid["rows"]["shallow"]["val_bleu"]) >= none_val
    zero = next(p for p in sweeps if p["method"] == "shallow" and p["value"] == shallow[0])
    assert float(zero["val_bleu"]) == none_val  # λ = 0 is the plain model's own decode


def test_selection_reads_the_validation_sample_only(grid, pair_corpus, monkeypatch):
    """The shallow cell rerun in-process with every decode recorded: its choices decode the
    validation sample only, and the test sample is decoded once, after the last choice, at
    the chosen weights."""
    from lib import scoring

    monkeypatch.chdir(REPO)
    args = grid_args(pair_corpus, grid["root"])
    overrides, rest = split_override_args(args)
    study = fusion_study.make_study(fusion_study.build_parser().parse_args(rest))
    (cell,) = [c for c in study.cells if c.labels["method"] == "shallow"]
    decoded = []
    real = scoring.decode_and_score

    def spy(model, params, flags, evalset):
        decoded.append((evalset.split, flags))
        return real(model, params, flags, evalset)

    monkeypatch.setattr(scoring, "decode_and_score", spy)
    cached = list((grid["root"] / "work").glob("s2s_*/test.step*.json"))
    assert cached  # the plain model's test decode, kept beside its checkpoints ...
    for path in cached:
        path.unlink()  # ... and removed, so that it is decoded (and seen) again
    # and the sweep's logged points, so that each is decoded again (the cell rewrites them)
    (grid["root"] / "work" / "cells" / "f100-transformer-shallow.sweep.jsonl").unlink()
    context = runner.RunContext(grid["root"] / "work", "cpu", study.settings, tuple(overrides))
    values = cell.run(context)
    splits = [split for split, _ in decoded]
    assert splits.count("test") in (1, 2) and splits[-1] == "test", splits
    assert splits.count("validation") == len(LAMBDAS)  # λ = 0 is the plain model's decode
    last_choice = max(i for i, s in enumerate(splits) if s == "validation")
    assert all(s == "validation" for s in splits[: last_choice + 1])
    assert all(s == "test" for s in splits[last_choice + 1:])
    fused = [flags for split, flags in decoded if split == "test" and flags.method]
    chosen = values["weights"]
    if chosen["lm"]:
        assert fused == [scoring.fusion_flags("shallow", fused[0].lm, chosen)]
    assert len({(s, f) for s, f in decoded}) == len(decoded)  # no candidate decoded twice


def test_a_failing_cell_is_recorded_and_the_others_finish(grid):
    cold = grid["rows"]["cold"]
    assert cold["status"] == "failed" and "cold_dim" in cold["error"]
    assert cold["test_bleu"] == cold["val_bleu"] == cold["commands"] == ""
    md = (grid["root"] / "results" / "fusion_study.md").read_text(encoding="utf-8")
    assert "| cold | failed: " in md and "cold_dim" in md
    assert "cpu budget" in md and "BLEU signature: `nrefs:1" in md and "device: " in md
    assert "a seeded sample of 12 pairs over every book" in md
    assert "Command: `python experiments/fusion_study.py --workdir" in md
    log = (grid["root"] / "work" / "cells" / "f100-transformer-cold.log").read_text()
    assert "Traceback" in log and "cold_dim" in log


def test_a_rerun_skips_finished_cells_and_retries_failed_ones(grid):
    code, out = grid["second"]
    assert code == 1
    assert "[1/4] f100-transformer-none: skipped" in out
    assert "[2/4] f100-transformer-shallow: skipped" in out
    assert "[4/4] f100-transformer-cold: running (retrying a failed cell)" in out
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
    assert f"{workdir} is finished (step {STEPS} of {STEPS}" in result.stdout
    assert checkpoint_mtimes(workdir.parent) == before


def test_a_recorded_translate_command_reproduces_the_cells_test_output(grid):
    """The shallow cell's test command (its checkpoint, fusion flags and λ) writes the very
    hypotheses the runner scored."""
    command = grid["rows"]["shallow"]["commands"].split(" && ")[-1]
    args = shlex.split(command)
    assert args[:2] == ["lmfuse", "translate"] and "--step" in args
    assert args[args.index("--sample") + 1] == str(SAMPLE) and "--seed" in args
    # The fusion flags when validation chose fusion; with every weight 0, the plain decode.
    no_fusion = grid["rows"]["shallow"]["weights"] == "all weights 0 (no fusion)"
    assert ("--fusion" not in args) if no_fusion else ("--fusion" in args)
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
    args = grid_args(pair_corpus, grid["root"], sample=5)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the study names its configs relative to the repository
        with pytest.raises(LmfuseError, match="val_sample"):
            study_cli.run_command_line(fusion_study.build_parser(), fusion_study.make_study,
                                    args)


@contextlib.contextmanager
def scratch_ledger(grid):
    """The grid's cell records, restored afterwards for the other tests."""
    cells = grid["root"] / "work" / "cells"
    saved = grid["root"] / f"cells-{uuid.uuid4().hex}"
    shutil.copytree(cells, saved)
    try:
        yield cells, saved
    finally:
        shutil.rmtree(cells)
        shutil.copytree(saved, cells)


def count_decodes(monkeypatch) -> list[tuple[str, float]]:
    """(split, λ) of every beam-search pass over an evaluation set from now on."""
    import lib.scoring

    decoded = []
    decode_and_score = lib.scoring.decode_and_score

    def counting(model, params, flags, evalset):
        decoded.append((evalset.split, flags.lm_weight))
        return decode_and_score(model, params, flags, evalset)

    monkeypatch.setattr(lib.scoring, "decode_and_score", counting)
    return decoded


def run_in_process(args: list[str]) -> list[runner.CellRecord]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the study names its configs relative to the repository
        records, _ = study_cli.run_command_line(fusion_study.build_parser(),
                                             fusion_study.make_study, args)
    return records


def sweep(record: dict) -> dict[float, dict]:
    return {p["weights"]["lm"]: p["val"] for p in record["values"]["sweep"]}


def test_a_wider_weight_grid_reruns_only_the_cells_that_read_it_decoding_only_new_points(
        grid, pair_corpus, monkeypatch):
    """λ grid {0.2, 0.5} widened to {0.2, 0.5, 0.8} on a workdir whose sweeps are in its
    records only: the workdir is accepted, `none` is kept, shallow fusion reruns and decodes
    λ 0.8 alone on validation, nothing is trained, and a report of the old grid then shows
    the shallow cell pending."""
    args = grid_args(pair_corpus, grid["root"], methods=("none", "shallow"),
                     results=grid["root"] / "wider")
    wider = [*args[:args.index("--lambdas") + 1], *map(str, (*LAMBDAS, 0.8)),
             *args[args.index("--lambdas") + 1 + len(LAMBDAS):]]
    narrower_args = grid_args(pair_corpus, grid["root"], methods=("none", "shallow"),
                              results=grid["root"] / "narrower")
    with scratch_ledger(grid) as (cells, saved):
        (cells / "f100-transformer-shallow.sweep.jsonl").unlink()  # the record's points only
        decoded = count_decodes(monkeypatch)
        none, shallow = run_in_process(wider)
        run_in_process([*narrower_args, "--report_only"])
    narrower = read_csv(grid["root"] / "narrower" / "fusion_study.csv")
    assert none.settings == {} and shallow.settings["lambdas"] == [*LAMBDAS, 0.8]
    assert [d for d in decoded if d[0] == "validation"] == [("validation", 0.8)]
    chosen = shallow.values["weights"]["lm"]
    assert decoded[1:] == ([("test", chosen)] if chosen == 0.8 else [])
    old = sweep(json.loads((saved / "f100-transformer-shallow.json").read_text()))
    new = sweep(dataclasses.asdict(shallow))
    assert sorted(new) == [0.0, *LAMBDAS, 0.8] and all(new[w] == old[w] for w in old)
    assert checkpoint_mtimes(grid["root"] / "work") == grid["mtimes"]
    assert narrower["none"]["status"] == "ok" and narrower["shallow"]["status"] == "pending"


def test_a_sweep_cut_short_resumes_at_the_first_point_it_lacks(grid, pair_corpus, monkeypatch):
    """Shallow fusion killed while writing λ 0.5's validation point (no record, the sweep log
    ending mid-line): the rerun decodes λ 0.5 alone on validation, then test at the choice,
    and scores what the uninterrupted run scored."""
    args = grid_args(pair_corpus, grid["root"], methods=("shallow",),
                     results=grid["root"] / "resumed")
    with scratch_ledger(grid) as (cells, saved):
        (cells / "f100-transformer-shallow.json").unlink()
        log = cells / "f100-transformer-shallow.sweep.jsonl"
        lines = log.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["weights"]["lm"] for line in lines] == list(LAMBDAS)
        log.write_text(lines[0] + "\n" + lines[1][:len(lines[1]) // 2], encoding="utf-8")
        decoded = count_decodes(monkeypatch)
        (shallow,) = run_in_process(args)
        resumed_log = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()
                       if line.endswith("}")]
    old = json.loads((saved / "f100-transformer-shallow.json").read_text())
    chosen = shallow.values["weights"]["lm"]  # λ 0: the plain test decode, decoded once
    assert decoded == [("validation", 0.5)] + ([("test", chosen)] if chosen else [])
    assert sweep(dataclasses.asdict(shallow)) == sweep(old)
    assert shallow.values["test"] == old["values"]["test"]
    assert [e["weights"]["lm"] for e in resumed_log] == list(LAMBDAS)


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
    rows = read_csv(results / "fusion_study.csv")
    for method in ("none", "shallow"):
        assert rows[method] == grid["rows"][method]
    assert rows["deep"]["status"] == "pending" and rows["deep"]["test_bleu"] == ""
    md = (results / "fusion_study.md").read_text(encoding="utf-8")
    assert "| deep | not run yet |" in md
    assert "--report_only" not in md  # the table names the command that runs its cells
    assert sorted(p.name for p in work.iterdir()) == before  # no deep-fusion workdir
    assert checkpoint_mtimes(work) == grid["mtimes"]


def test_a_lost_workdir_takes_its_cells_from_the_results_ledger_and_reruns_nothing(
        grid, pair_corpus, tmp_path):
    """The results directory keeps the ledger beside the tables (fusion_study_ledger.json,
    committed with them): a run in a fresh workdir takes the finished cells from there,
    trains and decodes nothing, and reports the same rows; results made with another
    setting are never taken."""
    results = tmp_path / "results"
    shutil.copytree(grid["root"] / "results", results)
    snapshot = json.loads((results / "fusion_study_ledger.json").read_text(encoding="utf-8"))
    assert sorted(snapshot["cells"]) == ["f100-transformer-none", "f100-transformer-shallow"]
    artifacts = json.loads((grid["root"] / "work" / "artifacts.json").read_text(encoding="utf-8"))
    assert snapshot["files"]["artifacts.json"] == artifacts

    args = grid_args(pair_corpus, tmp_path, methods=("none", "shallow"), results=results)
    result = fast_study(SCRIPT, args)
    assert result.returncode == 0, result.stderr
    assert "2 finished cell(s) restored from" in result.stdout
    assert "[1/2] f100-transformer-none: skipped" in result.stdout
    assert "[2/2] f100-transformer-shallow: skipped" in result.stdout
    assert not checkpoint_mtimes(tmp_path / "work")  # nothing trained
    rows = read_csv(results / "fusion_study.csv")
    for method in ("none", "shallow"):
        assert rows[method] == grid["rows"][method]
    restored = json.loads((tmp_path / "work" / "artifacts.json").read_text(encoding="utf-8"))
    assert restored == artifacts  # the shared models' table too

    other = [*grid_args(pair_corpus, tmp_path / "other", methods=("none",), results=results)]
    other[other.index("--sample_seed") + 1] = "4"
    refused = fast_study(SCRIPT, [*other, "--report_only"])
    assert refused.returncode == 2 and "holds no results of this experiment" in refused.stderr


def test_report_only_on_an_empty_workdir_is_a_one_line_error(tmp_path):
    result = run_study(SCRIPT, ["--workdir", str(tmp_path / "w"), "--results",
                                str(tmp_path / "results"), "--report_only"])
    assert result.returncode == 2
    assert "holds no results of this experiment" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, message", [
    (["--fractoins", "5"], "unrecognized arguments: --fractoins"),
    (["--methods", "none", "shalow"], "argument --methods: invalid choice: 'shalow'"),
    (["--fractions", "0"], "fraction 0 is not a percentage in (0, 100]"),
    (["--checkpoints", "0"], "--checkpoints=0 must be at least 1"),
    (["--val_sample", "-1"], "--val_sample=-1 must be >= 0"),
    (["--lambdas", "-0.1"], "--lambdas -0.1: LM weights are >= 0"),
    (["--seeds", "1", "1"], "--seeds 1 1 repeats a seed"),
])
def test_a_setting_mistake_is_an_error_that_trains_nothing(tmp_path, args, message):
    result = run_study(SCRIPT, ["--workdir", str(tmp_path / "w"), *args])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("fusion_study.py: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_settings_take_the_budgets_defaults_and_types():
    args = fusion_study.build_parser().parse_args(
        ["--fractions", "5", "20", "--methods", "none", "shallow", "--test_sample", "0",
         "--length_rewards"])
    settings = study_cli.settings_from(args, fusion_study.defaults("cpu"))
    assert settings["fractions"] == (5.0, 20.0) and settings["methods"] == ("none", "shallow")
    assert settings["test_sample"] == 0 and settings["length_rewards"] == ()
    assert settings["val_sample"] >= 500  # the protocol's default validation sample
    assert settings["checkpoints"] == fusion_study.PROTOCOL["checkpoints"]["cpu"]
    assert settings["backbones"] == ("transformer", "rnn") and settings["seeds"] == (0,)


def test_density_ratio_at_full_data_is_not_applicable_and_seeds_name_their_runs(monkeypatch):
    monkeypatch.chdir(REPO)
    settings = fusion_study.defaults("cpu")
    plan = fusion_study.plan("cpu", settings)
    cells = fusion_study.build_cells(plan, (5.0, 100.0), ("transformer",),
                                        ("none", "density_ratio"), (0, 1))
    marked = {c.key: c.not_applicable for c in cells}
    assert marked["f5-transformer-density_ratio"] == "" == marked["f5-transformer-density_ratio-s1"]
    assert "shallow fusion with λ − λ_src" in marked["f100-transformer-density_ratio-s1"]
    ctx = runner.RunContext(Path("unused"), "cpu", {}, ())
    run = fusion_study.s2s_run(ctx, plan, 5.0, "transformer", seed=1)
    assert run.workdir.endswith("s2s_transformer_f5_s1") and run.load().seed == 1
    assert fusion_study.s2s_run(ctx, plan, 5.0, "transformer").load().seed == 0


def test_the_source_lm_passes_over_its_text_as_often_as_the_target_lm(monkeypatch):
    """Density ratio's LM of fraction p's targets gets p% of the target LM's steps (trained as
    long as the target LM, 500 verses are memorised: validation perplexity in the 100,000s)."""
    monkeypatch.chdir(REPO)
    plan = fusion_study.plan("cpu", fusion_study.defaults("cpu"))
    steps = fusion_study.SIZES["cpu"]["lm_steps"]
    ctx = runner.RunContext(Path("unused"), "cpu", {"corpus": "bible"}, ())
    monkeypatch.setattr(fusion_study, "_data", lambda c, p: {"bible": True, "target": "asv"})
    assert _train_steps(fusion_study.lm_run(ctx, plan, None)) == steps
    assert _train_steps(fusion_study.lm_run(ctx, plan, 100.0)) == steps  # lm_target itself
    assert _train_steps(fusion_study.lm_run(ctx, plan, 5.0)) == steps * 5 // 100
    assert _train_steps(fusion_study.lm_run(ctx, plan, 1.0)) == steps // 100
    user = runner.RunContext(Path("unused"), "cpu", {}, ("--config.train.steps=400",))
    assert _train_steps(fusion_study.lm_run(user, plan, 5.0)) == 20  # scales the user's steps


def _train_steps(run) -> int:
    return run.load().train.steps


def test_the_cpu_budget_gives_both_backbones_the_same_training_data(monkeypatch):
    """Models trained from scratch get an epoch budget with early stopping (the same epochs
    whatever the batch); deep and linear fusion fine-tune for steps, which the cpu budget
    doubles for the tiny RNN (16 rows a step, the Transformer 32); a user's train.steps still
    wins over the scaling."""
    monkeypatch.chdir(REPO)
    plan = fusion_study.plan("cpu", fusion_study.defaults("cpu"))
    sizes = fusion_study.SIZES["cpu"]

    def train(overrides: tuple[str, ...], backbone: str, method: str):
        ctx = runner.RunContext(Path("unused"), "cpu", {}, overrides)
        return fusion_study.s2s_run(ctx, plan, 5.0, backbone, method).load().train

    for method in ("none", "cold", "lm_prior"):
        for backbone in ("rnn", "transformer"):
            budget = train((), backbone, method)
            assert (budget.epochs, budget.patience) == (sizes["s2s_epochs"], sizes["patience"])
            # A checkpoint at every evaluation; the best-loss one survives `patience` more.
            assert budget.checkpoint_every == budget.eval_every == sizes["eval_every"]
            assert budget.keep_checkpoints >= budget.patience + 1
    for method in ("deep", "linear"):
        rows = {b: train((), b, method).steps * train((), b, method).batch_size
                for b in ("rnn", "transformer")}
        assert rows["rnn"] == rows["transformer"] and train((), "rnn", method).epochs == 0
    user = ("--config.train.steps=7", "--config.train.epochs=0", "--config.train.patience=0")
    rnn, transformer = train(user, "rnn", "none"), train(user, "transformer", "none")
    assert rnn.steps * 2 * rnn.batch_size == transformer.steps * transformer.batch_size


def test_all_the_pairs_train_fewer_epochs_within_the_cpu_budget(monkeypatch):
    """60 epochs of all the pairs would be about 19,000 steps, far over the 30 minutes a model
    may train on a CPU: the models trained from scratch on 100% get the budget's epochs for that
    fraction and backbone (the RNN, twice the Transformer's steps an epoch, fewer), with a
    patience of about half an epoch (the RNN's longer); the smaller fractions keep the budget's
    epochs and patience, and deep and linear fusion keep their steps."""
    monkeypatch.chdir(REPO)
    plan = fusion_study.plan("cpu", fusion_study.defaults("cpu"))
    sizes = fusion_study.SIZES["cpu"]
    ctx = runner.RunContext(Path("unused"), "cpu", {}, ())

    def train(percent: float, method: str, backbone: str = "transformer"):
        return fusion_study.s2s_run(ctx, plan, percent, backbone, method).load().train

    full = sizes["s2s_epochs_by_fraction"][100.0]
    assert 0 < full["rnn"] < full["transformer"] < sizes["s2s_epochs"]
    patience = {"transformer": sizes["patience"], **sizes["patience_by_fraction"][100.0]}
    assert patience["rnn"] > patience["transformer"]
    for backbone in ("transformer", "rnn"):
        for method in ("none", "cold", "simple_postnorm", "lm_prior"):
            budget = train(100.0, method, backbone)
            assert (budget.epochs, budget.patience) == (full[backbone], patience[backbone])
            assert budget.keep_checkpoints >= budget.patience + 1  # the best one survives
            for percent in (1.0, 5.0):
                small = train(percent, method, backbone)
                assert (small.epochs, small.patience) == (sizes["s2s_epochs"], sizes["patience"])
        for method in ("deep", "linear"):
            steps = sizes[f"{method}_steps"] * (sizes["rnn_step_scale"] if backbone == "rnn" else 1)
            assert (train(100.0, method, backbone).epochs,
                    train(100.0, method, backbone).steps) == (0, steps)
    user = runner.RunContext(Path("unused"), "cpu", {}, ("--config.train.epochs=3",
                                                          "--config.train.patience=9"))
    mine = fusion_study.s2s_run(user, plan, 100.0, "rnn").load().train
    assert (mine.epochs, mine.patience) == (3, 9)  # the user's overrides win
    gpu = fusion_study.plan("gpu", fusion_study.defaults("gpu"))
    assert gpu.epochs_by_fraction == gpu.patience_by_fraction == {}
