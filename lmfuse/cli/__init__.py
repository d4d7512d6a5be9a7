"""The `lmfuse` command line, one module per subcommand.

    lmfuse data prepare --config C [--data_dir D] [--config.key=value ...]
    lmfuse data show    --config C [--n 3]        [--config.key=value ...]
    lmfuse config  --config C [--json] [--no_check] [--config.key=value ...]
    lmfuse train   --config C --workdir W [--config.key=value ...]   (resumes if W has a checkpoint)
    lmfuse eval    --workdir W [--split validation|test] [--output F.json]
    lmfuse inspect --workdir W
    lmfuse sample  --workdir W --prompt "..." [--max_len N --temperature T --top_k K --beam K ...]
    lmfuse translate --workdir W [--input F | --split test] [--output F] [--beam K]

Studies are scripts: `python experiments/<study>.py --help`.

A user mistake (`LmfuseError`) is printed as one line, `lmfuse: error: ...`, with exit status 2;
so is a command-line mistake argparse finds (`lmfuse eval: error: ...`, without the usage block,
which `--help` prints). Every `--help` shows the options' defaults.
Each subcommand module has `add_parser(subcommands)`, which names its handler: `run(args,
overrides)` for the commands that read a config file, `run(args)` for those that read the
config stored in a workdir.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from typing import NoReturn

from lmfuse.cli import config as config_command
from lmfuse.cli import data, inspect, sample, train, translate
from lmfuse.cli import eval as eval_command
from lmfuse.cli.compilation_cache import enable_compilation_cache
from lmfuse.config import split_override_args
from lmfuse.errors import LmfuseError

SUBCOMMANDS = (data, config_command, train, eval_command, inspect, sample, translate)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows an option's default where it says something: not for a default of None
    (the help text says what happens then), an empty list, or an on/off flag. An option
    without help text gets a line for its default alone."""

    def add_argument(self, action: argparse.Action) -> None:
        if action.help is None and action.option_strings and _says_something(action):
            action = copy.copy(action)  # argparse prints no line for an option without help
            action.help = "(default: %(default)s)"
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        if not _says_something(action):
            return action.help or ""
        return super()._get_help_string(action)


def _says_something(action: argparse.Action) -> bool:
    return not (
        action.default in (None, argparse.SUPPRESS)
        or action.default == []
        or isinstance(action, argparse._StoreConstAction)  # store_true/false and the like
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other user mistake: the usage block it
    prints first would bury the cause. Subparsers inherit the class, and its help formatter,
    which shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="lmfuse",
        description="Train LMs and seq2seq models in JAX/Flax, and fuse them.",
        epilog="Any config key can be overridden with --config.key=value.",
    )
    from lmfuse import __version__

    parser.add_argument("--version", action="version", version=f"lmfuse {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subcommands)
    return parser


def run(argv: Sequence[str]) -> int:
    overrides, rest = split_override_args(argv)
    args = build_parser().parse_args(rest)
    enable_compilation_cache()
    if args.reads_config_file:
        args.handler(args, overrides)
    else:
        if overrides:
            raise LmfuseError(
                f"{args.command} reads the config stored in the workdir; drop {overrides[0]}"
            )
        args.handler(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_logs()
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except LmfuseError as e:
        print(f"lmfuse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmfuse: interrupted", file=sys.stderr)
        return 130


def quiet_library_logs() -> None:
    """Orbax and TFDS log routine notices as absl WARNINGs; keep the terminal for lmfuse."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


__all__ = ["DefaultsHelpFormatter", "OneLineParser", "build_parser", "main", "quiet_library_logs",
           "run"]
