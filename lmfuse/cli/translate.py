"""`lmfuse translate`: decode a file or a dataset split with a trained seq2seq workdir.

    lmfuse translate --workdir W [--input F | --split test] [--output F] [--step S]
                     [--beam K --alpha A] [--no_repeat_ngram_size N]
                     [--max_len N] [--batch_size B]
                     [--fusion shallow|density_ratio|ilme --lm W_LM --lm_weight λ
                      --source_lm W_SRC --source_lm_weight λ2 --ilm_weight μ --length_reward r]

With `--split`, the split's sources are translated and scored against its references (BLEU,
chrF, ROUGE-L, PINC, and the copy-the-source baseline). With `--input`, every line of F is
translated; output line i is the translation of input line i (empty for an empty line). Bytes
of F that are not UTF-8 are read as U+FFFD, the replacement character, which the tokenizer's
byte fallback encodes like any character outside the vocabulary; the lines that held such
bytes are counted on stderr.

Every file it will write (the hypotheses, and with --split their ids and scores) is checked
before the model loads; a default location that is not writable fails there, naming --output.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmfuse.cli.eval import add_ngram_flag, add_sample_flags, check_ngram_flag
from lmfuse.errors import LmfuseError

if TYPE_CHECKING:
    from lmfuse.evaluate.fusion_setup import FusionFlags


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommands.add_parser("translate", help="translate with a trained seq2seq workdir")
    p.set_defaults(handler=run, reads_config_file=False)
    p.add_argument("--workdir", required=True)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", default=None,
                        help="a text file, one source per line (bytes that are not UTF-8 are "
                             "read as U+FFFD, and the lines holding them counted)")
    source.add_argument("--split", default=None, choices=("validation", "test"),
                        help="translate and score a split of the workdir's dataset")
    p.add_argument("--output", default=None,
                   help="hypotheses file (default: <workdir>/translate_<split>.txt, or stdout); "
                        "with --split its scores (.json) and ids (_ids.txt) go beside it")
    p.add_argument("--step", type=int, default=0, help="checkpoint step (0: the latest)")
    p.add_argument("--beam", type=int, default=0, help="beam size (0: config.decode.beam_size)")
    p.add_argument("--alpha", type=float, default=None, help="GNMT length penalty")
    add_ngram_flag(p)
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
        what = "is not a file" if Path(args.input).exists() else "does not exist"
        raise LmfuseError(f"--input {args.input} {what}")
    if args.sample and args.input is not None:
        raise LmfuseError("--sample draws from a split; use it with --split, not --input")
    for flag in ("step", "beam", "max_len", "batch_size", "sample"):
        if getattr(args, flag) < 0:
            raise LmfuseError(f"--{flag}={getattr(args, flag)} must be >= 0")
    check_ngram_flag(args)


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """The files a run writes: the hypotheses (--output, default <workdir>/translate_<split>.txt
    with --split, else stdout: none) and, with --split, their ids and scores beside them."""
    if args.output is None and not args.split:
        return {}
    output = Path(args.output or Path(args.workdir) / f"translate_{args.split}.txt")
    if not args.split:
        return {"hypotheses": output}
    ids_path, json_path = _beside(output)
    return {"hypotheses": output, "ids": ids_path, "scores": json_path}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Translates, writes the hypotheses, and (for a split) prints and returns the scores."""
    from lmfuse.cli.paths import (
        json_text,
        output_to_write,
        read_text_lines,
        workdir_to_read,
        write_files,
    )

    _check(args)
    flags = fusion_flags(args)  # flag mistakes fail before any model is loaded
    # Paths next, before the model loads: a bad one fails in a second, not after decoding.
    workdir_to_read(args.workdir)
    for flag, workdir in (("--lm", flags.lm), ("--source_lm", flags.source_lm)):
        if workdir:
            workdir_to_read(workdir, flag)
    outputs = output_paths(args)
    fix = ("pass --output <file.txt> in a writable folder" if args.output is None
           else "pass --output elsewhere")
    for path in outputs.values():  # before decoding: no hypothesis is computed in vain
        output_to_write(path, fix)
    if args.input is not None and outputs and outputs["hypotheses"].exists() \
            and outputs["hypotheses"].samefile(args.input):
        raise LmfuseError(f"--output {args.output} is the --input file, which the hypotheses "
                          "would overwrite; pass --output elsewhere")
    if args.input is not None:
        lines, invalid = read_text_lines(args.input, "--input")
        if invalid:
            print(f"{invalid} input line(s) held bytes that are not UTF-8; they were read as "
                  "U+FFFD (the replacement character) and translated", file=sys.stderr)
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
    from lmfuse.train.workdir import load_model, load_workdir_config

    name = load_workdir_config(args.workdir).model.name  # the stored config: no params read
    if name not in SEQ2SEQ_NAMES:
        raise LmfuseError(
            f"{args.workdir} holds a {name!r} model; translate needs an encoder-decoder "
            f"({', '.join(SEQ2SEQ_NAMES)}); use lmfuse sample for an LM"
        )
    model, params, step = load_model(args.workdir, args.step or None)
    config = model.config
    ids = None
    if args.split:
        ids, lines, references = split_examples(config, args.split)
        ids, (lines, references) = protocol.sample_split(ids, (lines, references), args.sample,
                                                         args.seed)
    else:
        references = None
    options = TranslateOptions.from_config(
        config, beam_size=args.beam, alpha=args.alpha, max_new_tokens=args.max_len,
        batch_size=args.batch_size, no_repeat_ngram_size=args.no_repeat_ngram_size,
        progress=True,  # a bar on a terminal, else plain lines (lmfuse.progress)
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
    if scores is None:
        if outputs:
            _write_or_show(outputs["hypotheses"], text, fix)
        else:
            sys.stdout.write(text)
        return {"hypotheses": result.hypotheses}

    scores.update(step=step, split=args.split, fusion=dataclasses.asdict(flags),
                  sample={"size": args.sample, "seed": args.seed, "num_ids": len(ids)})
    # The hypotheses first: everything after them is scoring, and they are the hours of work.
    _write_or_show(outputs["hypotheses"], text, fix)
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
    write_files({outputs["ids"]: "".join(i + "\n" for i in ids),
                 outputs["scores"]: json_text(scores)},  # NaN is written as null
                f"the scores are printed above; {fix}")
    print(f"(hypotheses in {outputs['hypotheses']}, scores in {outputs['scores']}, "
          f"ids in {outputs['ids']})")
    return scores


def _write_or_show(path: Path, text: str, fix: str) -> None:
    """Writes the hypotheses; if that fails after all (a full disk), they go to stdout
    before the one-line error, so a long decode is never lost."""
    from lmfuse.cli.paths import write_files

    try:
        write_files({path: text}, fix)
    except LmfuseError as e:
        sys.stdout.write(text)
        raise LmfuseError(f"{e} (the hypotheses went to stdout instead)") from None


def _beside(output: Path) -> tuple[Path, Path]:
    """The sample's ids file and the scores file next to the hypotheses: translate_test.txt
    -> translate_test_ids.txt, translate_test.json."""
    stem = output.with_suffix("")
    return stem.with_name(f"{stem.name}_ids.txt"), stem.with_name(f"{stem.name}.json")
