"""Carlson et al. 2018 ("Evaluating prose style transfer with the Bible"): their rows, each with
and without fusing a target-side LM.

    lmfuse data prepare --config configs/data_bible.py          # once: the Bible and its tokenizer
    python experiments/carlson_table.py --budget cpu            # tiny models (see SIZES)
    python experiments/carlson_table.py --budget gpu            # paper-size models, full splits
    python experiments/carlson_table.py --rows kjv_asv ylt_bbe --methods none

Workdirs go to workdirs/carlson_table_<budget> (--workdir), tables to
experiments/results/carlson_table.{md,csv} (--results); both list every `lmfuse train` and
`lmfuse translate` command a cell ran, so each number can be reproduced by hand.

Rows, in the paper's order: KJV→ASV, public→ASV, BBE→ASV, YLT→BBE, public→BBE, YLT→ASV, on
their split (`public`: every other English version paired with the target, verse by verse).
Systems: `none`, the row's encoder-decoder alone; `shallow`, the same checkpoint with a
Transformer LM of the target version's train text fused in beam search, λ (and the length
reward β) chosen on validation BLEU over grids that hold 0; `ilme`, the same with μ times the
encoder-decoder's internal LM subtracted (the fusion study's best decode-time method, μ from
its own grid with 0); and `deep`, deep fusion of the same LM fine-tuned from that checkpoint
(the fusion study's one trained method that gains on every seed). `--methods ... cold` adds
cold fusion of the LM, trained from scratch under the row's budget (it gains on two of the
study's three seeds). Models, as `lmfuse train` runs (workdirs under the study's workdir):

    s2s_<row>       the row's encoder-decoder: configs/carlson/<row>.py (budget gpu: 3-layer
                    bi-LSTM with attention), or configs/s2s_transformer.py:tiny (budget cpu)
                    with data.source / data.target set to the row's (s2s_<row>_s<n>: training
                    seed n, --seeds)
    lm_<target>     configs/lm_transformer.py on the target version's train text
                    (data.versions=<target>): one per target version, shared by its rows
    deep_<row>      configs/s2s_*.py with fusion.method=deep, from s2s_<row>'s chosen
                    checkpoint (fusion.s2s_step) and lm_<target>
    cold_<row>      the row's encoder-decoder config with fusion.method=cold and lm_<target>,
                    trained from scratch as s2s_<row> is

The protocol is `lmfuse.evaluate.protocol`'s: choices read a seeded validation sample over
every book (--val_sample; budget gpu: the whole split), test is a seeded sample of
--test_sample pairs (budget gpu: the whole split) decoded once at the choice, and each system
is compared with `none` and with copying the source by sacrebleu's paired bootstrap. The
samples' ids are written under <workdir>/eval/<row>. On other corpora (your files, e.g. --config.data.corpus=text
--config.data.files.train='src.txt|tgt.txt' ...) every row reads those files and the LM trains
on their target side.

Run it from the repository root (config paths are relative to it). Rerunning resumes: finished
cells are skipped, trained models reused, failed cells retried.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lib import study_cli, tables
from lib.method_plot import plot_methods
from lib.runner import OK, Cell, CellRecord, Report, RunContext, Study
from lib.runs import TrainRun, override, size_overrides
from lib.scoring import Evaluation, decode_time_cell, plain_cell
from lib.shared_models import (
    cadence,
    check_user_overrides,
    corpus_plan,
    pin_tokenizer,
    text_lm_data,
    trained_lm,
    user_config,
    user_overrides,
)
from lib.sweeps import WEIGHT_GRIDS, grids_read_by
from lib.trained_fusion import fusion_overrides, recipe, trained_fusion_cell

NAME = "carlson_table"

# The paper's rows, in its order: key (configs/carlson/<key>.py) -> (source, target).
ROWS = {
    "kjv_asv": ("kjv", "asv"),
    "public_asv": ("public", "asv"),
    "bbe_asv": ("bbe", "asv"),
    "ylt_bbe": ("ylt", "bbe"),
    "public_bbe": ("public", "bbe"),
    "ylt_asv": ("ylt", "asv"),
}
METHODS = ("none", "shallow", "ilme", "deep", "cold")
TRAINED = ("deep", "cold")
# Run unless --methods says otherwise: deep fusion is the fusion study's one trained method that
# gains on every seed (cold fusion gains on two of three, so it is an option, not a default).
DEFAULT_METHODS = ("none", "shallow", "ilme", "deep")

# Every size of both budgets, in one place. `cpu`: 6 tiny encoder-decoders with a copy output,
# each up to 1,200 steps (about 30 minutes here; a public row's 165k pairs are less than one
# epoch of them), stopped once the BLEU of 200 validation pairs (every 150 steps) has not
# improved 3 times in a row; 2 tiny LMs (ASV, BBE) of 2,000 steps; deep fusion 100 steps from
# each row's chosen checkpoint; every test split whole: several hours on a 2-core CPU, a row at
# a time (--rows). `gpu`: the configs as they are (s2s 40k steps, LM 20k steps).
SIZES = {
    "cpu": {
        "s2s_config": "configs/s2s_transformer.py:tiny",  # data.source / target set per row
        "lm_config": "configs/lm_transformer.py:tiny",
        "fusion_variant": "tiny",  # configs/fusion.py:<method>,tiny
        "s2s_steps": 1200,
        "patience": 3,
        "eval_every": 150,
        "stop_metric": "bleu",
        "eval_translate_sample": 200,
        "copy_source": True,  # style transfer keeps most words: a copy output (pointer-generator)
        "s2s_dropout": 0.1,  # the tiny config has none
        "lm_steps": 2000,  # configs/lm_transformer.py:tiny, about 7 minutes here
        "lm_seq_len": 96,  # as long as the tiny encoder-decoders' outputs (tiny LM: 64)
        "deep_steps": 100,
        "beam_size": 4,
    },
    "gpu": {
        "s2s_config": "configs/carlson/{row}.py",
        "lm_config": "configs/lm_transformer.py",
        "fusion_variant": None,
        "s2s_steps": 0,  # 0: the config's
        "lm_steps": 0,
        "lm_seq_len": 0,  # 0: the config's (128, as the encoder-decoders)
        "beam_size": 0,  # 0: the config's (4)
        "s2s_epochs": 30,  # up to 30 epochs, stopped when validation BLEU stops improving
        "patience": 5,
        "eval_every": 500,
        "stop_metric": "bleu",
        "eval_translate_sample": 500,
        "copy_source": True,  # the paper's attention models, with a copy output
        "s2s_dropout": None,  # None: the config's
        "deep_steps": 0,  # 0: the fusion config's
    },
}

# The protocol's settings per budget (the command line changes them); 0 joins each grid.
PROTOCOL = {
    "lambdas": {"cpu": (0.1, 0.2, 0.3, 0.5, 0.8), "gpu": (0.05, 0.1, 0.2, 0.3, 0.5)},
    "ilm_weights": {"cpu": (0.1, 0.3, 0.5), "gpu": (0.1, 0.2, 0.3, 0.5)},
    "length_rewards": {"cpu": (), "gpu": (0.5, 1.0)},
    "val_sample": {"cpu": 500, "gpu": 0},
    "test_sample": {"cpu": 0, "gpu": 0},
    "sample_seed": {"cpu": 0, "gpu": 0},
    "seeds": {"cpu": (0,), "gpu": (0, 1, 2)},
    "checkpoints": {"cpu": 1, "gpu": 4},
}

GRID = ("rows", "methods", "seeds")  # settings that only choose cells
GRID_FLAGS = ("lambdas", "ilm_weights", "length_rewards")  # the decode-time cells' weight grids


def defaults(budget: str) -> dict[str, Any]:
    """The settings of a budget, which the command line can change."""
    return {"rows": tuple(ROWS), "methods": DEFAULT_METHODS,
            **{name: values[budget] for name, values in PROTOCOL.items()}}


@dataclasses.dataclass(frozen=True)
class Plan:
    """A budget's sizes with the settings."""

    s2s_config: str  # '{row}' is replaced by the row's key, e.g. 'configs/carlson/{row}.py'
    lm_config: str
    fusion_variant: str | None  # of configs/fusion.py:<method>, for trained fusion's recipe
    method_steps: dict[str, int]  # train.steps of deep fusion (0: its config's)
    lm_overrides: tuple[str, ...]
    s2s_overrides: tuple[str, ...]
    checkpoints: int  # kept per encoder-decoder, chosen among on validation BLEU
    grids: dict[str, tuple[float, ...]]  # decode-time weights: 'lm' λ, 'ilm' μ, 'length_reward' β
    val_sample: int  # seeded samples (0: the whole split)
    test_sample: int
    sample_seed: int

    def s2s_spec(self, row: str) -> str:
        return self.s2s_config.format(row=row)

    def fusion_spec(self, method: str) -> str:
        variant = f",{self.fusion_variant}" if self.fusion_variant else ""
        return f"configs/fusion.py:{method}{variant}"


