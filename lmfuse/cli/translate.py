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
from typing import TYPE_CHECKING, Any

from lmfuse.cli.eval import add_sample_flags
from lmfuse.errors import LmfuseError

if TYPE_CHECKING:
    from lmfuse.evaluate.fusion_setup import FusionFlags


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommands.add_parser("translate", help="translate with a trained seq2seq workdir")
    p.set_defaults(handler=run, reads_config_file=False)
    p.add_argument("--workdir", required=True)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", default=None, help="a text file, one source per line")
    source.add_argument("--split", default=None, choices=("validation", "test"),
                        help="translate and score a split of the workdir's dataset")
    p.add_argument("--output", default=None,
                   help="hypotheses file (default: <workdir>/translate_<split>.txt, or stdout); "
                        "with --split its scores (.json) and ids (_ids.txt) go beside it")
    p.add_argument("--step", type=int, default=0, help="checkpoint step (0: the latest)")
    p.add_argument("--beam", type=int, default=0, help="beam size (0: config.decode.beam_size)")
    p.add_argument("--alpha", type=float, default=None, help="GNMT length penalty")
    p.add_argument("--max_len", type=int, default=0, help="tokens to generate (0: from config)")
    p.add_argument("--batch_size", type=int, default=0, help="sentences per batch (0: config)")
    add_sample_flags(p, "<output>_ids.txt (with --split)")
    fusion = p.add_argument_group("decode-time fusion (lmfuse.decode.fusion)")
    fusion.add_argument("--fusion", default=None,
                        help="shallow | density_ratio | ilme | rescore (n-best, with --lm)")
    fusion.add_argument("--lm", default=None, help="target-domain LM workdir")
    fusion.add_argument("--lm_weight", type=float, default=0.3, help="λ")
    fusion.add_argument("--source_lm", default=None,
                        help="density_ratio: workdir of an LM of the seq2seq training targets")
    fusion.add_argument("--source_lm_weight", type=float, default=None,
                        help="density_ratio: λ_src, the source LM's weight (required there)")
    fusion.add_argument("--ilm_weight", type=float, default=None,
                        help="ilme: μ, the internal LM's weight (required there)")
    fusion.add_argument("--length_reward", type=float, default=0.0, help="per output token")
    return p


def fusion_flags(args: argparse.Namespace) -> FusionFlags:
    from lmfuse.evaluate.fusion_setup import FusionFlags, check_flags

    flags = FusionFlags(args.fusion, args.lm, args.lm_weight, args.source_lm,
                        args.source_lm_weight, args.ilm_weight, args.length_reward)
    check_flags(flags)
    return flags


def _check(args: argparse.Namespace) -> None:
    if args.input is None and args.split is None:
        args.split = "test"
    if args.input is not None and not Path(args.input).is_file():
        raise LmfuseError(f"--input {args.input} does not exist")
    if args.sample and args.input is not None:
        raise LmfuseError("--sample draws from a split; use it with --split, not --input")
    for flag in ("step", "beam", "max_len", "batch_size", "sample"):
        if getattr(args, flag) < 0:
            raise LmfuseError(f"--{flag}={getattr(args, flag)} must be >= 0")


def _read_lines(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it is not a line
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Translates, writes the hypotheses, and (for a split) prints and returns the scores."""
    _check(args)
    flags = fusion_flags(args)  # flag mistakes fail before any model is loaded
    from flax import linen as nn

    from lmfuse.decode import seq2seq_decode_step
    from lmfuse.evaluate import protocol
    from lmfuse.evaluate.fusion_setup import build_decode_fusion, build_rescorer
    from lmfuse.evaluate.metrics import format_report
    from lmfuse.evaluate.translation import (
        TranslateOptions,
        split_examples,
        translate_and_score,
        translate_lines,
    )
    from lmfuse.models.registry import SEQ2SEQ_NAMES
    from lmfuse.train.workdir import load_model

    model, params, step = load_model(args.workdir, args.step or None)
    config = model.config
    if config.model.name not in SEQ2SEQ_NAMES:
        raise LmfuseError(
            f"{args.workdir} holds a {config.model.name!r} model; translate needs an "
            f"encoder-decoder ({', '.join(SEQ2SEQ_NAMES)}); use lmfuse sample for an LM"
        )
    ids = None
    if args.split:
        ids, lines, references = split_examples(config, args.split)
        ids, (lines, references) = protocol.sample_split(ids, (lines, references), args.sample,
                                                         args.seed)
    else:
        lines, references = _read_lines(args.input), None
    options = TranslateOptions.from_config(
        config, beam_size=args.beam, alpha=args.alpha, max_new_tokens=args.max_len,
        batch_size=args.batch_size, progress=sys.stderr.isatty(),
    )
    base_params = params
    decoder, params = build_decode_fusion(model, nn.meta.unbox(params), flags,
                                          options.max_new_tokens)
    rescorer = build_rescorer(model, flags, options.max_new_tokens)
    if references is None:
        result = translate_lines(decoder, params, model.tokenizer, lines, options,
                                 rescorer=rescorer)
        scores = None
    else:
        result, scores = translate_and_score(decoder, params, model.tokenizer, lines, references,
                                             options, rescorer=rescorer)
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
    if scores is None:
        return {"hypotheses": result.hypotheses}

    scores.update(step=step, split=args.split, fusion=dataclasses.asdict(flags),
                  sample={"size": args.sample, "seed": args.seed, "num_ids": len(ids)})
    ids_path, json_path = _beside(Path(output))
    ids_path.write_text("".join(i + "\n" for i in ids))
    method = f", {flags.method} fusion" if flags.method else ""
    print(format_report(scores, f"{args.workdir} {args.split} (step {step}, beam "
                                f"{options.beam_size}{method})"))
    systems = {"copy": lines, "system": result.hypotheses}
    if flags.method:  # the same model decoding alone: the baseline a fusion must beat
        plain = translate_lines(seq2seq_decode_step(model.model), nn.meta.unbox(base_params),
                                model.tokenizer, lines, options)
        systems["none"] = plain.hypotheses
    scores["confidence"] = {
        baseline: protocol.paired_bootstrap(systems, references, baseline, seed=args.seed)
        for baseline in systems if baseline != "system"
    }
    for baseline, report in scores["confidence"].items():
        r = report["system"]
        print(f"paired bootstrap vs {baseline} (sacrebleu, seed {args.seed}): BLEU "
              f"{r['bleu']:.2f} ({r['bleu_mean']:.2f} ± {r['bleu_ci']:.2f}, p = {r['bleu_p']:.4f}),"
              f" {baseline} {report[baseline]['bleu']:.2f}")
    json_path.write_text(json.dumps(scores, indent=2) + "\n")
    print(f"(hypotheses in {output}, scores in {json_path}, ids in {ids_path})")
    return scores


def _beside(output: Path) -> tuple[Path, Path]:
    """The sample's ids file and the scores file next to the hypotheses: translate_test.txt
    -> translate_test_ids.txt, translate_test.json."""
    stem = output.with_suffix("")
    return stem.with_name(f"{stem.name}_ids.txt"), stem.with_name(f"{stem.name}.json")
