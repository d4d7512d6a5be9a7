"""Pieces of study reports: number formatting, csv, and the markdown sections every report
has (evaluation, signatures, device, failed cells, shared models, commands).

Cell values are the ones `scoring.finish` returns.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from lib.runner import FAILED, OK, CellRecord, Report


def fmt(value: Any) -> str:
    """A table cell: '' for None, yes/no, floats without trailing zeros (5.0 -> '5')."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def csv_text(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def score(record: CellRecord, split: str, key: str) -> str:
    """A score of a finished cell, two decimals."""
    return f"{record.values[split][key]:.2f}"


def not_finished(record: CellRecord) -> str:
    """What a table shows for a cell without results ('|' would split the row)."""
    what = f"failed: {record.error}" if record.status == FAILED else "not run yet"
    return what.replace("|", "/")


def first_values(report: Report) -> dict[str, Any]:
    """A finished cell's values ({} if none): what all cells share (sizes, signatures)."""
    ok = [r for r in report.records if r.status == OK]
    return ok[0].values if ok else {}


def evaluation_text(report: Report) -> str:
    """Which validation and test sentences the scores are on."""
    sizes = first_values(report).get("eval_sentences", {})
    limit = report.study.settings.get("eval_sentences", 0)
    if not limit:
        return "the full validation and test splits"
    return (f"the first {limit} verses of each split in file order (validation "
            f"{sizes.get('validation', '?')}, test {sizes.get('test', '?')} sentences)")


def header_lines(report: Report) -> list[str]:
    """Command, date, devices, evaluation and signatures, as markdown list items."""
    first = first_values(report)
    return [
        f"- Command: `{report.command}`",
        f"- Date: {report.date}; device: {devices(report)}",
        f"- Evaluation: {evaluation_text(report)}; beam size {first.get('beam_size', '?')}",
        f"- BLEU signature: `{first.get('bleu_signature', 'n/a')}`",
        f"- chrF signature: `{first.get('chrf_signature', 'n/a')}`",
    ]


def devices(report: Report) -> str:
    """The devices the finished cells ran on (a resumed grid may span machines), else this
    run's."""
    from lib.scoring import device_description

    seen = [r.values["device"] for r in report.records if r.status == OK and "device" in r.values]
    return "; ".join(dict.fromkeys(seen)) if seen else device_description()


def shared_models_lines(report: Report) -> list[str]:
    """The shared models of <workdir>/artifacts.json: workdir, training time, LM perplexity,
    and the command that trains each."""
    path = report.context.workdir / "artifacts.json"
    if not path.is_file():
        return []
    table = json.loads(path.read_text(encoding="utf-8"))
    lines = ["## Shared models", "", "| workdir | trained in s | validation ppl | command |",
             "|---|---:|---:|---|"]
    for name, entry in sorted(table.items()):
        ppl = entry.get("validation_perplexity")
        lines.append(f"| {name} | {entry.get('train_seconds', '')} | "
                     f"{f'{ppl:.2f}' if ppl else ''} | `{entry.get('command', '')}` |")
    return [*lines, ""]


def commands_lines(report: Report) -> list[str]:
    """Each finished cell's reproducing commands, in order."""
    lines = ["## Commands per cell", ""]
    for record in report.records:
        if record.status == OK:
            lines += [f"{record.key}:", "", "```", *record.values["commands"], "```", ""]
    return lines
