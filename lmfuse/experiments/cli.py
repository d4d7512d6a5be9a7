"""`lmfuse experiment`: run an experiment file's grid, resuming where the workdir left off.

    lmfuse experiment experiments/fusion_ablation.py [--budget cpu|gpu] [--workdir W]
        [--results R] [--set name=value ...] [--config.key=value ...] [--report_only]

`--report_only` runs nothing: it rewrites the tables and plots of the selected cells from the
workdir's ledger, unfinished cells marked "not run yet" (a grid run in parts, with several
`--set` selections, reported as one table).

`--set` changes the experiment's named settings (the file lists them); `--config.key=value`
overrides go to every training run the experiment launches whose config has that key.
"""

from __future__ import annotations

import argparse
import shlex

from lmfuse.experiments.runner import BUDGETS, DEFAULT_RESULTS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("experiment", help="run an experiment grid (resumable)")
    p.add_argument("file", help="experiment file, e.g. experiments/fusion_ablation.py")
    p.add_argument("--budget", default="cpu", choices=BUDGETS,
                   help="cpu: reduced sizes and evaluation subsets; gpu: full configs and splits")
    p.add_argument("--workdir", default=None,
                   help="trained models and the cell ledger (default workdirs/<name>_<budget>)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="tables and plots go here")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                   help="an experiment setting (repeatable), e.g. --set methods=none,shallow")
    p.add_argument("--report_only", action="store_true",
                   help="train and decode nothing: write the report of the finished cells")
    return p


def run(args: argparse.Namespace, overrides: list[str], argv: list[str]) -> int:
    """Exit status 0 when every cell finished, 1 when some failed (each is in the report)."""
    from lmfuse.experiments.ledger import OK
    from lmfuse.experiments.runner import run_experiment
    from lmfuse.experiments.settings import split_assignments

    # The report names the command that runs (or finishes) its cells: without --report_only.
    command = shlex.join(["lmfuse", *(a for a in argv if a != "--report_only")])
    records = run_experiment(args.file, args.budget, args.workdir, args.results,
                             split_assignments(args.settings), overrides, command=command,
                             report_only=args.report_only)
    if args.report_only:
        return 0
    return 0 if all(r.status == OK for r in records) else 1
