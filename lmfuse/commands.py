"""`lmfuse eval` and `lmfuse inspect`: commands that open a trained workdir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def eval(args: argparse.Namespace) -> dict:  # noqa: A001 - the subcommand's name
    from lmfuse.train.loop import evaluate
    from lmfuse.train.workdir import load_trained

    trainer, state, step = load_trained(args.workdir)
    result = evaluate(trainer, state.params, args.split)
    result["step"] = step
    out = Path(args.workdir) / f"eval_{args.split}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.split} at step {step}: perplexity {result['perplexity']:.3f} per token, "
        f"{result['perplexity_per_word']:.3f} per word, {result['perplexity_per_char']:.4f} "
        f"per character over {int(result['tokens'])} tokens (written to {out})"
    )
    return result


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
