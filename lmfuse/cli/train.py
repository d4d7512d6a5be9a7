"""`lmfuse train`: train a model from a config file; an existing workdir is resumed."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from lmfuse.cli.config_args import add_config_args, load
from lmfuse.cli.paths import workdir_to_write
from lmfuse.errors import LmfuseError


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommands.add_parser("train", help="train a model; resumes an existing workdir")
    p.set_defaults(handler=run, reads_config_file=True)
    add_config_args(p)
    p.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace, overrides: Sequence[str]) -> None:
    config = load(args, overrides)
    from lmfuse.train.trainer import check_config

    # Config and workdir first: a refused run creates no workdir and prepares no data.
    check_config(config)
    from lmfuse.evaluate.validation import translation_hook

    # An encoder-decoder's evaluations also decode a validation sample: BLEU and chrF curves.
    extra_eval = translation_hook(config)
    workdir_to_write(args.workdir)
    check_workdir_config(args.workdir, config)
    from lmfuse.train.loop import train

    train(config, args.workdir, progress=not args.no_progress, extra_eval=extra_eval)


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Resuming with a different model would fail deep inside Orbax; say so up front."""
    if not (Path(workdir) / "checkpoints").is_dir():
        return
    from lmfuse.train.workdir import load_workdir_config

    try:
        stored = load_workdir_config(workdir)
    except LmfuseError:
        return  # no finished checkpoint yet: start fresh
    for key in sorted(set(stored.model.keys()) | set(config.model.keys())):
        if stored.model.get(key) != config.model.get(key):
            raise LmfuseError(
                f"workdir {workdir} holds a model with model.{key}={stored.model.get(key)!r}, "
                f"but the config says {config.model.get(key)!r}; use a fresh --workdir"
            )
