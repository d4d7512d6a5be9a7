"""`lmfuse config`: print the config as `lmfuse train` would resolve it, and check it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lmfuse.cli.config_args import add_config_args, load


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommands.add_parser(
        "config", help="print the resolved config (file, variant, overrides), checked as train is")
    p.set_defaults(handler=run, reads_config_file=True)
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of ml_collections' text")
    p.add_argument("--no_check", action="store_true",
                   help="skip train's config checks (they import JAX, and a fusion config's "
                        "need its base workdirs)")
    return p


def run(args: argparse.Namespace, overrides: Sequence[str]) -> None:
    config = load(args, overrides)  # what `lmfuse train` loads, --data_dir included
    if not args.no_check:
        from lmfuse.train.trainer import check_config

        check_config(config)  # train's checks that need no data: what train refuses fails here
    text = config.to_json(indent=2) if args.json else str(config)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
