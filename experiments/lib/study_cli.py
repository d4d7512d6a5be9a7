"""A study script's command line: --budget, --workdir, --results, --report_only, the evaluation
protocol's flags, and --config.key=value overrides (for every training run), plus the script's
own settings. `main` runs the study the script builds from them (`lib.runner.run_study`).

    parser = study_cli.study_parser('fusion_study', __doc__)
    study_cli.add_protocol_flags(parser, PROTOCOL, ('lambdas',))
    sys.exit(study_cli.main(parser, make_study))
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lib.runner import BUDGETS, DEFAULT_RESULTS, FAILED, CellRecord, Study, run_study
from lmfuse.config import split_override_args
from lmfuse.errors import LmfuseError


def study_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The options every study has; the script adds its settings."""
    parser = argparse.ArgumentParser(
        prog=f"{name}.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--config.key=value overrides go to every training run whose config has the key.",
    )
    parser.add_argument("--budget", default="cpu", choices=BUDGETS,
                        help="cpu: reduced sizes and evaluation subsets; gpu: full configs and "
                             "splits (default cpu)")
    parser.add_argument("--workdir", default=None,
                        help=f"trained models and the cell ledger (default workdirs/{name}_<budget>)")
    parser.add_argument("--results", default=DEFAULT_RESULTS,
                        help=f"tables and plots go here (default {DEFAULT_RESULTS})")
    parser.add_argument("--report_only", action="store_true",
                        help="train and decode nothing: write the report of the finished cells")
    return parser


def add_protocol_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any],
                       weights: Sequence[str]) -> None:
    """The evaluation protocol's settings (`lmfuse.evaluate.protocol`): the decode-time weight
    grids named in `weights` (0 is always added), the seeded validation and test samples, the
    training seeds, and the checkpoints kept per model. Help texts show `defaults` (the
    budget's, {name: value or {budget: value}})."""
    def shown(name: str) -> str:
        value = defaults[name]
        if isinstance(value, dict):
            return ", ".join(f"{budget} {_words(v)}" for budget, v in value.items())
        return _words(value)

    grids = {
        "lambdas": "λ, the target LM's weight",
        "source_lm_weights": "λ_src, density ratio's source-LM weight",
        "ilm_weights": "μ, ILME's internal-LM weight",
        "length_rewards": "β, the reward per output token",
    }
    for name in weights:
        parser.add_argument(f"--{name}", nargs="*", type=float, default=None, metavar="W",
                            help=f"grid of {grids[name]}, chosen on validation; 0 is always "
                                 f"added (default: {shown(name)})")
    parser.add_argument("--val_sample", type=int, default=None, metavar="N",
                        help="validation pairs every choice is made on: a seeded sample over "
                             f"every book, 0: the whole split (default: {shown('val_sample')})")
    parser.add_argument("--test_sample", type=int, default=None, metavar="N",
                        help="test pairs scored: a seeded sample over every book, 0: the "
                             f"whole split (default: {shown('test_sample')})")
    parser.add_argument("--sample_seed", type=int, default=None,
                        help="seed of both samples and of the paired bootstrap (default: "
                             f"{shown('sample_seed')})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="training seeds of every encoder-decoder; several are summarised "
                             f"as mean ± sd (default: {shown('seeds')})")
    parser.add_argument("--checkpoints", type=int, default=None,
                        help="checkpoints kept per encoder-decoder, chosen among on validation "
                             f"(default: {shown('checkpoints')})")


def _words(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return str(value)


def check_protocol(settings: dict[str, Any]) -> None:
    """The protocol's settings are usable: samples >= 0, weights >= 0, seeds distinct."""
    for name in ("val_sample", "test_sample"):
        if settings[name] < 0:
            raise LmfuseError(f"--{name}={settings[name]} must be >= 0 (0: the whole split)")
    for name in ("lambdas", "source_lm_weights", "ilm_weights"):
        negative = [w for w in settings.get(name, ()) if w < 0]
        if negative:
            raise LmfuseError(f"--{name} {negative[0]:g}: LM weights are >= 0 (each term's sign "
                              "is the method's)")
    if len(set(settings["seeds"])) != len(settings["seeds"]):
        raise LmfuseError(f"--seeds {' '.join(map(str, settings['seeds']))} repeats a seed")
    check_at_least(settings, {"checkpoints": 1})


def settings_from(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Each setting as given on the command line, else its default; lists become tuples."""
    settings = {}
    for name, default in defaults.items():
        value = getattr(args, name)
        value = default if value is None else value
        settings[name] = tuple(value) if isinstance(value, list) else value
    return settings


def check_at_least(settings: dict[str, Any], least: dict[str, int]) -> None:
    """Each named numeric setting is at least its bound."""
    for name, bound in least.items():
        if settings[name] < bound:
            raise LmfuseError(f"--{name}={settings[name]} must be at least {bound}")


def main(parser: argparse.ArgumentParser, make_study: Callable[[argparse.Namespace], Study],
         argv: Sequence[str] | None = None) -> int:
    """Runs a study from its command line. Exit status 0 when every cell finished, 1 when some
    failed (each is in the report), 2 for a user mistake (one line on stderr)."""
    from lmfuse.cli import quiet_library_logs
    from lmfuse.cli.compilation_cache import enable_compilation_cache

    quiet_library_logs()
    enable_compilation_cache()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        records, report_only = run_command_line(parser, make_study, argv)
    except LmfuseError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0 if report_only or all(r.status != FAILED for r in records) else 1


def run_command_line(parser: argparse.ArgumentParser,
                     make_study: Callable[[argparse.Namespace], Study],
                     argv: Sequence[str]) -> tuple[list[CellRecord], bool]:
    """(records, report_only) of a study's command line; user mistakes raise LmfuseError."""
    overrides, rest = split_override_args(argv)
    args = parser.parse_args(rest)
    study = make_study(args)
    # The report names the command that runs (or finishes) its cells: without --report_only.
    command = shlex.join(["python", f"experiments/{study.name}.py",
                          *(a for a in argv if a != "--report_only")])
    records = run_study(study, args.workdir, args.results, overrides, command, args.report_only)
    return records, args.report_only
