"""`lmfuse sample`: continue prompts with a trained LM workdir (sampling, greedy or beam).

    lmfuse sample --workdir W --prompt "In the beginning" [--prompts_file F] --max_len 64
                  [--temperature 1.0 --top_k 0 --top_p 1.0 --min_p 0.0 --repetition_penalty 1.0]
                  [--no_repeat_ngram_size 0]
                  [--num 1] [--seed 0] [--beam K --alpha 0.6]

Prompts are encoded with the workdir's tokenizer and start with BOS, as training documents do.
All prompts run as one left-padded batch through one compiled program.
"""

from __future__ import annotations

import argparse
import sys

from lmfuse.errors import LmfuseError


def add_parser(subcommands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subcommands.add_parser("sample", help="generate text from a trained LM workdir")
    p.set_defaults(handler=run, reads_config_file=False)
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts_file", default=None, help="a text file with one prompt per line")
    p.add_argument("--max_len", type=int, default=64, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    p.add_argument("--top_k", type=int, default=0, help="0 disables")
    p.add_argument("--top_p", type=float, default=1.0, help="1 disables")
    p.add_argument("--min_p", type=float, default=0.0, help="0 disables")
    p.add_argument("--repetition_penalty", type=float, default=1.0, help="1 disables")
    p.add_argument("--no_repeat_ngram_size", type=int, default=0, metavar="N",
                   help="no N-gram occurs twice in a generated text (sampling and beam); 0 disables")
    p.add_argument("--num", type=int, default=1, help="samples per prompt (with --beam: n-best entries to print)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beam", type=int, default=0, help="beam size; > 0 runs beam search")
    p.add_argument("--alpha", type=float, default=0.6, help="beam search length penalty")
    return p


def _check(args: argparse.Namespace) -> list[str]:
    from lmfuse.cli.paths import read_text_lines, workdir_to_read

    workdir_to_read(args.workdir)
    prompts = list(args.prompt)
    if args.prompts_file:
        lines, invalid = read_text_lines(args.prompts_file, "--prompts_file")
        if invalid:  # read as translate reads --input: bad bytes become U+FFFD
            print(f"{invalid} prompt line(s) held bytes that are not UTF-8; they were read as "
                  "U+FFFD (the replacement character)", file=sys.stderr)
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise LmfuseError("give at least one --prompt or a non-empty --prompts_file")
    if args.max_len <= 0:
        raise LmfuseError(f"--max_len={args.max_len} must be positive")
    if args.num <= 0:
        raise LmfuseError(f"--num={args.num} must be positive")
    if args.temperature < 0:
        raise LmfuseError(f"--temperature={args.temperature} must be >= 0 (0 means greedy)")
    if args.top_k < 0:
        raise LmfuseError(f"--top_k={args.top_k} must be >= 0 (0 disables it)")
    if not 0.0 < args.top_p <= 1.0:
        raise LmfuseError(f"--top_p={args.top_p} must be in (0, 1]")
    if not 0.0 <= args.min_p <= 1.0:
        raise LmfuseError(f"--min_p={args.min_p} must be in [0, 1]")
    if args.repetition_penalty <= 0:
        raise LmfuseError(f"--repetition_penalty={args.repetition_penalty} must be positive")
    if args.no_repeat_ngram_size < 0:
        raise LmfuseError(f"--no_repeat_ngram_size={args.no_repeat_ngram_size} must be >= 0 "
                          "(0 disables it)")
    if args.beam < 0:
        raise LmfuseError(f"--beam={args.beam} must be >= 0 (0 means sampling)")
    return prompts


def run(args: argparse.Namespace) -> list[list[str]]:
    """Prints, and returns, the generated texts (prompt included, decoded together so
    spacing at the seam is the tokenizer's): one list (samples or n-best) per prompt."""
    prompts = _check(args)  # fail on user mistakes before the heavy imports
    import jax
    import numpy as np
    from flax import linen as nn

    from lmfuse.decode import beam_search, lm_decode_step, sample
    from lmfuse.models.registry import LM_NAMES
    from lmfuse.tokens import BOS_ID, PAD_ID
    from lmfuse.train.workdir import load_model, load_workdir_config

    name = load_workdir_config(args.workdir).model.name  # the stored config: no params read
    if name not in LM_NAMES:
        raise LmfuseError(
            f"{args.workdir} holds a {name!r} model; sample needs a decoder-only LM "
            f"({', '.join(LM_NAMES)}); use lmfuse translate for an encoder-decoder"
        )
    trainer, params, step = load_model(args.workdir)
    tokenizer, model = trainer.tokenizer, trainer.model
    encoded = [[BOS_ID, *ids] for ids in tokenizer.encode_batch(prompts)]
    longest = max(len(ids) for ids in encoded)
    limit = getattr(model.cfg, "max_len", None) if trainer.config.model.name == "transformer" else None
    if limit is not None and trainer.config.model.positions == "learned" and longest + args.max_len > limit:
        raise LmfuseError(
            f"prompt ({longest} tokens with BOS) + --max_len {args.max_len} exceeds the model's "
            f"learned positions (model.max_len={limit}); shorten the prompt or lower --max_len"
        )
    # Left-padded batch: every prompt ends at the same column, so all continue together.
    tokens = np.full((len(encoded), longest), PAD_ID, np.int32)
    for row, ids in enumerate(encoded):
        tokens[row, longest - len(ids):] = ids
    batch = {"prompt": jax.numpy.asarray(tokens)}
    params = nn.meta.unbox(params)
    decoder = lm_decode_step(model)

    results: list[list[str]] = []
    if args.beam > 0:
        out = beam_search(decoder, params, batch, beam_size=args.beam, max_new_tokens=args.max_len,
                          alpha=args.alpha, no_repeat_ngram_size=args.no_repeat_ngram_size)
        seqs, scores = np.asarray(out.tokens), np.asarray(out.scores)
        for i in range(len(prompts)):
            texts = [tokenizer.decode(encoded[i] + seqs[i, j].tolist()) for j in range(min(args.num, args.beam))]
            for j, text in enumerate(texts):
                print(f"[{i}.{j}] score {scores[i, j]:.3f}: {text}")
            results.append(texts)
    else:
        out = sample(
            decoder, params, batch, jax.random.key(args.seed), max_new_tokens=args.max_len,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
            repetition_penalty=args.repetition_penalty, num_samples=args.num,
            no_repeat_ngram_size=args.no_repeat_ngram_size, return_logprobs=False,
        )
        seqs = np.asarray(out.tokens)
        for i in range(len(prompts)):
            texts = [tokenizer.decode(encoded[i] + seqs[i, j].tolist()) for j in range(args.num)]
            for j, text in enumerate(texts):
                print(f"[{i}.{j}] {text}")
            results.append(texts)
    print(f"(workdir {args.workdir}, step {step})")
    return results