def plan(budget: str, settings: dict[str, Any]) -> Plan:
    sizes = SIZES[budget]
    s2s, lm = size_overrides(budget, sizes)
    if sizes["copy_source"]:
        s2s += (override("model.copy_source", True),)
    if sizes["s2s_dropout"] is not None:
        s2s += (override("model.dropout", sizes["s2s_dropout"]),)
    return Plan(
        s2s_config=sizes["s2s_config"],
        lm_config=sizes["lm_config"],
        fusion_variant=sizes["fusion_variant"],
        method_steps={"deep": sizes["deep_steps"]},
        lm_overrides=lm,
        s2s_overrides=s2s,
        checkpoints=settings["checkpoints"],
        grids={WEIGHT_GRIDS[name]: tuple(settings[name]) for name in GRID_FLAGS},
        val_sample=settings["val_sample"],
        test_sample=settings["test_sample"],
        sample_seed=settings["sample_seed"],
    )


# ---------------------------------------------------------------------------------------------
# The runs: configs and overrides (budget sizes, then the user's, then what defines the run)


def s2s_run(ctx: RunContext, plan: Plan, row: str, seed: int = 0, method: str = "none",
            base_step: int = 0) -> TrainRun:
    """The row's encoder-decoder, trained with `seed` (0: the config's own); or (`method`) a
    trained fusion of it with the row's LM, from its checkpoint `base_step`."""
    spec = plan.s2s_spec(row)
    base = plan.s2s_overrides
    if method in TRAINED:
        base += recipe(plan.fusion_spec(method), method, plan.method_steps.get(method, 0))
    user = user_overrides(ctx, spec, base)
    source, target = ROWS[row]
    defining = (override("data.source", source), override("data.target", target),
                *([override("seed", seed)] if seed else []))
    if method in TRAINED:
        defining += fusion_overrides(method, lm_run(ctx, plan, row).workdir,
                                     s2s_run(ctx, plan, row, seed).workdir, base_step)
    overrides = (*base, *cadence(spec, (*base, *user), plan.checkpoints), *user,
                 *pin_tokenizer(_data(ctx, plan, row)), *defining)
    name = "s2s" if method == "none" else method
    return TrainRun(spec, str(ctx.workdir / f"{name}_{row}{f'_s{seed}' if seed else ''}"),
                    overrides)


