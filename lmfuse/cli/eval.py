"""`lmfuse eval`: perplexity of a trained workdir on a split; for an encoder-decoder on a
translate view, also the split beam-searched and scored (BLEU, chrF, ROUGE-L, PINC, and the
copy-the-source baseline)."""

from __future__ import annotations

import argparse
import concurrent.futures
from pathlib import Path
from typing import Any


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommands.add_parser(
        "eval", help="perplexity of a trained workdir (seq2seq: also BLEU, chrF, ROUGE-L, PINC)"
    )
    p.set_defaults(handler=run, reads_config_file=False)
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="validation", choices=("validation", "test"))
    p.add_argument("--beam", type=int, default=0, help="seq2seq: beam size (0: config)")
    add_ngram_flag(p)
    p.add_argument("--output", default=None,
                   help="results file (default: <workdir>/eval_<split>.json); a seq2seq's "
                        "hypotheses and sample ids go beside it (<name>_hypotheses.txt, "
                        "<name>_ids.txt)")
    add_sample_flags(p, "<output>_ids.txt")
    return p


def add_ngram_flag(p: argparse.ArgumentParser) -> None:
    """--no_repeat_ngram_size (beam search), for eval and translate."""
    p.add_argument("--no_repeat_ngram_size", type=int, default=None, metavar="N",
                   help="no N-gram occurs twice in a hypothesis (0 disables; default: "
                        "config.decode.no_repeat_ngram_size, 0 if unset)")


def check_ngram_flag(args: argparse.Namespace) -> None:
    from lmfuse.errors import LmfuseError

    if args.no_repeat_ngram_size is not None and args.no_repeat_ngram_size < 0:
        raise LmfuseError(f"--no_repeat_ngram_size={args.no_repeat_ngram_size} must be >= 0 "
                          "(0 disables it)")


def add_sample_flags(p: argparse.ArgumentParser, ids_file: str) -> None:
    """--sample and --seed (`lmfuse.evaluate.protocol`), for eval and translate."""
    p.add_argument("--sample", type=int, default=0,
                   help="score a seeded sample of this many pairs, spread over every book "
                        f"(0: the whole split); its ids go to {ids_file}")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sample and of the paired bootstrap")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prints the results and writes them to --output (default <workdir>/eval_<split>.json)."""
    from lmfuse.cli.paths import json_text, output_to_write, workdir_to_read, write_files
    from lmfuse.errors import LmfuseError

    if args.sample < 0:
        raise LmfuseError(f"--sample {args.sample} must be >= 0 (0: the whole split)")
    check_ngram_flag(args)
    workdir_to_read(args.workdir)
    outputs = output_paths(args)
    fix = ("pass --output <file.json> in a writable folder" if args.output is None
           else "pass --output elsewhere")
    for path in outputs.values():  # before the model loads: no result is computed in vain
        output_to_write(path, fix)

    from lmfuse.models.registry import SEQ2SEQ_NAMES
    from lmfuse.train.evaluation import evaluate
    from lmfuse.train.workdir import load_model

    model, params, step = load_model(args.workdir)
    translates = (model.config.model.name in SEQ2SEQ_NAMES
                  and model.config.data.view == "translate")
    # The perplexity pass runs beside the translation: the device runs one program at a
    # time, but the beam programs compile on the host meanwhile (on another core).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        perplexity = pool.submit(evaluate, model, params, args.split)
        translation = _translation_scores(model, params, args) if translates else None
        result = perplexity.result()
    result["step"] = step
    line = f"{args.split} at step {step}: perplexity {result['perplexity']:.3f} per token"
    if "perplexity_per_word" in result:
        line += (f", {result['perplexity_per_word']:.3f} per word, "
                 f"{result['perplexity_per_char']:.4f} per character")
    kind = "masked-token" if model.objective.name == "mlm" else "next-token"
    print(f"{line}; {kind} accuracy {100 * result['accuracy']:.2f}% over "
          f"{int(result['tokens'])} tokens")
    files = {}
    if translation is not None:
        scores, hypotheses, ids, report = translation
        print(report)
        result.update(scores)
        files[outputs["hypotheses"]] = "".join(h + "\n" for h in hypotheses)
        files[outputs["ids"]] = "".join(i + "\n" for i in ids)
    files[outputs["results"]] = json_text(result)  # NaN (a diverged model) is written as null
    write_files(files, f"the results are printed above; {fix}")
    print(f"(written to {outputs['results']})")
    return result


def output_paths(args: argparse.Namespace) -> dict[str, Path]:
    """The results file (--output, default <workdir>/eval_<split>.json) and, beside it, a
    seq2seq's hypotheses and sample ids: eval_test.json -> eval_test_hypotheses.txt,
    eval_test_ids.txt."""
    results = Path(args.output) if args.output else Path(args.workdir) / f"eval_{args.split}.json"
    stem = results.with_suffix("") if results.suffix == ".json" else results
    return {"results": results,
            "hypotheses": stem.with_name(f"{stem.name}_hypotheses.txt"),
            "ids": stem.with_name(f"{stem.name}_ids.txt")}


def _translation_scores(model, params, args: argparse.Namespace
                        ) -> tuple[dict[str, Any], list[str], list[str], str]:
    """Beam-search the split and score it, with the copy-the-source baseline: (scores,
    hypotheses, the pairs' ids, the report to print)."""
    from flax import linen as nn

    from lmfuse.decode import seq2seq_decode_step
    from lmfuse.evaluate import protocol
    from lmfuse.evaluate.metrics import format_report
    from lmfuse.evaluate.translation import TranslateOptions, split_examples, translate_and_score

    ids, sources, references = split_examples(model.config, args.split)
    ids, (sources, references) = protocol.sample_split(ids, (sources, references), args.sample,
                                                       args.seed)
    # Progress off a terminal too: plain lines in a log instead of a bar (lmfuse.progress).
    options = TranslateOptions.from_config(model.config, beam_size=args.beam, progress=True,
                                           no_repeat_ngram_size=args.no_repeat_ngram_size)
    out, scores = translate_and_score(seq2seq_decode_step(model.model), nn.meta.unbox(params),
                                      model.tokenizer, sources, references, options)
    what = f"{len(ids)} sampled with seed {args.seed}" if args.sample else "all"
    scores["confidence"] = protocol.against_copy(out.hypotheses, sources, references, args.seed)
    scores["sample"] = {"size": args.sample, "seed": args.seed, "num_ids": len(ids)}
    report = (format_report(scores, f"{args.workdir} {args.split}, {what} (beam {options.beam_size})")
              + "\n" + protocol.format_confidence(scores["confidence"]))
    return scores, out.hypotheses, ids, report
