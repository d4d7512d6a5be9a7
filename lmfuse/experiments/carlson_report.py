"""The Carlson et al. 2018 table's outputs.

    <results>/carlson_table.md   per row and system: test BLEU, PINC, chrF, the copy-the-source
                                 baseline's BLEU and PINC, the choice (checkpoint, λ) and its
                                 validation BLEU, wall time; budget, date, device, signatures,
                                 the command, the shared models and each cell's commands
    <results>/carlson_table.csv  the same, one row per cell (failed cells: status, error, no
                                 numbers), with the signature, device, budget and date per row
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmfuse.experiments.ledger import OK, CellRecord
from lmfuse.experiments.report_parts import (
    commands_lines,
    csv_text,
    fmt,
    header_lines,
    not_finished,
    score,
    shared_models_lines,
)
from lmfuse.experiments.runner import ReportInput

NAME = "carlson_table"
COLUMNS = ("row", "source", "target", "method", "status", "step", "lambda", "test_bleu",
           "test_pinc", "test_chrf", "copy_bleu", "copy_pinc", "val_bleu", "lm_perplexity",
           "test_sentences", "wall_seconds", "bleu_signature", "device", "budget", "date",
           "error", "commands")
SYSTEMS = {"none": "seq2seq", "shallow": "seq2seq + LM (shallow fusion)"}


def write_report(report: ReportInput, task: str) -> list[Path]:
    """Writes carlson_table.md and .csv; returns their paths."""
    out = report.results_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.csv"]
    rows = [cell_row(r, report) for r in report.records]
    paths[0].write_text(markdown(report, task), encoding="utf-8")
    paths[1].write_text(csv_text(COLUMNS, rows), encoding="utf-8")
    return paths


def cell_row(record: CellRecord, report: ReportInput) -> dict[str, str]:
    v = record.values
    row = {**record.labels, "status": record.status, "error": record.error,
           "budget": report.experiment.budget, "date": report.date,
           "wall_seconds": round(record.seconds + v.get("attributed_seconds", 0.0), 1)}
    if record.status == OK:
        test = v["test"]
        row.update(step=v["step"], val_bleu=v["val"]["bleu"], test_bleu=test["bleu"],
                   test_pinc=test["pinc"], test_chrf=test["chrf"], copy_bleu=test["copy_bleu"],
                   copy_pinc=test["copy_pinc"], lm_perplexity=v["lm_perplexity"],
                   test_sentences=test["num_sentences"], bleu_signature=v["bleu_signature"],
                   device=v["device"], commands=" && ".join(v["commands"]))
        row["lambda"] = v["lambda"]
    return {k: fmt(row.get(k)) for k in COLUMNS}


def markdown(report: ReportInput, task: str) -> str:
    settings = report.experiment.settings
    lines = [
        f"# Carlson et al. 2018 rows, with and without LM fusion "
        f"({report.experiment.budget} budget)",
        "",
        f"- Task: {task}",
        *header_lines(report),
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
        head = f"| {_row_name(record.labels)} | {_system(record.labels['method'])} "
        if record.status != OK:
            lines.append(head + f"| {not_finished(record)} | | | | | | | | |")
            continue
        v = record.values
        choice = f"step {v['step']}" + (f", λ {v['lambda']:g}" if v["lambda"] is not None else "")
        cells = [choice, *(score(record, "test", k) for k in
                           ("bleu", "pinc", "chrf", "copy_bleu", "copy_pinc")),
                 score(record, "val", "bleu"),
                 f"{v['lm_perplexity']:.2f}" if v["lm_perplexity"] is not None else "",
                 fmt(round(record.seconds + v.get("attributed_seconds", 0.0), 1))]
        lines.append(head + "| " + " | ".join(cells) + " |")
    lines.append("")
    lines += shared_models_lines(report)
    lines += commands_lines(report)
    return "\n".join(lines)


def _public_note(report: ReportInput) -> list[str]:
    """Public rows pair each verse with every other version, verse by verse: a subset of
    the first N pairs holds fewer verses than N."""
    public = any(r.labels["source"] == "public" for r in report.records)
    if not public or not report.experiment.settings.get("eval_sentences"):
        return []
    return ["- public rows: their evaluation pairs come verse by verse, each verse paired from "
            "every other English version, so the first N pairs cover about N/6 verses."]


def _row_name(labels: dict[str, Any]) -> str:
    source, target = labels["source"], labels["target"]
    return f"{source if source == 'public' else source.upper()}→{target.upper()}"


def _system(method: str) -> str:
    return SYSTEMS.get(method, method)