def lm_run(ctx: RunContext, plan: Plan, row: str) -> TrainRun:
    """The LM of the row's target version (the same run for every row with that target)."""
    target = ROWS[row][1]
    user = user_overrides(ctx, plan.lm_config, plan.lm_overrides)
    data = _data(ctx, plan, row)
    defining = (override("data.versions", target),) if data["bible"] else text_lm_data(data)
    return TrainRun(plan.lm_config, str(ctx.workdir / f"lm_{target}"),
                    (*plan.lm_overrides, *user, *pin_tokenizer(data), *defining))


def _data(ctx: RunContext, plan: Plan, row: str) -> dict[str, Any]:
    """The Bible, or the user's files (the same for every row: --config overrides are global,
    so the first row asking decides)."""
    return corpus_plan(ctx, lambda: user_config(ctx, plan.s2s_spec(row), plan.s2s_overrides))


def check_overrides(plan: Plan, rows: Sequence[str], ctx: RunContext) -> None:
    """Every --config override names a key of some config here and has a valid value."""
    check_user_overrides(ctx, [(plan.lm_config, plan.lm_overrides)]
                         + [(plan.s2s_spec(row), plan.s2s_overrides) for row in rows])


def describe_task(plan: Plan, rows: Sequence[str], ctx: RunContext) -> str:
    """The data in words."""
    data = user_config(ctx, plan.s2s_spec(rows[0]), plan.s2s_overrides).data
    if data.corpus == "bible":
        brackets = ("kept, brackets included" if data.keep_brackets else
                    "dropped, their words kept")
        return ("Bible style transfer on Carlson et al. 2018's split (translate view); "
                "'public' pairs every other English version with the target, verse by verse, "
                "so a public row's test set holds each test verse once per other version; "
                f"KJV's [bracketed] italics (KJV→ASV and the public rows) are {brackets} "
                "(data.keep_brackets)")
    return f"{data.corpus} corpus, translate view (train {data.files.train}), for every row"


