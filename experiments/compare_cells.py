"""Paired comparison of finished study cells on their shared test sample.

    python experiments/compare_cells.py --workdir workdirs/fusion_study_cpu3 \
        --baseline f100-transformer-deep_no_lm-s1 f100-transformer-deep-s1 f100-transformer-none-s1

The report compares every cell with its own `none`; this compares any cells with any one of
them (a method with its control, two fusions), with sacrebleu's paired bootstrap under the
protocol's seed (`lmfuse.evaluate.protocol.paired_bootstrap`), from the test outputs the cells
wrote (`cells/<key>.test.hyp`) and the test sample they were scored on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from redraw_confidence import find_test_set, read_lines

from lmfuse.errors import LmfuseError
from lmfuse.evaluate.protocol import paired_bootstrap, sacrebleu_seed


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="the study's workdir")
    parser.add_argument("--baseline", required=True, help="the cell the others are compared with")
    parser.add_argument("cells", nargs="+", help="cell keys, as in the ledger")
    args = parser.parse_args(argv)
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
