"""Paired comparison of finished study cells on their shared test sample.

    python experiments/compare_cells.py --workdir workdirs/fusion_study_cpu3 \
        --baseline f100-transformer-deep_no_lm-s1 f100-transformer-deep-s1 f100-transformer-none-s1
    python experiments/compare_cells.py --workdir workdirs/fusion_study_cpu3 \
        --method deep --control deep_no_lm --output experiments/results/fusion_study_deep_vs_control.md
    python experiments/compare_cells.py --workdir workdirs/fusion_study_cpu3 \
        --method deep --control deep_no_lm --fractions 100 --backbones rnn

The report compares every cell with its own `none`; this compares any cells with any one of
them (a method with its control, two fusions), with sacrebleu's paired bootstrap under the
protocol's seed (`lmfuse.evaluate.protocol.paired_bootstrap`), from the test outputs the cells
wrote (`cells/<key>.test.hyp`) and the test sample they were scored on.

`--method M --control C` pairs every cell of method M with the cell of method C that has the
same other labels (fraction, backbone, seed), and calls a verdict per fraction and backbone
over the seeds with the report's rule (`protocol.verdict`). A pair is compared only when both
cells' outputs give their stored test BLEU, so a model re-made from its commands must have
reproduced its scored outputs; a pair that cannot be compared is listed with the reason.
`--fractions` / `--backbones` keep only the method cells with those labels (a slice whose
models were trained again, beside a table of the others).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redraw_confidence import cell_keys, find_test_set, read_lines, same_score

from lmfuse.errors import LmfuseError
from lmfuse.evaluate import protocol
from lmfuse.evaluate.protocol import paired_bootstrap, sacrebleu_seed

GROUP = ("fraction", "backbone")  # a control verdict is called over seeds within these labels


def compare_cells(workdir: Path, baseline: str, others: list[str]) -> dict[str, dict]:
    """{cell: paired-bootstrap report against `baseline`} over the cells' test sample."""
    keys = [baseline, *others]
    outputs, references = {}, None
    for key in keys:
        hyp, record = workdir / "cells" / f"{key}.test.hyp", workdir / "cells" / f"{key}.json"
        if not hyp.is_file() or not record.is_file():
            raise LmfuseError(f"cell {key!r} has no test outputs in {workdir}/cells; run it first")
        values = json.loads(record.read_text(encoding="utf-8"))["values"]
        test = find_test_set(workdir, values)
        if test is None:
            raise LmfuseError(f"cell {key!r}: its test sample is not in {workdir}/eval")
        if references is not None and list(test.references) != references:
            raise LmfuseError(f"cell {key!r} was scored on another test sample than {baseline!r}")
        references = list(test.references)
        outputs[key] = read_lines(hyp)
    seed = json.loads((workdir / "cells" / f"{baseline}.json").read_text(encoding="utf-8"))
    seed = seed["values"]["eval_sets"]["test"]["seed"]
    return paired_bootstrap(outputs, references, baseline, seed=sacrebleu_seed(seed))


def read_records(workdir: Path) -> dict[str, dict[str, Any]]:
    cells = workdir / "cells"
    return {key: json.loads((cells / f"{key}.json").read_text(encoding="utf-8"))
            for key in cell_keys(cells)}


def control_pairs(records: dict[str, dict[str, Any]], method: str, control: str,
                  where: dict[str, Sequence[Any]] | None = None
                  ) -> list[tuple[str, str | None]]:
    """(method cell, its control cell or None) for every finished cell of `method` (whose
    labels are among `where`'s values, if given): the control is the cell of `control` whose
    other labels are the same."""
    where = {name: values for name, values in (where or {}).items() if values}
    by_labels = {json.dumps({**r["labels"], "method": None}, sort_keys=True): key
                 for key, r in records.items()
                 if r["labels"].get("method") == control and r["status"] == "ok"}
    return [(key, by_labels.get(json.dumps({**r["labels"], "method": None}, sort_keys=True)))
            for key, r in records.items()
            if r["labels"].get("method") == method and r["status"] == "ok"
            and all(r["labels"].get(name) in values for name, values in where.items())]


def compare_pair(workdir: Path, records: dict[str, dict[str, Any]], key: str,
                 control_key: str | None) -> dict[str, Any]:
    """The paired bootstrap of one method cell against its control, or why it cannot run."""
    if control_key is None:
        return {"why": "its control has not run"}
    outputs = {}
    for cell in (key, control_key):
        hyp = workdir / "cells" / f"{cell}.test.hyp"
        if not hyp.is_file():
            return {"why": f"{cell} kept no test outputs"}
        outputs[cell] = read_lines(hyp)
    values = records[key]["values"]
    test = find_test_set(workdir, values)
    if test is None:
        return {"why": f"the test sample of {key} is not in the workdir's eval folder"}
    for cell in (key, control_key):
        if not same_score(records[cell]["values"]["test"]["bleu"], outputs[cell],
                          test.references):
            return {"why": f"{cell}'s kept outputs do not give its stored test BLEU"}
    seed = sacrebleu_seed(values["eval_sets"]["test"]["seed"])
    report = paired_bootstrap(outputs, test.references, control_key, seed=seed)
    return {"method": report[key], "control": report[control_key]}