# ---------------------------------------------------------------------------------------------
# Cells: (row, method) -> scores


def cell_key(row: str, method: str, seed: int = 0) -> str:
    return f"{row}-{method}{f'-s{seed}' if seed else ''}"


def build_cells(plan: Plan, rows: Sequence[str], methods: Sequence[str],
                seeds: Sequence[int] = (0,)) -> list[Cell]:
    """One cell per (row, seed, method), in the paper's row order, 'none' first."""
    cells = []
    for row in (r for r in ROWS if r in rows):
        source, target = ROWS[row]
        for seed in seeds:
            for method in (m for m in METHODS if m in methods):
                labels = {"row": row, "source": source, "target": target, "method": method,
                          "seed": seed}
                cells.append(Cell(cell_key(row, method, seed), labels,
                                  _cell_function(plan, row, method, seed),
                                  settings=grids_read_by(method)))
    return cells


def _cell_function(plan: Plan, row: str, method: str, seed: int):
    def evaluation(ctx: RunContext) -> Evaluation:
        return Evaluation(plan.val_sample, plan.test_sample, plan.sample_seed,
                          ctx.workdir / "eval" / row)

    def plain(ctx: RunContext) -> dict[str, Any]:
        return plain_cell(ctx, evaluation(ctx), s2s_run(ctx, plan, row, seed),
                          cell_key(row, method, seed))

    def fused(ctx: RunContext) -> dict[str, Any]:
        lm = trained_lm(ctx, lm_run(ctx, plan, row))
        return decode_time_cell(ctx, evaluation(ctx), s2s_run(ctx, plan, row, seed), lm, method,
                                plan.grids, cell_key(row, method, seed))

    def trained(ctx: RunContext) -> dict[str, Any]:
        lm = trained_lm(ctx, lm_run(ctx, plan, row))
        return trained_fusion_cell(
            ctx, evaluation(ctx), s2s_run(ctx, plan, row, seed),
            lambda step: s2s_run(ctx, plan, row, seed, method, step), method, lm,
            cell_key(row, method, seed))

    return plain if method == "none" else trained if method in TRAINED else fused


