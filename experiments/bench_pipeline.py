"""The training input pipeline: lmfuse's reading against record-by-record and Grain's default.

    python experiments/bench_pipeline.py                 # both configs below, 5 runs a side
    python experiments/bench_pipeline.py --write         # also records the table in BENCHMARKS.md

Each run builds `lmfuse.data.pipeline.make_dataset` for a config's training split (what
`lmfuse train` iterates) and times `--batches` batches after the first, three ways, alternating
sides so that load from other processes hits all alike:

* in memory: the split read in one go (`load_examples(..., in_memory=True)`, what a training
  run of at least one epoch does) and lmfuse's `READ_OPTIONS` (no read-ahead threads);
* record by record: the same read options, each record decoded from its ArrayRecord file when
  the pipeline reaches it (what a shorter run does);
* Grain default: record by record with Grain's default `ReadOptions()` (16 threads, 500
  examples read ahead), lmfuse's reading before either change.

The median of the per-pair ratios is the number to quote; the in-memory side's one-off read of
the split is reported beside it. Every run's batches are hashed: all sides must produce the
same bytes. Needs the prepared Bible data (`lmfuse data prepare`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shlex
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import grain
from bench_train import cpu_model, write_generated_block

from lmfuse.config import load_config
from lmfuse.data import corpora, pipeline

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Input pipeline (CPU)"
CONFIGS = ("configs/carlson/kjv_asv.py", "configs/lm_transformer.py")
# side: (read options, whole split read in memory)
SIDES = {"in memory": (pipeline.READ_OPTIONS, True),
         "record by record": (pipeline.READ_OPTIONS, False),
         "grain default": (grain.ReadOptions(), False)}


def time_side(examples, tokenizer, options, read_options, batches: int) -> tuple[float, str]:
    """Seconds for `batches` batches after the first, and a digest of every batch's arrays."""
    saved, pipeline.READ_OPTIONS = pipeline.READ_OPTIONS, read_options
    try:
        iterator = iter(pipeline.make_dataset(examples, tokenizer, options))
    finally:
        pipeline.READ_OPTIONS = saved
    digest = hashlib.sha256()
    next(iterator)  # the first batch starts the threads: not timed
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        for key in sorted(batch):
            digest.update(batch[key].tobytes())
    return time.perf_counter() - started, digest.hexdigest()


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """The median over runs of slow seconds / fast seconds, pairing runs in order."""
    return statistics.median(a / b for a, b in zip(slow, fast, strict=True))


def bench_config(path: str, batches: int, runs: int) -> dict:
    config = load_config(str(ROOT / path), [])
    tokenizer = corpora.prepare(config)
    options = pipeline.PipelineOptions.from_config(config, "train")
    seconds = {side: [] for side in SIDES}
    load_seconds = []
    digests = set()
    for _ in range(runs):
        for side, (read_options, in_memory) in SIDES.items():
            started = time.perf_counter()
            examples = corpora.load_examples(config, "train", in_memory=in_memory).dataset
            if in_memory:
                load_seconds.append(time.perf_counter() - started)
            took, digest = time_side(examples, tokenizer, options, read_options, batches)
            seconds[side].append(took)
            digests.add(digest)
    return {"config": path, "view": options.view, "rows": options.batch_size,
            "batches": batches, "seconds": seconds, "same": len(digests) == 1,
            "load_seconds": statistics.median(load_seconds),
            "ratio": median_ratio(seconds["record by record"], seconds["in memory"]),
            "ratio_default": median_ratio(seconds["grain default"], seconds["in memory"])}


def markdown(results: list[dict], runs: int, load: tuple[float, float], command: str) -> str:
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {cpu_model()}, {os.cpu_count()} cores "
        f"(Python {platform.python_version()}, Grain {metadata.version('grain')}); "
        f"{runs} runs per side, alternating; 1-minute load average {load[0]:.1f} before / "
        f"{load[1]:.1f} after.",
        "",
        f"    {command}",
        "",
        "| config | view | rows | batches a run | in memory batches/s | record by record "
        "batches/s | Grain default batches/s | in memory / record by record | in memory / "
        "Grain default | reading the split in memory, s | same batches |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rate = {side: r["batches"] / statistics.median(s) for side, s in r["seconds"].items()}
        lines.append(f"| {r['config']} | {r['view']} | {r['rows']} | {r['batches']} | "
                     f"{rate['in memory']:.2f} | {rate['record by record']:.2f} | "
                     f"{rate['grain default']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['ratio_default']:.2f}x | {r['load_seconds']:.1f} | "
                     f"{'yes' if r['same'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--batches", type=int, default=40, help="timed batches a run (40)")
    parser.add_argument("--runs", type=int, default=5, help="runs per side (5)")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [
        "experiments/bench_pipeline.py", *(sys.argv[1:] if argv is None else argv)])
    load_before = os.getloadavg()[0]
    results = []
    for path in args.configs:
        results.append(bench_config(path, args.batches, args.runs))
        print(f"{path}: {results[-1]['ratio']:.2f}x record by record, "
              f"{results[-1]['ratio_default']:.2f}x Grain default, "
              f"same batches: {results[-1]['same']}",
              flush=True)
    block = markdown(results, args.runs, (load_before, os.getloadavg()[0]), command)
    print(block)
    if args.write:
        write_generated_block(ROOT / "BENCHMARKS.md", SECTION, "bench_pipeline", "train", block)
    return 0 if all(r["same"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
