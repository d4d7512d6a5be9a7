"""What the subcommands that read a config file share: --config, --data_dir, and loading."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import ml_collections

from lmfuse.config import load_config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="config file, e.g. configs/data_bible.py[:variant]"
    )
    parser.add_argument(
        "--data_dir", default=None,
        help="prepared data directory (default: $LMFUSE_DATA_DIR, else ~/.cache/lmfuse)"
    )


def load(args: argparse.Namespace, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """The config file with its --config overrides, and --data_dir if given."""
    config = load_config(args.config, overrides)
    if args.data_dir:
        with config.unlocked():
            config.data.data_dir = args.data_dir
    return config
