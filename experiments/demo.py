"""The lmfuse demo (`make demo`): an LM, a seq2seq model, and shallow fusion of the two.

    python experiments/demo.py [--workdir workdirs/demo] [--sentences 100]

On the Bible style-transfer task (YLT -> ASV, Carlson et al. 2018's split) it
  1. trains a tiny Transformer LM on the ASV train books (configs/lm_transformer.py:tiny),
  2. trains a tiny Transformer encoder-decoder with a copy output on YLT -> ASV verse pairs
     (configs/s2s_transformer.py:tiny, 250 steps),
  3. beam-searches the first `--sentences` test verses with and without shallow fusion, the
     fusion weight chosen on the first `--sentences` validation verses,
  4. prints BLEU / chrF / PINC / perplexity against the copy-the-source baseline, and three
     outputs side by side, and writes `demo.png` (training curves and scores) and
     `demo_results.json` in the workdir. TensorBoard logs are in each model's `tensorboard/`.

A rerun reuses the prepared data, the finished checkpoints and the decoded outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lmfuse.cli import quiet_library_logs
from lmfuse.config import load_config
from lmfuse.errors import LmfuseError

LM_CONFIG = "configs/lm_transformer.py:tiny"
S2S_CONFIG = "configs/s2s_transformer.py:tiny"
FUSION_WEIGHTS = (0.1, 0.2, 0.3)  # shallow-fusion λ candidates, chosen on validation
EXAMPLES = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--sentences", type=int, default=100,
                        help="validation / test verses decoded (the first N of each split)")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lm_steps", type=int, default=0, help="0: the config's steps")
    # 250 of the tiny config's 400 steps keep `make demo` within 15 minutes on a 2-core CPU.
    parser.add_argument("--s2s_steps", type=int, default=250, help="0: the config's steps")
    return parser.parse_args(argv)


def train_model(config_file: str, workdir: Path, steps: int) -> dict:
    """Trains (or resumes, or finds finished) a workdir; returns its validation metrics."""
    from lmfuse.train.evaluation import evaluate
    from lmfuse.train.loop import train
    from lmfuse.train.workdir import load_model

    overrides = [f"--config.train.steps={steps}"] if steps else []
    config = load_config(config_file, overrides)
    print(f"\n== {config_file} -> {workdir} ({config.train.steps} steps)", flush=True)
    train(config, workdir, progress=True)
    cached = workdir / "demo_validation.json"
    trainer, params, step = load_model(workdir)
    if cached.is_file() and json.loads(cached.read_text())["step"] == step:
        return json.loads(cached.read_text())
    result = {"step": step, **evaluate(trainer, params, "validation")}
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def decode_scores(s2s_dir: Path, lm_dir: Path, args: argparse.Namespace) -> dict:
    """Test scores of the plain and the shallow-fused decoder, λ chosen on validation."""
    from flax import linen as nn

    from lmfuse.evaluate.fusion_setup import FusionFlags, build_decode_fusion
    from lmfuse.evaluate.translation import TranslateOptions, split_pairs, translate_and_score
    from lmfuse.train.workdir import load_model

    trainer, params, step = load_model(s2s_dir)
    params = nn.meta.unbox(params)
    config = trainer.config
    options = TranslateOptions.from_config(config, beam_size=args.beam,
                                           max_new_tokens=config.data.max_length, progress=True)
    splits = {}
    for split in ("validation", "test"):
        sources, references = split_pairs(config, split)
        splits[split] = (sources[: args.sentences], references[: args.sentences])

    def run(split: str, flags: FusionFlags) -> dict:
        sources, references = splits[split]
        decoder, fused_params = build_decode_fusion(trainer, params, flags,
                                                    options.max_new_tokens)
        started = time.perf_counter()
        out, scores = translate_and_score(decoder, fused_params, trainer.tokenizer, sources,
                                          references, options)
        scores.update(hypotheses=out.hypotheses, seconds=time.perf_counter() - started)
        return scores

    print(f"\n== decoding {args.sentences} validation + test verses, beam {args.beam}",
          flush=True)
    sweep = {}
    for weight in FUSION_WEIGHTS:
        flags = FusionFlags(method="shallow", lm=str(lm_dir), lm_weight=weight)
        sweep[weight] = run("validation", flags)["bleu"]
        print(f"validation BLEU with shallow fusion λ={weight}: {sweep[weight]:.2f}", flush=True)
    best = max(sweep, key=sweep.get)
    base = run("test", FusionFlags())
    fused = run("test", FusionFlags(method="shallow", lm=str(lm_dir), lm_weight=best))
    sources, references = splits["test"]
    return {"step": step, "sentences": args.sentences, "beam": args.beam,
            "validation_sweep": {str(k): v for k, v in sweep.items()}, "lm_weight": best,
            "base": base, "fused": fused, "sources": sources, "references": references}


def print_report(lm_eval: dict, s2s_eval: dict, scores: dict) -> None:
    base, fused = scores["base"], scores["fused"]
    rows = [
        ("copy the source", base["copy_bleu"], base["copy_chrf"], base["copy_pinc"]),
        ("seq2seq", base["bleu"], base["chrf"], base["pinc"]),
        (f"seq2seq + LM (shallow, λ={scores['lm_weight']})", fused["bleu"], fused["chrf"],
         fused["pinc"]),
    ]
    print(f"\nYLT -> ASV, first {scores['sentences']} test verses, beam {scores['beam']}")
    print(f"| {'system':<36} | {'BLEU':>6} | {'chrF':>6} | {'PINC':>6} |")
    print(f"|{'-' * 38}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
    for name, bleu, chrf, pinc in rows:
        print(f"| {name:<36} | {bleu:6.2f} | {chrf:6.2f} | {pinc:6.2f} |")
    print(f"\nvalidation perplexity: LM {lm_eval['perplexity']:.2f} per token "
          f"(step {lm_eval['step']}), seq2seq {s2s_eval['perplexity']:.2f} per target token "
          f"(step {s2s_eval['step']})")
    print(f"BLEU signature: {base['bleu_signature']}")
    for i in range(min(EXAMPLES, len(scores["sources"]))):
        print(f"\n[{i + 1}] source (YLT): {scores['sources'][i]}")
        print(f"    seq2seq:      {base['hypotheses'][i]}")
        print(f"    + shallow LM: {fused['hypotheses'][i]}")
        print(f"    reference:    {scores['references'][i]}")


def plot(lm_dir: Path, s2s_dir: Path, scores: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for name, workdir in (("LM", lm_dir), ("seq2seq", s2s_dir)):
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        # Train loss includes label smoothing; validation reports the plain NLL.
        for split, key, style in (("train", "loss", "-"), ("validation", "nll", "o--")):
            points = [(r["step"], r[key]) for r in records if r.get("split") == split]
            if points:
                curves.plot(*zip(*points, strict=True), style, label=f"{name} {split}")
    curves.set(xlabel="step", ylabel="loss (nats/token)", title="training")
    curves.legend()
    base, fused = scores["base"], scores["fused"]
    names = ["copy source", "seq2seq", f"+ LM λ={scores['lm_weight']}"]
    bleus = [base["copy_bleu"], base["bleu"], fused["bleu"]]
    bars.bar(names, bleus, color=["grey", "tab:blue", "tab:orange"])
    for i, value in enumerate(bleus):
        bars.text(i, value, f"{value:.1f}", ha="center", va="bottom")
    bars.set(ylabel="BLEU", title=f"YLT -> ASV, {scores['sentences']} test verses")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_library_logs()  # as the lmfuse commands do: Orbax's routine notices are not news
    root = Path(args.workdir)
    lm_dir, s2s_dir = root / "lm_transformer", root / "s2s_transformer"
    started = time.perf_counter()
    try:
        lm_eval = train_model(LM_CONFIG, lm_dir, args.lm_steps)
        s2s_eval = train_model(S2S_CONFIG, s2s_dir, args.s2s_steps)
        cache = root / "demo_results.json"
        key = {"step": s2s_eval["step"], "lm_step": lm_eval["step"],
               "sentences": args.sentences, "beam": args.beam}
        scores = json.loads(cache.read_text()) if cache.is_file() else None
        if scores is None or {k: scores.get(k) for k in key} != key:
            scores = {**decode_scores(s2s_dir, lm_dir, args), "lm_step": lm_eval["step"]}
            cache.write_text(json.dumps(scores, indent=2) + "\n")
        else:
            print(f"\n(decoded outputs reused from {cache})")
    except LmfuseError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    print_report(lm_eval, s2s_eval, scores)
    plot(lm_dir, s2s_dir, scores, root / "demo.png")
    print(f"\nwrote {root / 'demo.png'}, {root / 'demo_results.json'}; TensorBoard: "
          f"tensorboard --logdir {root}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