# ---------------------------------------------------------------------------------------------
# The report
#
#   <results>/carlson_table.md   per row and system: test BLEU, PINC, chrF, the copy-the-source
#                                baseline's BLEU and PINC, the choice (checkpoint, λ) and its
#                                validation BLEU, wall time; budget, date, device, signatures,
#                                the command, the shared models and each cell's commands
#   <results>/carlson_table.csv  the same, one row per cell (failed cells: status, error, no
#                                numbers), with the signature, device, budget and date per row
#   <results>/carlson_table_ledger.json the ledger (lib.runner): what a fresh workdir resumes from

COLUMNS = ("row", "source", "target", "method", "seed", "status", "step", "weights",
           "test_bleu", "test_bleu_ci", "delta_none", "p_none", "delta_copy", "p_copy",
           "test_pinc", "test_chrf", "test_length_ratio", "copy_bleu", "copy_pinc", "val_bleu",
           "lm_perplexity", "test_sentences", "train_steps", "train_epochs", "wall_seconds",
           "bleu_signature", "device", "budget", "date", "error", "commands")
SYSTEMS = {"none": "seq2seq", "shallow": "seq2seq + LM (shallow fusion)",
           "ilme": "seq2seq + LM − internal LM (ILME)", "deep": "seq2seq + LM (deep fusion)",
           "cold": "seq2seq + LM (cold fusion)"}


def write_report(report: Report, task: str) -> list[Path]:
    """Writes carlson_table.md and .csv, and the per-row figure; returns their paths."""
    out = report.results_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.csv", out / f"{NAME}_methods.png"]
    rows = [cell_row(r, report) for r in report.records]
    paths[0].write_text(markdown(report, task), encoding="utf-8")
    paths[1].write_text(tables.csv_text(COLUMNS, rows), encoding="utf-8")
    plot_methods(report.records, ("row",), paths[2])
    return paths


def cell_row(record: CellRecord, report: Report) -> dict[str, str]:
    v = record.values
    row = {**record.labels, "status": record.status, "error": record.error,
           "budget": report.study.budget, "date": report.date,
           "wall_seconds": round(record.seconds + v.get("attributed_seconds", 0.0), 1)}
    if record.status == OK:
        test, confidence = v["test"], v["confidence"]
        fused = record.labels["method"] != "none"
        row.update(step=v["step"], weights=tables.weights_text(v.get("weights")),
                   val_bleu=v["val"]["bleu"], test_bleu=test["bleu"],
                   test_bleu_ci=confidence["copy"]["system"]["bleu_ci"],
                   delta_none=_delta(confidence["none"]) if fused else None,
                   p_none=tables.p_value(confidence["none"]) if fused else None,
                   delta_copy=_delta(confidence["copy"]),
                   p_copy=confidence["copy"]["system"]["bleu_p"],
                   test_pinc=test["pinc"], test_chrf=test["chrf"],
                   test_length_ratio=test["length_ratio"], copy_bleu=test["copy_bleu"],
                   copy_pinc=test["copy_pinc"], lm_perplexity=v["lm_perplexity"],
                   test_sentences=test["num_sentences"],
                   train_steps=(v.get("training") or {}).get("steps"),
                   train_epochs=(v.get("training") or {}).get("epochs"),
                   bleu_signature=v["bleu_signature"], device=v["device"],
                   commands=" && ".join(v["commands"]))
    return {k: tables.fmt(row.get(k)) for k in COLUMNS}


def _delta(compared: dict[str, Any]) -> float:
    return compared["system"]["bleu"] - compared["baseline"]["bleu"]


