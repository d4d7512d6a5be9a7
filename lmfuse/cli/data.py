"""`lmfuse data prepare | show`: build the datasets and the tokenizer, or look at them."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from lmfuse.cli.config_args import add_config_args, load


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    data = subcommands.add_parser("data", help="prepare or inspect datasets and the tokenizer")
    data.set_defaults(handler=run, reads_config_file=True)
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser(
        "prepare", help="build datasets, train the tokenizer, store the data report")
    add_config_args(prepare)
    show = data_commands.add_parser(
        "show", help="print the data report prepare stored: per-split counts, alignment "
        "checks, examples")
    add_config_args(show)
    show.add_argument("--n", type=int, default=3, help="examples to print per split")
    return data


def run(args: argparse.Namespace, overrides: Sequence[str]) -> None:
    config = load(args, overrides)  # config errors surface before the heavy imports
    from lmfuse.data import report

    if args.data_command == "prepare":
        report.prepare(config)
    else:
        report.show(config, n=args.n, prepare_command=prepare_command(args, overrides))


def prepare_command(args: argparse.Namespace, overrides: Sequence[str]) -> str:
    """The `lmfuse data prepare` command for the same config, quoted to paste into a shell."""
    data_dir = ["--data_dir", args.data_dir] if args.data_dir else []
    return shlex.join(["lmfuse", "data", "prepare", "--config", args.config, *data_dir, *overrides])