def compare_with_control(workdir: Path, method: str, control: str,
                         where: dict[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """One row per cell of `method` (with `where`'s labels): its labels, and its comparison
    with its control."""
    records = read_records(workdir)
    return [{"key": key, "control_key": control_key, "labels": records[key]["labels"],
             **compare_pair(workdir, records, key, control_key)}
            for key, control_key in control_pairs(records, method, control, where)]


def control_table(rows: Sequence[dict[str, Any]], method: str, control: str) -> list[str]:
    """Markdown: each pair's BLEU, Δ and p, then a verdict per fraction and backbone."""
    lines = [f"| fraction % | backbone | seed | {method} | {control} | Δ | p | chrF Δ | p |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: tuple(r["labels"].get(k, 0) for k in (*GROUP, "seed"))):
        labels = row["labels"]
        head = f"| {labels['fraction']:g} | {labels['backbone']} | {labels.get('seed', 0)} |"
        if "why" in row:
            lines.append(f"{head} not compared: {row['why']} | | | | | | |")
            continue
        groups.setdefault(tuple(labels[k] for k in GROUP), []).append(row)
        ours, theirs = row["method"], row["control"]
        lines.append(f"{head} {ours['bleu']:.2f} | {theirs['bleu']:.2f} | "
                     f"{ours['bleu'] - theirs['bleu']:+.2f} | {ours['bleu_p']:.3f} | "
                     f"{ours['chrf'] - theirs['chrf']:+.2f} | {ours['chrf_p']:.3f} |")
    lines += ["", f"Over seeds ({method} against {control}; the report's rule: a gain or loss "
              f"only when at least {protocol.MIN_SEEDS} seeds ran and every seed has that sign "
              f"with p < {protocol.SIGNIFICANCE}):", "",
              "| fraction % | backbone | seeds | Δ mean | verdict |", "|---:|---|---:|---:|---|"]
    for (fraction, backbone), members in groups.items():
        deltas = [r["method"]["bleu"] - r["control"]["bleu"] for r in members]
        verdict = protocol.verdict(deltas, [r["method"]["bleu_p"] for r in members])
        lines.append(f"| {fraction:g} | {backbone} | {len(members)} | "
                     f"{protocol.mean_sd(deltas)[0]:+.2f} | {verdict} |")
    return lines


def write_control_table(path: Path, lines: Sequence[str], command: str, method: str,
                        control: str) -> None:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"# {method} against its control, {control}", "",
              f"- Command: `{command}`", f"- Date: {date}",
              "- Each pair: the two cells' test outputs on their shared test sample, "
              "sacrebleu's paired bootstrap (1000 resamples, the evaluation seed); Δ is "
              f"{method} minus {control}; p is the method's.", ""]
    path.write_text("\n".join([*header, *lines]) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the study's workdir")
    parser.add_argument("--baseline", help="the cell the others are compared with")
    parser.add_argument("cells", nargs="*", help="cell keys, as in the ledger")
    parser.add_argument("--method", help="with --control: every cell of this method ...")
    parser.add_argument("--control", help="... against the cell of this method with its labels")
    parser.add_argument("--output", type=Path, help="with --control: write the table here")
    parser.add_argument("--fractions", type=float, nargs="+", default=(),
                        help="with --control: only the cells of these fractions (%%)")
    parser.add_argument("--backbones", nargs="+", default=(),
                        help="with --control: only the cells of these backbones")
    args = parser.parse_args(argv)
    if bool(args.method) != bool(args.control) or bool(args.control) == bool(args.baseline):
        parser.error("give either --baseline and cells, or --method and --control")
    if (args.fractions or args.backbones) and not args.control:
        parser.error("--fractions and --backbones choose the pairs of --method and --control")
    if args.control:
        where = {"fraction": args.fractions, "backbone": args.backbones}
        try:
            rows = compare_with_control(args.workdir, args.method, args.control, where)
        except LmfuseError as error:
            print(f"compare_cells: error: {error}", file=sys.stderr)
            return 2
        lines = control_table(rows, args.method, args.control)
        print("\n".join(lines))
        if args.output:
            command = "python experiments/compare_cells.py " + " ".join(
                argv if argv is not None else sys.argv[1:])
            write_control_table(args.output, lines, command, args.method, args.control)
        return 0
    if not args.cells:
        parser.error("name the cells to compare with --baseline")
    try:
        report = compare_cells(args.workdir, args.baseline, args.cells)
    except LmfuseError as error:
        print(f"compare_cells: error: {error}", file=sys.stderr)
        return 2
    print(f"| cell | BLEU | ± | Δ {args.baseline} | p | chrF | p |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = report[args.baseline]["bleu"]
    for key, row in report.items():
        p_bleu = "" if row["bleu_p"] is None else f"{row['bleu_p']:.3f}"
        p_chrf = "" if row["chrf_p"] is None else f"{row['chrf_p']:.3f}"
        print(f"| {key} | {row['bleu']:.2f} | {row['bleu_ci']:.2f} | {row['bleu'] - base:+.2f} | "
              f"{p_bleu} | {row['chrf']:.2f} | {p_chrf} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