def markdown(report: Report, task: str) -> str:
    lines = [
        f"# Carlson et al. 2018 rows, with and without LM fusion ({report.study.budget} budget)",
        "",
        f"- Task: {task}",
        *tables.header_lines(report),
        "- Systems: `none` is the row's encoder-decoder alone; `shallow` adds λ times the "
        "log-probabilities of a Transformer LM of the target version's training text (and β "
        "per output token) in beam search; `ilme` also subtracts μ times the log-probabilities "
        "of the encoder-decoder's internal LM (its decoder with the encoder's context zeroed; "
        "the fusion study's best method); `deep` fine-tunes a gate and output layer over "
        "the encoder-decoder's and the frozen LM's states (Gulcehre et al. 2015), starting "
        "from the encoder-decoder's chosen checkpoint; `cold` trains the encoder-decoder "
        "from scratch with the frozen LM's logits gated into its output (Sriram et al. 2017).",
        *tables.protocol_lines(report),
        "- copy BLEU / copy PINC: the source copied as the output (PINC 0 by definition), the "
        "baseline a style-transfer model has to beat.",
        "- Wall time: the cell's own work; `none` counts its encoder-decoder's training and "
        "checkpoint choice, which `shallow` reuses; the LMs are listed below.",
        "",
        "| row | seed | system | choice | BLEU | Δ none | Δ copy | PINC | chrF | len ratio | "
        "copy BLEU | copy PINC | val BLEU | LM ppl | steps | epochs | train s | wall s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in report.records:
        head = (f"| {_row_name(record.labels)} | {record.labels['seed']} | "
                f"{SYSTEMS[record.labels['method']]} ")
        if record.status != OK:
            lines.append(head + f"| {tables.not_finished(record)} |" + " |" * 14)
            continue
        v = record.values
        choice = f"step {v['step']}"
        if v.get("weights"):
            choice += f"; {tables.weights_text(v['weights'])}"
        cells = [choice, tables.bleu_interval(record), tables.difference(record, "none"),
                 tables.difference(record, "copy"),
                 *(tables.score(record, "test", k) for k in
                   ("pinc", "chrf", "length_ratio", "copy_bleu", "copy_pinc")),
                 tables.score(record, "val", "bleu"),
                 f"{v['lm_perplexity']:.2f}" if v["lm_perplexity"] is not None else "",
                 *tables.training_cells(record),
                 tables.fmt(round(record.seconds + v.get("attributed_seconds", 0.0), 1))]
        lines.append(head + "| " + " | ".join(cells) + " |")
    lines.append("")
    lines += tables.seed_summary_lines(report, ("row", "method"))
    lines += [f"![each system's test BLEU with its 95% interval, per row]({NAME}_methods.png)", ""]
    lines += tables.shared_models_lines(report)
    lines += tables.commands_lines(report)
    return "\n".join(lines)


def _row_name(labels: dict[str, Any]) -> str:
    source, target = labels["source"], labels["target"]
    return f"{source if source == 'public' else source.upper()}→{target.upper()}"


# ---------------------------------------------------------------------------------------------
# The command line


def build_parser() -> argparse.ArgumentParser:
    parser = study_cli.study_parser(NAME, __doc__)
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=None, metavar="ROW",
                        help=f"rows to run, of {' '.join(ROWS)} (default: all six, in the "
                             "paper's order)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                        help=f"systems to run, of {' '.join(METHODS)} (default: "
                             f"{' '.join(DEFAULT_METHODS)})")
    study_cli.add_protocol_flags(parser, PROTOCOL, GRID_FLAGS)
    return parser


def make_study(args: argparse.Namespace) -> Study:
    settings = study_cli.settings_from(args, defaults(args.budget))
    study_cli.check_protocol(settings)
    sizes = plan(args.budget, settings)
    rows = [r for r in ROWS if r in settings["rows"]]
    return Study(
        name=NAME,
        budget=args.budget,
        settings=settings,
        cells=build_cells(sizes, rows, settings["methods"], settings["seeds"]),
        report=lambda report: write_report(report, describe_task(sizes, rows, report.context)),
        grid_settings=GRID,
        cell_settings=GRID_FLAGS,  # read by the decode-time cells only
        check=lambda context: check_overrides(sizes, rows, context),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return study_cli.main(build_parser(), make_study, argv)


if __name__ == "__main__":
    sys.exit(main())
