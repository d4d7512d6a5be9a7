"""Pieces of study reports: number formatting, csv, and the markdown sections every report
has (evaluation, signatures, device, failed cells, shared models, commands).

Cell values are the ones `scoring.finish` returns.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from lib.runner import FAILED, NOT_APPLICABLE, OK, CellRecord, Report


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
    if record.status == NOT_APPLICABLE:
        what = f"N/A: {record.error}"
    else:
        what = f"failed: {record.error}" if record.status == FAILED else "not run yet"
    return what.replace("|", "/")


def first_values(report: Report) -> dict[str, Any]:
    """A finished cell's values ({} if none): what all cells share (sizes, signatures)."""
    ok = [r for r in report.records if r.status == OK]
    return ok[0].values if ok else {}


def evaluation_text(report: Report) -> str:
    """Which validation and test sentences the scores are on."""
    sets = first_values(report).get("eval_sets", {})
    settings = report.study.settings

    def one(split: str, setting: str) -> str:
        size = settings.get(setting, 0)
        pairs = sets.get(split, {}).get("pairs", "?")
        if not size:
            return f"{split}: the whole split ({pairs} pairs)"
        return (f"{split}: a seeded sample of {pairs} pairs over every book (--{setting} "
                f"{size}, seed {settings.get('sample_seed', 0)})")

    return f"{one('validation', 'val_sample')}; {one('test', 'test_sample')}"


def weights_text(weights: dict[str, float] | None) -> str:
    """A decode-time choice in words: 'λ 0.2, μ 0.1' (all 0: 'no fusion')."""
    if not weights:
        return ""
    symbols = {"lm": "λ", "source_lm": "λ_src", "ilm": "μ", "length_reward": "β"}
    named = [f"{symbols[k]} {v:g}" for k, v in weights.items() if v]
    return ", ".join(named) or "all weights 0 (no fusion)"


def p_value(compared: dict[str, Any]) -> float | None:
    """The paired bootstrap's p of a comparison; 1 where the outputs are identical (sacrebleu
    would give 1/(n+1), counting only resamples that strictly exceed a zero difference)."""
    return 1.0 if compared.get("identical") else compared["system"]["bleu_p"]


def difference(record: CellRecord, baseline: str) -> str:
    """Test BLEU minus the baseline's ('none' or 'copy'), with sacrebleu's paired-bootstrap
    p-value; '' where the cell is its own baseline."""
    compared = record.values.get("confidence", {}).get(baseline)
    if compared is None or compared["system"]["bleu_p"] is None:
        return ""
    if baseline == "none" and record.labels.get("method") == "none":
        return ""
    if compared.get("identical"):
        return "identical output"
    delta = compared["system"]["bleu"] - compared["baseline"]["bleu"]
    return f"{delta:+.2f} (p {compared['system']['bleu_p']:.3f})"


def bleu_interval(record: CellRecord) -> str:
    """Test BLEU with the 95% half-width of sacrebleu's bootstrap."""
    system = record.values["confidence"]["copy"]["system"]
    return f"{system['bleu']:.2f} ± {system['bleu_ci']:.2f}"


def training_cells(record: CellRecord) -> list[str]:
    """Steps, epochs and training seconds of the cell's model ('' where not recorded)."""
    facts = record.values.get("training") or {}
    epochs = facts.get("epochs")
    seconds = facts.get("wall_seconds")
    return [fmt(facts.get("steps")), f"{epochs:.1f}" if epochs is not None else "",
            f"{seconds:.0f}" if seconds is not None else ""]


def protocol_lines(report: Report) -> list[str]:
    """How every number was chosen and compared, as markdown list items."""
    settings = report.study.settings
    grids = [f"{symbol} {{{', '.join(f'{w:g}' for w in (0.0, *settings[name]))}}}"
             for name, symbol in (("lambdas", "λ"), ("source_lm_weights", "λ_src"),
                                  ("ilm_weights", "μ"), ("length_rewards", "β"))
             if name in settings]
    return [
        "- Selection on the validation sample only: each trained model's checkpoint (with "
        "early stopping the best by its stop metric, else the best validation BLEU of "
        "those kept), and each decode-time method's weights over every combination "
        f"its formula has of {'; '.join(grids)}. A candidate with every weight 0 is the plain "
        "model's own decode, so no selected method scores below `none` on validation. Test is "
        "decoded once, at the choice.",
        "- Δ none / Δ copy: test BLEU minus that of the plain model of the same data, backbone "
        "and training seed, and of copying the source; p from sacrebleu's paired bootstrap "
        f"(1000 resamples, seed {settings.get('sample_seed', 0)}); ± is its 95% interval "
        "half-width of the cell's BLEU.",
    ]


def seed_summary_lines(report: Report, group: tuple[str, ...]) -> list[str]:
    """With several seeds: per group (the labels in `group`, seed aside), test BLEU as mean ±
    sd over seeds, and the verdict against `none` (`protocol.verdict`)."""
    from lmfuse.evaluate import protocol

    ok = [r for r in report.records if r.status == OK]
    seeds = sorted({r.labels["seed"] for r in ok})
    if len(seeds) < 2:
        return []
    lines = ["## Over seeds", "",
             f"Seeds {', '.join(map(str, seeds))}. A gain (or loss) is called only when at "
             f"least {protocol.MIN_SEEDS} seeds ran and the difference to `none` has that sign "
             "with p < 0.05 in every seed.", "",
             f"| {' | '.join(group)} | seeds | test BLEU mean ± sd | Δ none mean | verdict |",
             f"|{'---|' * (len(group) + 4)}"]
    keys = list(dict.fromkeys(tuple(r.labels[k] for k in group) for r in ok))
    for key in keys:
        members = [r for r in ok if tuple(r.labels[k] for k in group) == key]
        mean, sd = protocol.mean_sd([r.values["test"]["bleu"] for r in members])
        against = [r.values["confidence"]["none"] for r in members]
        deltas = [c["system"]["bleu"] - c["baseline"]["bleu"] for c in against]
        if key[group.index("method")] == "none":
            verdict, delta = "", ""
        else:
            verdict = protocol.verdict(deltas, [None if c.get("identical") else
                                                c["system"]["bleu_p"] for c in against])
            delta = f"{protocol.mean_sd(deltas)[0]:+.2f}"
        spread = f"{mean:.2f} ± {sd:.2f}" if len(members) > 1 else f"{mean:.2f}"  # no sd of one
        lines.append(f"| {' | '.join(fmt(k) for k in key)} | {len(members)} | "
                     f"{spread} | {delta} | {verdict} |")
    return [*lines, ""]


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
