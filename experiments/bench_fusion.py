"""Shallow-fusion beam search against decoding the seq2seq model and the LM separately, on CPU.

    python experiments/bench_fusion.py            # prints the table
    python experiments/bench_fusion.py --write    # also records it in BENCHMARKS.md
    python experiments/bench_fusion.py --quick    # smoke run: tiny models, 2 repeats

Models (random weights, fp32, one shared 8000-piece vocabulary): a Transformer encoder-decoder
(width 256, 3 + 3 layers, 4 heads, MLP 1024) and a Transformer LM (width 256, 4 layers, 4 heads,
MLP 1024). A batch of 32 random sources of 48 tokens is decoded with beam size 4 for 48 tokens
(no EOS stop, so every decoder does the same number of steps):

* fused: `beam_search(shallow_fusion(s2s, lm))`: both models step inside one compiled loop;
* separate: `beam_search(s2s)` plus `beam_search(lm)` on the same batch, timed back to back.

The issue's target is fused / (s2s + LM) <= 1.1: fusion should cost no more than running the two
models. Each repeat times the three calls in a rotated order; the table gives median times and
the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import cpu_model, write_generated_block  # noqa: E402

from lmfuse.data.tokenizer import BOS_ID  # noqa: E402
from lmfuse.decode import beam_search, lm_decode_step, seq2seq_decode_step  # noqa: E402
from lmfuse.decode.fusion import fused_params, fusion_weights, shallow_fusion  # noqa: E402
from lmfuse.models import build_model, model_defaults  # noqa: E402

SECTION = "## Fusion decoding cost (CPU)"
TARGET = 1.1


def build(name: str, vocab: int, quick: bool, **extra):
    c = model_defaults().to_dict()
    width = 32 if quick else 256
    c.update(name=name, emb_dim=width, hidden_dim=width, num_heads=4, mlp_dim=4 * width,
             dropout=0.0, max_len=128, positions="learned", **extra)
    model = build_model(c, vocab)
    args = (jnp.ones((1, 8), jnp.int32),) * (2 if name == "s2s_transformer" else 1)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *args)["params"])
    return model, params


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    quick, repeats = args.quick, (2 if args.quick else args.repeats)
    vocab, rows, length, beam, new = (500, 4, 12, 2, 12) if quick else (8000, 32, 48, 4, 48)

    s2s, s2s_params = build("s2s_transformer", vocab, quick, num_layers=3, num_encoder_layers=3)
    lm, lm_params = build("transformer", vocab, quick, num_layers=4)
    sources = jax.random.randint(jax.random.key(1), (rows, length), 5, vocab, jnp.int32)
    batch = {"inputs": sources, "prompt": jnp.full((rows, 1), BOS_ID, jnp.int32)}
    lm_batch = {"prompt": batch["prompt"]}
    fused = shallow_fusion(seq2seq_decode_step(s2s), lm_decode_step(lm))
    params = fused_params(s2s_params, fusion_weights(0.3), lm=lm_params)
    kw = dict(beam_size=beam, max_new_tokens=new, eos_id=None)
    calls = {
        "fused": lambda: beam_search(fused, params, batch, **kw).tokens,
        "s2s": lambda: beam_search(seq2seq_decode_step(s2s), s2s_params, batch, **kw).tokens,
        "lm": lambda: beam_search(lm_decode_step(lm), lm_params, lm_batch, **kw).tokens,
    }
    load = os.getloadavg()[0]
    compile_s = {name: timed(fn) for name, fn in calls.items()}  # first calls: compile + run
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names[r % 3:] + names[: r % 3]:
            times[name].append(timed(calls[name]))
        print(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names))
    ratios = [f / (s + m) for f, s, m in zip(times["fused"], times["s2s"], times["lm"], strict=True)]
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = statistics.median(ratios)
    verdict = "met" if ratio <= TARGET else "not met"
    command = "python experiments/bench_fusion.py" + (" --write" if args.write else "")
    table = (
        f"Measured {datetime.date.today()} on {cpu_model()}, {os.cpu_count()} cores (JAX "
        f"{jax.__version__}, Python {platform.python_version()}); fp32, vocab {vocab}, batch "
        f"{rows} x source {length}, beam {beam}, {new} new tokens, no EOS stop; {repeats} "
        f"repeats in rotated order; 1-minute load average {load:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after.\n\n    {command}\n\n"
        "| fused beam (s) | s2s beam (s) | LM beam (s) | fused / (s2s + LM), median per repeat "
        "| target | first call, compile included: fused / s2s / LM (s) |\n|---:|---:|---:|---:|---|---:|\n"
        f"| {med['fused']:.2f} | {med['s2s']:.2f} | {med['lm']:.2f} | {ratio:.2f}x | "
        f"<= {TARGET}x: {verdict} | {compile_s['fused']:.1f} / {compile_s['s2s']:.1f} / "
        f"{compile_s['lm']:.1f} |\n"
    )
    print(table)
    if args.write and not quick:
        path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
        write_generated_block(path, SECTION, "bench_fusion", "default", table.rstrip("\n"))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
