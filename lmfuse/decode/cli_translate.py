"""`lmfuse translate`: decode a file or a dataset split with a trained seq2seq workdir.

    lmfuse translate --workdir W [--input F | --split test] [--output F] [--step S]
                     [--beam K --alpha A]
                     [--max_len N] [--batch_size B]
                     [--fusion shallow|density_ratio|ilme --lm W_LM --lm_weight λ
                      --source_lm W_SRC --source_lm_weight λ2 --ilm_weight μ --length_reward r]

With `--split`, the split's sources are translated and scored against its references (BLEU,
chrF, ROUGE-L, PINC, and the copy-the-source baseline). With `--input`, every line of F is
translated; output line i is the translation of input line i (empty for an empty line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lmfuse.errors import LmfuseError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("translate", help="translate with a trained seq2seq workdir")
    p.add_argument("--workdir", required=True)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", default=None, help="a text file, one source per line")
    source.add_argument("--split", default=None, choices=("validation", "test"),
                        help="translate and score a split of the workdir's dataset")
    p.add_argument("--output", default=None,
                   help="hypotheses file (default: <workdir>/translate_<split>.txt, or stdout)")
    p.add_argument("--step", type=int, default=0, help="checkpoint step (0: the latest)")
    p.add_argument("--beam", type=int, default=0, help="beam size (0: config.decode.beam_size)")
    p.add_argument("--alpha", type=float, default=None, help="GNMT length penalty")
    p.add_argument("--max_len", type=int, default=0, help="tokens to generate (0: from config)")
    p.add_argument("--batch_size", type=int, default=0, help="sentences per batch (0: config)")
    fusion = p.add_argument_group("decode-time fusion (lmfuse.decode.fusion)")
    fusion.add_argument("--fusion", default=None, help="shallow | density_ratio | ilme")
    fusion.add_argument("--lm", default=None, help="target-domain LM workdir")
    fusion.add_argument("--lm_weight", type=float, default=0.3, help="λ")
    fusion.add_argument("--source_lm", default=None,
                        help="density_ratio: workdir of an LM of the seq2seq training targets")
    fusion.add_argument("--source_lm_weight", type=float, default=None, help="λ2 (default λ)")
    fusion.add_argument("--ilm_weight", type=float, default=None, help="ilme: μ (default λ)")
    fusion.add_argument("--length_reward", type=float, default=0.0, help="per output token")
    return p


def fusion_flags(args: argparse.Namespace):
    from lmfuse.decode.fusion_setup import FusionFlags, check_flags

    flags = FusionFlags(args.fusion, args.lm, args.lm_weight, args.source_lm,
                        args.source_lm_weight, args.ilm_weight, args.length_reward)
    check_flags(flags)
    return flags


def _check(args: argparse.Namespace) -> None:
    if args.input is None and args.split is None:
        args.split = "test"
    if args.input is not None and not Path(args.input).is_file():
        raise LmfuseError(f"--input {args.input} does not exist")
    for flag in ("step", "beam", "max_len", "batch_size"):
        if getattr(args, flag) < 0:
            raise LmfuseError(f"--{flag}={getattr(args, flag)} must be >= 0")


def split_pairs(config, split: str) -> tuple[list[str], list[str]]:
    """(sources, references) of a translate-view split, in dataset order."""
    from lmfuse.data import corpora

    if config.data.view != "translate":
        raise LmfuseError(f"--split needs a translate-view workdir, this one has {config.data.view!r}")
    sources, references = [], []
    for example in corpora.load_examples(config, split).dataset:
        if example is not None:
            sources.append(example["source"])
            references.append(example["target"])
    return sources, references


def options_from(config, args: argparse.Namespace, progress: bool = True):
    from lmfuse.decode.translate import TranslateOptions

    decode = config.decode
    return TranslateOptions(
        beam_size=args.beam or decode.beam_size,
        alpha=decode.alpha if args.alpha is None else args.alpha,
        max_source_tokens=config.data.max_length,
        max_new_tokens=args.max_len or decode.max_new_tokens or config.data.max_length,
        batch_size=args.batch_size or decode.batch_size,
        progress=progress,
    )


def run(args: argparse.Namespace) -> dict:
    """Translates, writes the hypotheses, and (for a split) prints and returns the scores."""
    _check(args)
    flags = fusion_flags(args)  # flag mistakes fail before any model is loaded
    from flax import linen as nn

    from lmfuse.decode.fusion_setup import build_decode_fusion
    from lmfuse.decode.translate import translate_lines
    from lmfuse.models.registry import SEQ2SEQ_NAMES
    from lmfuse.train.workdir import load_trained

    trainer, state, step = load_trained(args.workdir, args.step or None)
    config = trainer.config
    if config.model.name not in SEQ2SEQ_NAMES:
        raise LmfuseError(
            f"{args.workdir} holds a {config.model.name!r} model; translate needs an "
            f"encoder-decoder ({', '.join(SEQ2SEQ_NAMES)}); use lmfuse sample for an LM"
        )
    if args.split:
        lines, references = split_pairs(config, args.split)
    else:
        lines = Path(args.input).read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the file's final newline ends the last line; it is not a line
        references = None
    options = options_from(config, args, progress=sys.stderr.isatty())
    decoder, params = build_decode_fusion(
        trainer, nn.meta.unbox(state.params), flags, options.max_new_tokens
    )
    result = translate_lines(decoder, params, trainer.tokenizer, lines, options)
    if result.truncated:
        print(f"{result.truncated} source line(s) longer than {options.max_source_tokens - 1} "
              "tokens were truncated", file=sys.stderr)
    text = "".join(h + "\n" for h in result.hypotheses)
    output = args.output or (str(Path(args.workdir) / f"translate_{args.split}.txt")
                             if args.split else None)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if references is None:
        return {"hypotheses": result.hypotheses}

    from lmfuse.evaluate.metrics import format_report, score_translations

    scores = score_translations(result.hypotheses, references, lines)
    scores.update(step=step, beam_size=options.beam_size, alpha=options.alpha, split=args.split,
                  fusion=dataclasses.asdict(flags))
    method = f", {flags.method} fusion" if flags.method else ""
    print(format_report(scores, f"{args.workdir} {args.split} (step {step}, beam "
                                f"{options.beam_size}{method})"))
    Path(args.workdir, f"translate_{args.split}.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores
