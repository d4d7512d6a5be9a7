"""`lmfuse eval` and `lmfuse inspect`: commands that open a trained workdir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def eval(args: argparse.Namespace) -> dict:  # noqa: A001 - the subcommand's name
    from lmfuse.models.registry import SEQ2SEQ_NAMES
    from lmfuse.train.loop import evaluate
    from lmfuse.train.workdir import load_trained

    trainer, state, step = load_trained(args.workdir)
    result = evaluate(trainer, state.params, args.split)
    result["step"] = step
    line = f"{args.split} at step {step}: perplexity {result['perplexity']:.3f} per token"
    if "perplexity_per_word" in result:
        line += (f", {result['perplexity_per_word']:.3f} per word, "
                 f"{result['perplexity_per_char']:.4f} per character")
    kind = "masked-token" if trainer.objective.name == "mlm" else "next-token"
    print(f"{line}; {kind} accuracy {100 * result['accuracy']:.2f}% over "
          f"{int(result['tokens'])} tokens")
    if trainer.config.model.name in SEQ2SEQ_NAMES and trainer.config.data.view == "translate":
        result.update(_translation_scores(trainer, state, args))
    out = Path(args.workdir) / f"eval_{args.split}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"(written to {out})")
    return result


def _translation_scores(trainer, state, args: argparse.Namespace) -> dict:
    """Beam-search the split and score it, with the copy-the-source baseline."""
    import sys

    from flax import linen as nn

    from lmfuse.decode.cli_translate import options_from, split_pairs
    from lmfuse.decode.step import seq2seq_decode_step
    from lmfuse.decode.translate import translate_lines
    from lmfuse.evaluate.metrics import format_report, score_translations

    sources, references = split_pairs(trainer.config, args.split)
    flags = argparse.Namespace(beam=args.beam, alpha=None, max_len=0, batch_size=0)
    options = options_from(trainer.config, flags, progress=sys.stderr.isatty())
    out = translate_lines(seq2seq_decode_step(trainer.model), nn.meta.unbox(state.params),
                          trainer.tokenizer, sources, options)
    hypotheses_file = Path(args.workdir) / f"eval_{args.split}_hypotheses.txt"
    hypotheses_file.write_text("".join(h + "\n" for h in out.hypotheses), encoding="utf-8")
    scores = score_translations(out.hypotheses, references, sources)
    scores.update(beam_size=options.beam_size, alpha=options.alpha)
    print(format_report(scores, f"{args.workdir} {args.split} (beam {options.beam_size})"))
    return scores


def inspect(args: argparse.Namespace) -> str:
    from lmfuse.train.workdir import count_by_module, describe, load_trained, params_digest

    trainer, state, step = load_trained(args.workdir)
    params = state.params
    counts = count_by_module(params)
    print(f"workdir {args.workdir}: step {step}, model {trainer.config.model.name}, "
          f"mesh {dict(trainer.mesh.shape)}")
    print(f"parameters: {sum(counts.values()):,}")
    for module, count in counts.items():
        print(f"  {module:<32} {count:>12,}")
    for path, shape, dtype, spec in describe(params):
        print(f"  {path:<60} {str(shape):<18} {dtype:<8} {spec}")
    digest = params_digest(params)
    print(f"params sha256: {digest}")
    return digest
