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
Systems: `none`, the row's encoder-decoder alone, and `shallow`, the same checkpoint with a
Transformer LM of the target version's train text fused in beam search, λ chosen on
validation BLEU. Models, as `lmfuse train` runs (workdirs under the study's workdir):

    s2s_<row>       the row's encoder-decoder: configs/carlson/<row>.py (budget gpu: 3-layer
                    bi-LSTM with attention), or configs/s2s_transformer.py:tiny (budget cpu)
                    with data.source / data.target set to the row's
    lm_<target>     configs/lm_transformer.py on the target version's train text
                    (data.versions=<target>): one per target version, shared by its rows

Budget `gpu` scores the full validation and test splits; budget `cpu` the first
`--eval_sentences` pairs of each (for the public rows those are the first eval_sentences/6
verses, every version of each). On other corpora (your files, e.g. --config.data.corpus=text
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

from lib import runner, tables
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
METHODS = ("none", "shallow")

# Every size of both budgets, in one place. `cpu`: 6 tiny encoder-decoders, 2 tiny LMs (ASV,
# BBE) and 42 beam-search decodes of 200 pairs (per row: validation and test for `none`, 4 λ
# and test for `shallow`); a decode takes 30-50 s on a 2-core CPU, so the grid is about an
# hour, half of it decoding. `gpu`: the configs as they are (s2s 40k steps, LM 20k steps) and
# the full splits.
SIZES = {
    "cpu": {
        "s2s_config": "configs/s2s_transformer.py:tiny",  # data.source / target set per row
        "lm_config": "configs/lm_transformer.py:tiny",
        "s2s_steps": 400,
        "lm_steps": 300,
        "lm_seq_len": 96,  # as long as the tiny encoder-decoders' outputs (tiny LM: 64)
        "beam_size": 4,
        "checkpoints": 1,  # kept per encoder-decoder, chosen between on validation BLEU
        "eval_sentences": 200,  # first N pairs of validation and of test
    },
    "gpu": {
        "s2s_config": "configs/carlson/{row}.py",
        "lm_config": "configs/lm_transformer.py",
        "s2s_steps": 0,  # 0: the config's
        "lm_steps": 0,
        "lm_seq_len": 0,  # 0: the config's (128, as the encoder-decoders)
        "beam_size": 0,  # 0: the config's (4)
        "checkpoints": 4,
        "eval_sentences": 0,  # 0: the full splits
    },
}

GRID = ("rows", "methods")  # settings that only choose cells


def defaults(budget: str) -> dict[str, Any]:
    """The settings of a budget, which the command line can change."""
    sizes = SIZES[budget]
    return {
        "rows": tuple(ROWS),
        "methods": METHODS,
        "lambdas": (0.1, 0.2, 0.3, 0.5),  # shallow fusion's LM weight λ
        "eval_sentences": sizes["eval_sentences"],
        "checkpoints": sizes["checkpoints"],
    }


@dataclasses.dataclass(frozen=True)
class Plan:
    """A budget's sizes with the settings."""

    s2s_config: str  # '{row}' is replaced by the row's key, e.g. 'configs/carlson/{row}.py'
    lm_config: str
    lm_overrides: tuple[str, ...]
    s2s_overrides: tuple[str, ...]
    checkpoints: int  # kept per encoder-decoder, chosen among on validation BLEU
    lambdas: tuple[float, ...]
    eval_sentences: int  # first N validation / test pairs in file order (0: all)

    def s2s_spec(self, row: str) -> str:
        return self.s2s_config.format(row=row)


def plan(budget: str, settings: dict[str, Any]) -> Plan:
    sizes = SIZES[budget]
    s2s, lm = size_overrides(budget, sizes)
    return Plan(
        s2s_config=sizes["s2s_config"],
        lm_config=sizes["lm_config"],
        lm_overrides=lm,
        s2s_overrides=s2s,
        checkpoints=settings["checkpoints"],
        lambdas=settings["lambdas"],
        eval_sentences=settings["eval_sentences"],
    )


# ---------------------------------------------------------------------------------------------
# The runs: configs and overrides (budget sizes, then the user's, then what defines the run)


def s2s_run(ctx: RunContext, plan: Plan, row: str) -> TrainRun:
    """The row's encoder-decoder."""
    spec = plan.s2s_spec(row)
    base = plan.s2s_overrides
    user = user_overrides(ctx, spec, base)
    source, target = ROWS[row]
    defining = (override("data.source", source), override("data.target", target))
    overrides = (*base, *cadence(spec, (*base, *user), plan.checkpoints), *user,
                 *pin_tokenizer(_data(ctx, plan, row)), *defining)
    return TrainRun(spec, str(ctx.workdir / f"s2s_{row}"), overrides)


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
        return ("Bible style transfer on Carlson et al. 2018's split (translate view); "
                "'public' pairs every other English version with the target, verse by verse")
    return f"{data.corpus} corpus, translate view (train {data.files.train}), for every row"


# ---------------------------------------------------------------------------------------------
# Cells: (row, method) -> scores


def cell_key(row: str, method: str) -> str:
    return f"{row}-{method}"


def build_cells(plan: Plan, rows: Sequence[str], methods: Sequence[str]) -> list[Cell]:
    """One cell per (row, method), in the paper's row order, 'none' first within a row."""
    cells = []
    for row in (r for r in ROWS if r in rows):
        source, target = ROWS[row]
        for method in (m for m in METHODS if m in methods):
            labels = {"row": row, "source": source, "target": target, "method": method}
            cells.append(Cell(cell_key(row, method), labels, _cell_function(plan, row, method)))
    return cells


def _cell_function(plan: Plan, row: str, method: str):
    def evaluation(ctx: RunContext) -> Evaluation:
        return Evaluation(plan.eval_sentences, ctx.workdir / "eval" / row)

    def plain(ctx: RunContext) -> dict[str, Any]:
        return plain_cell(ctx, evaluation(ctx), s2s_run(ctx, plan, row), cell_key(row, method))

    def fused(ctx: RunContext) -> dict[str, Any]:
        lm = trained_lm(ctx, lm_run(ctx, plan, row))
        return decode_time_cell(ctx, evaluation(ctx), s2s_run(ctx, plan, row), lm, method,
                                plan.lambdas, cell_key(row, method))

    return plain if method == "none" else fused


# ---------------------------------------------------------------------------------------------
# The report
#
#   <results>/carlson_table.md   per row and system: test BLEU, PINC, chrF, the copy-the-source
#                                baseline's BLEU and PINC, the choice (checkpoint, λ) and its
#                                validation BLEU, wall time; budget, date, device, signatures,
#                                the command, the shared models and each cell's commands
#   <results>/carlson_table.csv  the same, one row per cell (failed cells: status, error, no
#                                numbers), with the signature, device, budget and date per row

COLUMNS = ("row", "source", "target", "method", "status", "step", "lambda", "test_bleu",
           "test_pinc", "test_chrf", "copy_bleu", "copy_pinc", "val_bleu", "lm_perplexity",
           "test_sentences", "wall_seconds", "bleu_signature", "device", "budget", "date",
           "error", "commands")
SYSTEMS = {"none": "seq2seq", "shallow": "seq2seq + LM (shallow fusion)"}


def write_report(report: Report, task: str) -> list[Path]:
    """Writes carlson_table.md and .csv; returns their paths."""
    out = report.results_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.csv"]
    rows = [cell_row(r, report) for r in report.records]
    paths[0].write_text(markdown(report, task), encoding="utf-8")
    paths[1].write_text(tables.csv_text(COLUMNS, rows), encoding="utf-8")
    return paths


def cell_row(record: CellRecord, report: Report) -> dict[str, str]:
    v = record.values
    row = {**record.labels, "status": record.status, "error": record.error,
           "budget": report.study.budget, "date": report.date,
           "wall_seconds": round(record.seconds + v.get("attributed_seconds", 0.0), 1)}
    if record.status == OK:
        test = v["test"]
        row.update(step=v["step"], val_bleu=v["val"]["bleu"], test_bleu=test["bleu"],
                   test_pinc=test["pinc"], test_chrf=test["chrf"], copy_bleu=test["copy_bleu"],
                   copy_pinc=test["copy_pinc"], lm_perplexity=v["lm_perplexity"],
                   test_sentences=test["num_sentences"], bleu_signature=v["bleu_signature"],
                   device=v["device"], commands=" && ".join(v["commands"]))
        row["lambda"] = v["lambda"]
    return {k: tables.fmt(row.get(k)) for k in COLUMNS}


def markdown(report: Report, task: str) -> str:
    settings = report.study.settings
    lines = [
        f"# Carlson et al. 2018 rows, with and without LM fusion ({report.study.budget} budget)",
        "",
        f"- Task: {task}",
        *tables.header_lines(report),
        "- Systems: `none` is the row's encoder-decoder alone; `shallow` adds λ times the "
        "log-probabilities of a Transformer LM of the target version's training text in beam "
        "search. The checkpoint (of those kept) and λ (over "
        f"{', '.join(f'{x:g}' for x in settings.get('lambdas', ()))}) are chosen on validation "
        "BLEU; test is decoded once, at the choice.",
        "- copy BLEU / copy PINC: the source copied as the output (PINC 0 by definition), the "
        "baseline a style-transfer model has to beat.",
        *_public_note(report),
        "- Wall time: the cell's own work; `none` counts its encoder-decoder's training and "
        "checkpoint choice, which `shallow` reuses; the LMs are listed below.",
        "",
        "| row | system | choice | BLEU | PINC | chrF | copy BLEU | copy PINC | val BLEU | "
        "LM ppl | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in report.records:
        head = f"| {_row_name(record.labels)} | {SYSTEMS[record.labels['method']]} "
        if record.status != OK:
            lines.append(head + f"| {tables.not_finished(record)} | | | | | | | | |")
            continue
        v = record.values
        choice = f"step {v['step']}" + (f", λ {v['lambda']:g}" if v["lambda"] is not None else "")
        cells = [choice, *(tables.score(record, "test", k) for k in
                           ("bleu", "pinc", "chrf", "copy_bleu", "copy_pinc")),
                 tables.score(record, "val", "bleu"),
                 f"{v['lm_perplexity']:.2f}" if v["lm_perplexity"] is not None else "",
                 tables.fmt(round(record.seconds + v.get("attributed_seconds", 0.0), 1))]
        lines.append(head + "| " + " | ".join(cells) + " |")
    lines.append("")
    lines += tables.shared_models_lines(report)
    lines += tables.commands_lines(report)
    return "\n".join(lines)


def _public_note(report: Report) -> list[str]:
    """Public rows pair each verse with every other version, verse by verse: a subset of
    the first N pairs holds fewer verses than N."""
    public = any(r.labels["source"] == "public" for r in report.records)
    if not public or not report.study.settings.get("eval_sentences"):
        return []
    return ["- public rows: their evaluation pairs come verse by verse, each verse paired from "
            "every other English version, so the first N pairs cover about N/6 verses."]


def _row_name(labels: dict[str, Any]) -> str:
    source, target = labels["source"], labels["target"]
    return f"{source if source == 'public' else source.upper()}→{target.upper()}"


# ---------------------------------------------------------------------------------------------
# The command line


def build_parser() -> argparse.ArgumentParser:
    parser = runner.study_parser(NAME, __doc__)
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=None, metavar="ROW",
                        help=f"rows to run, of {' '.join(ROWS)} (default: all six, in the "
                             "paper's order)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                        help=f"systems to run, of {' '.join(METHODS)} (default: both)")
    runner.add_selection_flags(parser, "shallow fusion's λ grid, chosen on validation",
                               eval_sentences="cpu 200, gpu 0", checkpoints="cpu 1, gpu 4")
    return parser


def make_study(args: argparse.Namespace) -> Study:
    settings = runner.settings_from(args, defaults(args.budget))
    runner.check_at_least(settings, {"checkpoints": 1, "eval_sentences": 0})
    sizes = plan(args.budget, settings)
    rows = [r for r in ROWS if r in settings["rows"]]
    return Study(
        name=NAME,
        budget=args.budget,
        settings=settings,
        cells=build_cells(sizes, rows, settings["methods"]),
        report=lambda report: write_report(report, describe_task(sizes, rows, report.context)),
        grid_settings=GRID,
        check=lambda context: check_overrides(sizes, rows, context),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return runner.main(build_parser(), make_study, argv)


if __name__ == "__main__":
    sys.exit(main())
