"""The lmfuse demo (`make demo`): does an LM help a seq2seq model trained on little data?

    python experiments/demo.py [--workdir workdirs/demo] [--fraction 5] [--val_sample 200]
                               [--test_sample 500]

On the Bible style-transfer task (YLT -> ASV, Carlson et al. 2018's split), the low-resource
setting the fusion papers ask about (Gulcehre et al. 2015):
  1. trains a tiny Transformer LM on all ASV training text (configs/lm_transformer.py:tiny),
  2. trains a tiny Transformer encoder-decoder with a copy output on 5% of the YLT -> ASV
     training pairs (configs/s2s_transformer.py:tiny, `data.train_fraction`, an epoch budget),
  3. trains deep fusion (Gulcehre et al. 2015) of the two: both frozen, the gate and the
     output layer trained on the same 5% (`fusion.method=deep`; the copy output wraps the
     fused distribution),
  4. beam-searches a seeded sample of test verses spread over every test book with the plain
     model, with shallow fusion (λ chosen on a seeded validation sample over a grid that holds
     0, so validation may choose no fusion: `lmfuse.evaluate.protocol`) and with deep fusion;
     the samples' verse ids go to `demo_<split>_ids.txt`,
  5. prints BLEU (with sacrebleu's 95% bootstrap interval) / chrF / PINC / length ratio for
     copying the source and each system, paired-bootstrap p-values against no fusion and
     against the copy, three outputs side by side, and writes `demo.png` (training curves and
     scores with intervals) and `demo_results.json` in the workdir. Each model's workdir holds
     its TensorBoard logs, config and provenance.

It prints what it measured, whatever that is. The samples are smaller than the studies' (500
validation / 1000 test verses) to keep `make demo` within 15 minutes on a 2-core CPU; the
intervals say how much that costs. A rerun reuses the prepared data, the finished checkpoints
and the decoded outputs.
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
TRAINED_FUSION = "deep"
FUSION_WEIGHTS = (0.1, 0.3, 0.5)  # shallow-fusion λ candidates; 0 joins them (protocol.with_zero)
EXAMPLES = 3
SYSTEMS = ("copy", "none", "shallow", TRAINED_FUSION)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", default="workdirs/demo")
    parser.add_argument("--fraction", type=float, default=5.0,
                        help="percent of the YLT -> ASV training pairs the seq2seq models see")
    parser.add_argument("--val_sample", type=int, default=200,
                        help="validation verses λ is chosen on (a seeded sample over every book)")
    parser.add_argument("--test_sample", type=int, default=500,
                        help="test verses scored (a seeded sample over every book; 0: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the samples and of the paired bootstrap")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lm_steps", type=int, default=1000, help="0: the config's steps")
    parser.add_argument("--s2s_epochs", type=int, default=10,
                        help="epochs of the seq2seq model over its fraction of the pairs")
    parser.add_argument("--fusion_steps", type=int, default=150,
                        help="steps of deep fusion's gate and output layer")
    return parser.parse_args(argv)


def train_model(config_file: str, workdir: Path, overrides: list[str]) -> dict:
    """Trains (or resumes, or finds finished) a workdir; returns its validation metrics."""
    from lmfuse.evaluate.validation import translation_hook
    from lmfuse.train.evaluation import evaluate
    from lmfuse.train.loop import train
    from lmfuse.train.workdir import load_model

    config = load_config(config_file, overrides)
    print(f"\n== {config_file} {' '.join(overrides)} -> {workdir}", flush=True)
    # As `lmfuse train` does: an encoder-decoder's evaluations also log BLEU / chrF curves.
    train(config, workdir, progress=True, extra_eval=translation_hook(config))
    cached = workdir / "demo_validation.json"
    trainer, params, step = load_model(workdir)
    if cached.is_file() and json.loads(cached.read_text())["step"] == step:
        return json.loads(cached.read_text())
    result = {"step": step, **evaluate(trainer, params, "validation")}
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def train_all(root: Path, args: argparse.Namespace) -> dict[str, dict]:
    """The LM, the plain seq2seq model and its deep fusion with the LM: validation metrics."""
    lm_dir, s2s_dir, fused_dir = (root / name for name in WORKDIRS)
    data = [f"--config.data.train_fraction={args.fraction / 100:g}"]
    # 5% is 500 pairs: dropout keeps the model from memorising them within a few epochs.
    # Validation (loss on 16 batches, BLEU / chrF on 64 verses) every 80 steps and at the end
    # draws the curves without stopping early: the last checkpoint is the one decoded and
    # fused. Each model's validation perplexity in the table is over the whole split.
    curves = ["--config.train.eval_batches=16"]
    s2s = [*data, *curves, f"--config.train.epochs={args.s2s_epochs}",
           "--config.model.dropout=0.1", "--config.train.eval_every=80",
           "--config.train.checkpoint_every=200"]
    fused = [*data, *curves, "--config.model.dropout=0.1",
             f"--config.fusion.method={TRAINED_FUSION}", f"--config.fusion.lm_workdir={lm_dir}",
             f"--config.fusion.s2s_workdir={s2s_dir}", f"--config.train.steps={args.fusion_steps}",
             f"--config.train.eval_every={args.fusion_steps}",  # once, at the end
             "--config.optimizer.learning_rate=1e-3"]
    return {
        "lm": train_model(LM_CONFIG, lm_dir, [*curves, *([f"--config.train.steps={args.lm_steps}"]
                                                         if args.lm_steps else [])]),
        "none": train_model(S2S_CONFIG, s2s_dir, s2s),
        TRAINED_FUSION: train_model(S2S_CONFIG, fused_dir, fused),
    }


WORKDIRS = ("lm_transformer", "s2s_transformer", f"fusion_{TRAINED_FUSION}")


def decode_scores(root: Path, args: argparse.Namespace) -> dict:
    """Test scores of the plain, the shallow-fused (λ chosen on validation) and the deep-fused
    decoder, and their paired-bootstrap comparisons."""
    from flax import linen as nn

    from lmfuse.evaluate import protocol
    from lmfuse.evaluate.fusion_setup import FusionFlags, build_decode_fusion
    from lmfuse.evaluate.translation import TranslateOptions, split_examples, translate_and_score
    from lmfuse.train.workdir import load_model

    lm_dir, s2s_dir, fused_dir = (root / name for name in WORKDIRS)
    models = {}
    for name, workdir in (("none", s2s_dir), (TRAINED_FUSION, fused_dir)):
        trainer, params, _ = load_model(workdir)
        models[name] = (trainer, nn.meta.unbox(params))
    config = models["none"][0].config
    options = TranslateOptions.from_config(config, beam_size=args.beam,
                                           max_new_tokens=config.data.max_length, progress=True)
    splits = {}
    for split, size in (("validation", args.val_sample), ("test", args.test_sample)):
        ids, sources, references = split_examples(config, split)
        ids, (sources, references) = protocol.sample_split(ids, (sources, references), size,
                                                           args.seed)
        (root / f"demo_{split}_ids.txt").write_text("".join(i + "\n" for i in ids))
        splits[split] = (sources, references)

    def run(split: str, model: str, weight: float = 0.0) -> dict:
        sources, references = splits[split]
        flags = (FusionFlags(method="shallow", lm=str(lm_dir), lm_weight=weight) if weight
                 else FusionFlags())
        trainer, params = models[model]
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
        sweep[weights["lm"]] = run("validation", "none", weights["lm"])["bleu"]
        print(f"validation BLEU with shallow fusion λ={weights['lm']:g}: "
              f"{sweep[weights['lm']]:.2f}", flush=True)
        return sweep[weights["lm"]]

    chosen, _ = protocol.select_on_validation({"lm": FUSION_WEIGHTS}, validation_bleu)
    best = chosen["lm"]
    results = {"none": run("test", "none")}
    results["shallow"] = run("test", "none", best) if best else results["none"]
    results[TRAINED_FUSION] = run("test", TRAINED_FUSION)
    sources, references = splits["test"]
    systems = {"copy": sources, **{k: v["hypotheses"] for k, v in results.items()}}
    confidence = {baseline: protocol.paired_bootstrap(systems, references, baseline, args.seed)
                  for baseline in ("copy", "none")}
    return {"beam": args.beam, "val_sample": args.val_sample, "test_sample": args.test_sample,
            "seed": args.seed, "fraction": args.fraction, "test_sentences": len(sources),
            "validation_sweep": {f"{k:g}": v for k, v in sweep.items()}, "lm_weight": best,
            "results": results, "confidence": confidence, "sources": sources,
            "references": references}


def system_names(scores: dict) -> dict[str, str]:
    shallow = (f"seq2seq + LM, shallow λ={scores['lm_weight']:g}" if scores["lm_weight"]
               else "seq2seq + LM, shallow (val. chose λ=0)")
    return {"copy": "copy the source", "none": "seq2seq", "shallow": shallow,
            TRAINED_FUSION: f"seq2seq + LM, {TRAINED_FUSION} fusion"}


def print_report(evals: dict, scores: dict) -> None:
    results, confidence = scores["results"], scores["confidence"]
    names = system_names(scores)
    base = results["none"]
    print(f"\nYLT -> ASV, seq2seq models on {scores['fraction']:g}% of the training pairs; "
          f"{scores['test_sentences']} test verses (seeded sample over every book, seed "
          f"{scores['seed']}), beam {scores['beam']}")
    print(f"| {'system':<38} | {'BLEU ± 95% CI':>14} | {'p vs copy':>9} | {'p vs none':>9} | "
          f"{'chrF':>6} | {'PINC':>6} | {'len':>5} |")
    print(f"|{'-' * 40}|{'-' * 16}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 7}|")
    for key in SYSTEMS:
        r = confidence["copy"][key]
        p_copy = "" if r["bleu_p"] is None else f"{r['bleu_p']:.3f}"
        p_none = confidence["none"][key]["bleu_p"] if key not in ("none", "copy") else None
        if key == "shallow" and not scores["lm_weight"]:
            p_none = None  # the same outputs as the plain model
        p_none = "" if p_none is None else f"{p_none:.3f}"
        prefix = "copy_" if key == "copy" else ""
        row = base if key == "copy" else results[key]
        print(f"| {names[key]:<38} | {r['bleu']:6.2f} ± {r['bleu_ci']:5.2f} | {p_copy:>9} | "
              f"{p_none:>9} | {row[prefix + 'chrf']:6.2f} | {row[prefix + 'pinc']:6.2f} | "
              f"{row[prefix + 'length_ratio']:5.2f} |")
    sweep = ", ".join(f"λ={k}: {v:.2f}" for k, v in scores["validation_sweep"].items())
    print(f"\nvalidation BLEU ({scores['val_sample']} verses): {sweep}")
    print("p: sacrebleu's paired bootstrap (1000 resamples); a difference with p >= 0.05 is "
          "not a finding")
    print("validation perplexity per token: " + ", ".join(
        f"{name} {evals[name]['perplexity']:.2f} (step {evals[name]['step']})"
        for name in ("lm", "none", TRAINED_FUSION)))
    print(f"BLEU signature: {base['bleu_signature']}")
    for i in range(min(EXAMPLES, len(scores["sources"]))):
        print(f"\n[{i + 1}] source (YLT):  {scores['sources'][i]}")
        for key in SYSTEMS[1:]:
            print(f"    {key + ':':<13} {results[key]['hypotheses'][i]}")
        print(f"    reference:    {scores['references'][i]}")


def plot(root: Path, scores: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, workdir in zip(("LM", "seq2seq", TRAINED_FUSION), WORKDIRS, strict=True):
        path = root / workdir / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # Train loss includes label smoothing; validation reports the plain NLL.
        for split, key, style in (("train", "loss", "-"), ("validation", "nll", "o--")):
            points = [(r["step"], r[key]) for r in records
                      if r.get("split") == split and r.get(key) is not None]
            if points:
                curves.plot(*zip(*points, strict=True), style, label=f"{name} {split}")
    curves.set(xlabel="step", ylabel="loss (nats/token)", title="training")
    curves.legend(fontsize=8)
    names = system_names(scores)
    against_copy = scores["confidence"]["copy"]
    bleus = [against_copy[k]["bleu"] for k in SYSTEMS]
    errors = [against_copy[k]["bleu_ci"] for k in SYSTEMS]
    bars.bar([names[k].replace("seq2seq + LM, ", "+ LM\n") for k in SYSTEMS], bleus,
             yerr=errors, capsize=4, color=["grey", "tab:blue", "tab:orange", "tab:green"])
    for i, value in enumerate(bleus):
        bars.text(i, value, f"{value:.1f}", ha="center", va="bottom")
    bars.set(ylabel="BLEU (95% bootstrap interval)",
             title=f"YLT -> ASV, {scores['fraction']:g}% of the pairs, "
                   f"{scores['test_sentences']} test verses")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_library_logs()  # as the lmfuse commands do: Orbax's routine notices are not news
    root = Path(args.workdir)
    started = time.perf_counter()
    try:
        evals = train_all(root, args)
        cache = root / "demo_results.json"
        key = {"steps": {name: e["step"] for name, e in evals.items()}, "beam": args.beam,
               "val_sample": args.val_sample, "test_sample": args.test_sample,
               "seed": args.seed, "fraction": args.fraction}
        scores = json.loads(cache.read_text()) if cache.is_file() else None
        if scores is None or {k: scores.get(k) for k in key} != key:
            scores = {**decode_scores(root, args), **key}
            cache.write_text(json.dumps(scores, indent=2) + "\n")
        else:
            print(f"\n(decoded outputs reused from {cache})")
    except LmfuseError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    print_report(evals, scores)
    plot(root, scores, root / "demo.png")
    print(f"\nwrote {root / 'demo.png'}, {root / 'demo_results.json'}; TensorBoard: "
          f"tensorboard --logdir {root}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
