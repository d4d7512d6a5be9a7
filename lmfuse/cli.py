"""The `lmfuse` command line.

    lmfuse data prepare --config C [--data_dir D] [--config.key=value ...]
    lmfuse data show    --config C [--n 3]        [--config.key=value ...]

A user mistake (`LmfuseError`) is printed as one line, `lmfuse: error: ...`, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lmfuse.config import load_config, split_override_args
from lmfuse.errors import LmfuseError


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="config file, e.g. configs/data_bible.py[:variant]"
    )
    parser.add_argument(
        "--data_dir", default=None, help="prepared data directory (default $LMFUSE_DATA_DIR)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmfuse",
        description="Train LMs and seq2seq models in JAX/Flax, and fuse them.",
        epilog="Any config key can be overridden with --config.key=value.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="prepare or inspect datasets and the tokenizer")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser("prepare", help="build datasets and train the tokenizer")
    _config_args(prepare)
    show = data_commands.add_parser("show", help="per-split counts, alignment checks, examples")
    _config_args(show)
    show.add_argument("--n", type=int, default=3, help="examples to print per split")
    return parser


def _load(args: argparse.Namespace, overrides: list[str]):
    config = load_config(args.config, overrides)
    if args.data_dir:
        with config.unlocked():
            config.data.data_dir = args.data_dir
    return config


def run(argv: Sequence[str]) -> int:
    overrides, rest = split_override_args(argv)
    args = build_parser().parse_args(rest)
    if args.command == "data":
        config = _load(args, overrides)  # config errors surface before the heavy imports
        from lmfuse.data import report

        if args.data_command == "prepare":
            report.prepare(config)
        else:
            report.show(config, n=args.n)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except LmfuseError as e:
        print(f"lmfuse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmfuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
