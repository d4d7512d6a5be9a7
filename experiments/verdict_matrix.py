"""The fusion study's answer in one table: every method's test-BLEU difference to its own
`none`, per backbone and parallel-data fraction, with the verdict over seeds.

    python experiments/verdict_matrix.py experiments/results/fusion_study_ledger.json \
        experiments/results/fusion_controls/fusion_study_ledger.json \
        experiments/results/fusion_1pct_s2/fusion_study_ledger.json \
        experiments/results/fusion_100pct_s0/fusion_study_ledger.json \
        --write experiments/results/fusion_study_findings.md

Reads the ledgers the study writes beside its report (`<results>/fusion_study_ledger.json`).
A cell (fraction, backbone, method, seed) comes from the first ledger that holds it, so a
sub-study fills the main table's gaps without replacing its rows; an entry marks the seeds that
came from a later ledger. Each seed's difference is to the `none` of its own ledger, the model
that cell fused or started from, and the verdict is the report's rule (`protocol.verdict`).
The ledgers must share their evaluation settings (the same validation and test samples).
`--write FILE` replaces the generated block in FILE (`<!-- verdict_matrix:begin fusion_study -->`
to its end marker; made at the end of the section "## The answer so far" if absent); without
it the table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_train import write_generated_block
from fusion_study import BACKBONES, METHODS, SAME_LM_TWICE, not_applicable
from lib.tables import p_value

from lmfuse.errors import LmfuseError
from lmfuse.evaluate import protocol

MARKS = ("", "†", "‡", "§", "¶")  # the ledger a seed came from, after the first
SECTION = "## The answer so far"
Key = tuple[float, str, str, int]  # fraction, backbone, method, seed


def read_ledger(path: Path) -> dict[str, Any]:
    fix = "pass the <results>/fusion_study_ledger.json a study run wrote"
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LmfuseError(f"cannot read {path} ({error}): {fix}") from error
    if not (isinstance(ledger, dict) and isinstance(ledger.get("cells"), dict)
            and isinstance(ledger.get("identity"), dict) and "settings" in ledger["identity"]):
        raise LmfuseError(f"{path} is not a study ledger: {fix}")
    return ledger


def merged_cells(ledgers: Sequence[dict[str, Any]]) -> dict[Key, tuple[int, dict[str, Any]]]:
    """Each finished cell from the first ledger holding it: key -> (ledger index, record);
    the ledgers must share their evaluation settings."""
    settings = [ledger["identity"]["settings"] for ledger in ledgers]
    if any(s != settings[0] for s in settings):
        raise LmfuseError("the ledgers were scored with other evaluation settings "
                          f"({settings}): their differences are not comparable")
    cells: dict[Key, tuple[int, dict[str, Any]]] = {}
    for index, ledger in enumerate(ledgers):
        for record in ledger["cells"].values():
            if record.get("status") != "ok":
                continue
            labels = record["labels"]
            key = (float(labels["fraction"]), labels["backbone"], labels["method"],
                   int(labels["seed"]))
            cells.setdefault(key, (index, record))
    return cells


def difference(record: dict[str, Any]) -> tuple[float, float | None]:
    """Test BLEU minus its own `none`'s, and the paired bootstrap's p (1 for the same output)."""
    against = record["values"]["confidence"]["none"]
    return against["system"]["bleu"] - against["baseline"]["bleu"], p_value(against)


def entry(seeds: list[tuple[int, int, dict[str, Any]]], method: str) -> str:
    """One matrix entry from (seed, ledger index, record) of one method in one slice."""
    per_ledger = [sum(i == index for _, i, _ in seeds) for index in range(len(MARKS))]
    count = " + ".join(f"{n}{MARKS[i]}" for i, n in enumerate(per_ledger) if n)
    if method == "none":
        mean = protocol.mean_sd([r["values"]["test"]["bleu"] for _, _, r in seeds])[0]
        return f"{mean:.2f} ({count})"
    differences = [difference(record) for _, _, record in seeds]
    mean = protocol.mean_sd([d for d, _ in differences])[0]
    verdict = protocol.verdict([d for d, _ in differences], [p for _, p in differences])
    word = {"gain": " **gain**", "loss": " **loss**", protocol.ONE_SEED: ""}.get(verdict,
                                                                              " no verdict")
    return f"{mean:+.2f}{word} ({count})"


def matrix(cells: dict[Key, tuple[int, dict[str, Any]]]) -> list[str]:
    """The table's lines: a column per backbone and fraction that has cells, a row per
    method that has any."""
    fractions = sorted({key[0] for key in cells})
    columns = [(b, f) for b in BACKBONES for f in fractions
               if any(key[:2] == (f, b) for key in cells)]
    head = [f"{b} {f:g}%" for b, f in columns]
    lines = [f"| method | {' | '.join(head)} |", f"|---|{'---:|' * len(columns)}"]
    for method in METHODS:
        row = []
        for backbone, fraction in columns:
            seeds = sorted((key[3], index, record) for key, (index, record) in cells.items()
                           if key[:3] == (fraction, backbone, method))
            if seeds:
                row.append(entry(seeds, method))
            else:
                row.append("N/A" if not_applicable(fraction, method) else "–")
        if any(e != "–" for e in row):
            name = "none (test BLEU)" if method == "none" else method
            lines.append(f"| {name} | {' | '.join(row)} |")
    return lines


def block(paths: Sequence[Path], cells: dict[Key, tuple[int, dict[str, Any]]],
          settings: dict[str, Any]) -> str:
    """The generated block: the legend, the table, where its cells came from, the command."""
    test = settings.get("test_sample")
    test = f"a seeded sample of {test:,} test verses" if test else "the whole test split"
    sources = [f"{MARKS[i] or 'unmarked'}: `{path.as_posix()}`" for i, path in enumerate(paths)]
    command = ("    python experiments/verdict_matrix.py "
               + " \\\n        ".join(p.as_posix() for p in paths))
    return "\n".join([
        "Each entry: the mean over seeds of test BLEU minus the same seed's `none` "
        f"({test}), the verdict, and (in brackets) the seeds run, by the ledger they came "
        f"from. **gain** / **loss**: that sign with p < {protocol.SIGNIFICANCE:g} (paired "
        f"bootstrap) on every seed, at least {protocol.MIN_SEEDS} seeds; no verdict: "
        f"{protocol.MIN_SEEDS} or more seeds without that; no word: one seed, not called. "
        f"–: not run. N/A: density ratio with all the pairs ({SAME_LM_TWICE}). The `none` row "
        f"is its test BLEU (copying the source: {copy_bleu(cells):.2f}).", "",
        *matrix(cells), "",
        "Where each seed's cells came from (the first ledger that has them): "
        + "; ".join(sources) + ".", "",
        command, ""])


def copy_bleu(cells: dict[Key, tuple[int, dict[str, Any]]]) -> float:
    """Copying the source's test BLEU (every ledger's test sample is the same)."""
    record = next(record for _, record in cells.values())
    return record["values"]["confidence"]["copy"]["baseline"]["bleu"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ledgers", nargs="+", type=Path, help="study ledgers, first wins")
    parser.add_argument("--write", type=Path, default=None,
                        help="markdown file whose generated block the table replaces")
    args = parser.parse_args(argv)
    try:
        if len(args.ledgers) > len(MARKS):
            raise LmfuseError(f"{len(args.ledgers)} ledgers: at most {len(MARKS)} can be told "
                              "apart in one table")
        ledgers = [read_ledger(path) for path in args.ledgers]
        cells = merged_cells(ledgers)
        if not cells:
            raise LmfuseError("the ledgers hold no finished cell: run the study first")
    except LmfuseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = block(args.ledgers, cells, ledgers[0]["identity"]["settings"])
    if args.write:
        write_generated_block(args.write, SECTION, "verdict_matrix", "fusion_study", text)
        print(f"wrote the verdict table into {args.write}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
