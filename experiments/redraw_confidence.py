"""Redraws a study's intervals and p-values from the test outputs its cells wrote.

    python experiments/redraw_confidence.py --workdir workdirs/fusion_study_cpu3           # compare
    python experiments/redraw_confidence.py --workdir workdirs/fusion_study_cpu3 --write   # and keep
    python experiments/fusion_study.py ... --workdir workdirs/fusion_study_cpu3 --report_only

Every finished cell keeps its test hypotheses (`cells/<key>.test.hyp`); its `none` cell (the
same labels, method none) keeps the plain model's, and the evaluation directory keeps the test
sources and references. From those three files this script runs sacrebleu's paired bootstrap
again, with the evaluation seed as the study passes it (`lmfuse.evaluate.protocol`), and
prints each cell's stored and redrawn 95% interval and p-values. `--write` replaces the cell's
`confidence` in the ledger; the study's `--report_only` then rewrites the tables from it.

Nothing is redrawn on outputs that are not the ones scored: the hypotheses must give the
stored BLEU, and the sources the stored copy BLEU, to the fourth decimal, or the cell is left
as it is and said so. A cell whose outputs were not kept (a record rebuilt from a table) keeps
its stored draw.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sacrebleu
from lib.runner import OK, CellRecord, Ledger
from lib.scoring import REPRODUCED, EvalSet, compare


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def same_score(stored: float, lines: Sequence[str], references: Sequence[str]) -> bool:
    return abs(sacrebleu.corpus_bleu(list(lines), [list(references)]).score - stored) < REPRODUCED


def find_test_set(workdir: Path, values: dict[str, Any]) -> EvalSet | None:
    """The test set the cell was scored on: the evaluation files of its name whose copied
    sources give the stored copy BLEU (a study with several tasks keeps one folder each)."""
    described = values["eval_sets"]["test"]
    name = EvalSet(described["split"], described["sample"], described["seed"], (), (), ()).name
    stored = values["confidence"]["copy"]["baseline"]["bleu"]
    for sources_path in sorted(workdir.glob(f"eval/**/{name}.src")):
        sources = read_lines(sources_path)
        references = read_lines(sources_path.with_suffix(".ref"))
        if len(sources) == len(references) and same_score(stored, sources, references):
            return EvalSet(described["split"], described["sample"], described["seed"],
                           (), tuple(sources), tuple(references))
    return None


def plain_key(record: CellRecord, records: dict[str, CellRecord]) -> str | None:
    """The key of the cell's `none` cell: the same labels with method none."""
    wanted = {**record.labels, "method": "none"}
    return next((key for key, other in records.items() if other.labels == wanted), None)


def redraw(workdir: Path, record: CellRecord, records: dict[str, CellRecord]
           ) -> tuple[dict[str, Any] | None, str]:
    """The cell's confidence drawn again from its outputs, or None and why not."""
    values = record.values
    hypotheses_path = workdir / "cells" / f"{record.key}.test.hyp"
    none_key = plain_key(record, records)
    if none_key is None:
        return None, "no none cell with the same labels"
    plain_path = workdir / "cells" / f"{none_key}.test.hyp"
    if not hypotheses_path.is_file() or not plain_path.is_file():
        return None, "its test outputs were not kept"
    test = find_test_set(workdir, values)
    if test is None:
        return None, "no evaluation files give its stored copy BLEU"
    hypotheses, plain = read_lines(hypotheses_path), read_lines(plain_path)
    stored = values["confidence"]["none"]
    if not (same_score(stored["system"]["bleu"], hypotheses, test.references)
            and same_score(stored["baseline"]["bleu"], plain, test.references)):
        return None, "its kept outputs do not give its stored BLEU"
    return compare(hypotheses, plain, test, test.seed), "redrawn"


def brief(confidence: dict[str, Any]) -> str:
    def cell(part: str) -> str:
        system = confidence[part]["system"]
        p = system["bleu_p"]
        return f"± {system['bleu_ci']:.2f} p {'-' if p is None else f'{p:.3f}'}"
    return f"vs none {cell('none')}, vs copy {cell('copy')}"


def cell_keys(cells: Path) -> list[str]:
    """The keys of the cell records in `cells` (other json there, such as a reproducing
    command's scores, is not a record)."""
    def is_record(path: Path) -> bool:
        content = json.loads(path.read_text(encoding="utf-8"))
        return isinstance(content, dict) and content.get("key") == path.stem
    return [path.stem for path in sorted(cells.glob("*.json")) if is_record(path)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a study's workdir")
    parser.add_argument("--write", action="store_true",
                        help="replace each redrawn cell's confidence in the ledger")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    ledger = Ledger(workdir)
    records = {key: record for key in cell_keys(ledger.cells)
               if (record := ledger.read(key)).status == OK and "confidence" in record.values}
    if not records:
        print(f"redraw_confidence: {workdir} holds no finished cells with intervals; pass a "
              "study's --workdir", file=sys.stderr)
        return 2
    changed = 0
    for key, record in records.items():
        confidence, why = redraw(workdir, record, records)
        print(f"{key}: stored {brief(record.values['confidence'])}")
        if confidence is None:
            print(f"{' ' * len(key)}  kept: {why}")
            continue
        print(f"{' ' * len(key)}  redrawn {brief(confidence)}")
        if confidence != record.values["confidence"]:
            changed += 1
            if args.write:
                record.values["confidence"] = confidence
                ledger.write(record)
    print(f"redraw_confidence: {changed} of {len(records)} cells changed"
          + ("; written to the ledger, rerun the study with --report_only" if args.write
             and changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
