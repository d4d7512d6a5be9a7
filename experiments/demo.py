"""The lmfuse demo (`make demo`): an LM, a seq2seq model, and shallow fusion of the two.

    python experiments/demo.py [--workdir workdirs/demo] [--val_sample 200] [--test_sample 300]

On the Bible style-transfer task (YLT -> ASV, Carlson et al. 2018's split) it
  1. trains a tiny Transformer LM on the ASV train books (configs/lm_transformer.py:tiny),
  2. trains a tiny Transformer encoder-decoder with a copy output on YLT -> ASV verse pairs
     (configs/s2s_transformer.py:tiny, 250 steps),
  3. beam-searches a seeded sample of test verses spread over every test book, with and
     without shallow fusion, the fusion weight λ chosen on a seeded validation sample over a
     grid that holds 0 (so validation may choose no fusion), as `lmfuse.evaluate.protocol`
     prescribes; the samples' verse ids go to `demo_<split>_ids.txt`,
  4. prints BLEU (with sacrebleu's 95% bootstrap interval) / chrF / PINC / length ratio for
     copying the source, the seq2seq model and the fused one, the paired-bootstrap p-values
     of fusion against no fusion and of each against the copy, three outputs side by side, and
     writes `demo.png` (training curves and scores) and `demo_results.json` in the workdir.
     TensorBoard logs are in each model's `tensorboard/`.

The samples are smaller than the studies' (500 validation / 1000 test verses) to keep
`make demo` within 15 minutes on a 2-core CPU; the intervals say how much that costs.

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
FUSION_WEIGHTS = (0.1, 0.3)  # shallow-fusion λ candidates; 0 joins them (protocol.with_zero)
EXAMPLES = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--val_sample", type=int, default=200,
                        help="validation verses λ is chosen on (a seeded sample over every book)")
    parser.add_argument("--test_sample", type=int, default=300,
                        help="test verses scored (a seeded sample over every book; 0: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the samples and of the paired bootstrap")
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

    from lmfuse.evaluate import protocol
    from lmfuse.evaluate.fusion_setup import FusionFlags, build_decode_fusion
    from lmfuse.evaluate.translation import TranslateOptions, split_examples, translate_and_score
    from lmfuse.train.workdir import load_model

    trainer, params, step = load_model(s2s_dir)
    params = nn.meta.unbox(params)
    config = trainer.config
    options = TranslateOptions.from_config(config, beam_size=args.beam,
                                           max_new_tokens=config.data.max_length, progress=True)
    splits = {}
    for split, size in (("validation", args.val_sample), ("test", args.test_sample)):
        ids, sources, references = split_examples(config, split)
        ids, (sources, references) = protocol.sample_split(ids, (sources, references), size,
                                                           args.seed)
        (Path(args.workdir) / f"demo_{split}_ids.txt").write_text("".join(i + "\n" for i in ids))
        splits[split] = (sources, references)

    def run(split: str, weight: float) -> dict:
        sources, references = splits[split]
        flags = (FusionFlags(method="shallow", lm=str(lm_dir), lm_weight=weight) if weight
                 else FusionFlags())
        decoder, fused_params = build_decode_fusion(trainer, params, flags,
                                                    options.max_new_tokens)
        started = time.perf_counter()
        out, scores = translate_and_score(decoder, fused_params, trainer.tokenizer, sources,
                                          references, options)
        scores.update(hypotheses=out.hypotheses, seconds=time.perf_counter() - started)
        return scores

    print(f"\n== decoding {len(splits['validation'][0])} validation + "
          f"{len(splits['test'][0])} test verses (seeded samples over every book), beam "
          f"{args.beam}", flush=True)
    sweep = {}

    def validation_bleu(weights: dict) -> float:
        sweep[weights["lm"]] = run("validation", weights["lm"])["bleu"]
        print(f"validation BLEU with shallow fusion λ={weights['lm']:g}: "
              f"{sweep[weights['lm']]:.2f}", flush=True)
        return sweep[weights["lm"]]

    chosen, _ = protocol.select_on_validation({"lm": FUSION_WEIGHTS}, validation_bleu)
    best = chosen["lm"]
    base = run("test", 0.0)
    fused = run("test", best) if best else base
    sources, references = splits["test"]
    systems = {"copy": sources, "none": base["hypotheses"], "shallow": fused["hypotheses"]}
    confidence = {baseline: protocol.paired_bootstrap(systems, references, baseline, args.seed)
                  for baseline in ("copy", "none")}
    return {"step": step, "beam": args.beam, "val_sample": args.val_sample,
            "test_sample": args.test_sample, "seed": args.seed,
            "test_sentences": len(sources),
            "validation_sweep": {f"{k:g}": v for k, v in sweep.items()}, "lm_weight": best,
            "base": base, "fused": fused, "confidence": confidence, "sources": sources,
            "references": references}


def print_report(lm_eval: dict, s2s_eval: dict, scores: dict) -> None:
    base, fused, confidence = scores["base"], scores["fused"], scores["confidence"]
    against_copy, against_none = confidence["copy"], confidence["none"]
    fused_name = (f"seq2seq + LM (shallow, λ={scores['lm_weight']:g})" if scores["lm_weight"]
                  else "seq2seq + LM (validation chose λ=0)")
    rows = [
        ("copy the source", "copy", base["copy_chrf"], base["copy_pinc"],
         base["copy_length_ratio"]),
        ("seq2seq", "none", base["chrf"], base["pinc"], base["length_ratio"]),
        (fused_name, "shallow", fused["chrf"], fused["pinc"], fused["length_ratio"]),
    ]
    print(f"\nYLT -> ASV, {scores['test_sentences']} test verses (seeded sample over every "
          f"book, seed {scores['seed']}), beam {scores['beam']}")
    print(f"| {'system':<36} | {'BLEU ± 95% CI':>14} | {'p vs copy':>9} | {'p vs none':>9} | "
          f"{'chrF':>6} | {'PINC':>6} | {'len':>5} |")
    print(f"|{'-' * 38}|{'-' * 16}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 7}|")
    for name, key, chrf, pinc, length in rows:
        r = against_copy[key]
        p_copy = "" if r["bleu_p"] is None else f"{r['bleu_p']:.3f}"
        p_none = against_none[key]["bleu_p"] if key == "shallow" and scores["lm_weight"] else None
        p_none = "" if p_none is None else f"{p_none:.3f}"
        print(f"| {name:<36} | {r['bleu']:6.2f} ± {r['bleu_ci']:5.2f} | {p_copy:>9} | "
              f"{p_none:>9} | {chrf:6.2f} | {pinc:6.2f} | {length:5.2f} |")
    sweep = ", ".join(f"λ={k}: {v:.2f}" for k, v in scores["validation_sweep"].items())
    print(f"\nvalidation BLEU ({scores['val_sample']} verses): {sweep}")
    print("p: sacrebleu's paired bootstrap (1000 resamples); a difference with p >= 0.05 is "
          "not a finding")
    print(f"validation perplexity: LM {lm_eval['perplexity']:.2f} per token "
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
    names = ["copy source", "seq2seq", f"+ LM λ={scores['lm_weight']:g}"]
    against_copy = scores["confidence"]["copy"]
    bleus = [against_copy[k]["bleu"] for k in ("copy", "none", "shallow")]
    errors = [against_copy[k]["bleu_ci"] for k in ("copy", "none", "shallow")]
    bars.bar(names, bleus, yerr=errors, capsize=4, color=["grey", "tab:blue", "tab:orange"])
    for i, value in enumerate(bleus):
        bars.text(i, value, f"{value:.1f}", ha="center", va="bottom")
    bars.set(ylabel="BLEU (95% bootstrap interval)",
             title=f"YLT -> ASV, {scores['test_sentences']} test verses")
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
        key = {"step": s2s_eval["step"], "lm_step": lm_eval["step"], "beam": args.beam,
               "val_sample": args.val_sample, "test_sample": args.test_sample,
               "seed": args.seed}
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
