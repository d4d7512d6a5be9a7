"""The `lmfuse` command line.

    lmfuse data prepare --config C [--data_dir D] [--config.key=value ...]
    lmfuse data show    --config C [--n 3]        [--config.key=value ...]
    lmfuse train   --config C --workdir W [--config.key=value ...]   (resumes if W has a checkpoint)
    lmfuse eval    --workdir W [--split validation|test]
    lmfuse inspect --workdir W
    lmfuse sample  --workdir W --prompt "..." [--max_len N --temperature T --top_k K --beam K ...]
    lmfuse translate --workdir W [--input F | --split test] [--output F] [--beam K]
    lmfuse experiment experiments/E.py [--budget cpu|gpu] [--workdir W] [--results R]
                      [--set name=value ...] [--config.key=value ...] [--report_only]
                      (resumable grid; --report_only: only rewrite its tables)

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

    train = commands.add_parser("train", help="train a model; resumes an existing workdir")
    _config_args(train)
    train.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    train.add_argument("--no_progress", action="store_true", help="hide the progress bar")

    evaluate = commands.add_parser(
        "eval", help="perplexity of a trained workdir (seq2seq: also BLEU, chrF, ROUGE-L, PINC)"
    )
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", default="validation", choices=("validation", "test"))
    evaluate.add_argument("--beam", type=int, default=0, help="seq2seq: beam size (0: config)")

    inspect = commands.add_parser("inspect", help="step, parameter counts, shapes, digest")
    inspect.add_argument("--workdir", required=True)

    from lmfuse.decode import cli_sample, cli_translate

    cli_sample.add_parser(commands)
    cli_translate.add_parser(commands)
    from lmfuse.experiments import cli as cli_experiment

    cli_experiment.add_parser(commands)
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
    elif args.command == "train":
        config = _load(args, overrides)
        _check_workdir_config(args.workdir, config)
        from lmfuse.train.loop import train

        train(config, args.workdir, progress=not args.no_progress)
    elif args.command == "experiment":  # its --config overrides go to every run it trains
        from lmfuse.experiments import cli as cli_experiment

        return cli_experiment.run(args, overrides, list(argv))  # 1 if a cell failed
    elif args.command in ("sample", "translate"):
        if overrides:
            raise LmfuseError(
                f"{args.command} reads the config stored in the workdir; drop {overrides[0]}"
            )
        from lmfuse.decode import cli_sample, cli_translate

        (cli_sample if args.command == "sample" else cli_translate).run(args)
    else:
        if overrides:
            raise LmfuseError(f"{args.command} reads the config stored in the workdir; drop {overrides[0]}")
        from lmfuse import commands as workdir_commands

        getattr(workdir_commands, args.command)(args)
    return 0


def _check_workdir_config(workdir: str, config) -> None:
    """Resuming with a different model would fail deep inside Orbax; say so up front."""
    from pathlib import Path

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


if __name__ == "__main__":
    sys.exit(main())
