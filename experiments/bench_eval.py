"""Decoding a dataset: `lmfuse eval` at an older revision against the working tree, same command.

    python experiments/bench_eval.py --workdir workdirs/demo/s2s_transformer --old 60ba1e8
    python experiments/bench_eval.py ... --write     # also records the table in BENCHMARKS.md

Each side runs `python -m lmfuse.cli eval --workdir W --split S` as a fresh process from its
own source tree (the old revision checked out into a temporary `git worktree`, removed after),
with the same Python environment, data directory and workdir, so the wall time covers what a
researcher waits for: start-up, data, compilation, decoding and scoring. Runs alternate
old / new (`--runs` pairs) so that load from other processes hits both alike; the median of the
per-pair ratios is the number to quote. The table also compares what the two sides decoded:
BLEU and chrF, and how many hypotheses are identical line by line.

The new side runs twice per round: with an empty compilation cache (a first run, compiling
everything) and with the cache a previous run filled (`lmfuse/cli/compilation_cache.py`: a
researcher's second eval of the same model). The old side predates the cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_train import cpu_model, write_generated_block

from lmfuse.train import integrity

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Decoding a dataset (CPU)"


def run_eval(tree: Path, workdir: Path, split: str, sample: int, output: Path, cache: str
             ) -> float:
    """Wall seconds of one `lmfuse eval` run from `tree`'s sources, compiled programs kept in
    `cache` ('off': none)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "LMFUSE_COMPILATION_CACHE": cache,
           "JAX_COMPILATION_CACHE_DIR": ""}
    command = [sys.executable, "-m", "lmfuse.cli", "eval", "--workdir", str(workdir),
               "--split", split, "--sample", str(sample), "--output", str(output)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench_eval: lmfuse eval failed in {tree}:\n{done.stderr[-2000:]}")
    return seconds


def model_defaults_in(tree: Path) -> dict:
    """The model config defaults of the lmfuse sources in `tree`."""
    code = ("import json; from lmfuse.models.registry import model_defaults; "
            "print(json.dumps(model_defaults().to_dict()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env={
        **os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def workdir_for_old_side(workdir: Path, old: dict, new: dict, copy: Path) -> Path:
    """`workdir` as a tree with model config defaults `old` can read it (`new`: this tree's):
    a copy whose config leaves out the model keys added since, when they hold their default
    (a new key's default keeps the behaviour that predates it, so the old side computes the
    same model). A key set otherwise stops here."""
    config = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
    added = sorted(set(config["model"]) - set(old))
    if not added:
        return workdir
    changed = [key for key in added if config["model"][key] != new.get(key)]
    if changed:
        sys.exit(f"bench_eval: {workdir} sets model.{changed[0]}={config['model'][changed[0]]!r}, "
                 "which the old revision predates; benchmark a workdir trained with its default")
    def without_added(model: dict) -> dict:
        return {key: value for key, value in model.items() if key in old}

    shutil.copytree(workdir, copy)
    config["model"] = without_added(config["model"])
    (copy / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # Each checkpoint keeps its own config item, signed in its integrity record: edit and
    # re-sign the copy's, so the old side reads them as intact.
    for config_file in sorted(copy.glob(f"checkpoints/*/config/{integrity.JSON_FILE}")):
        stored = json.loads(config_file.read_text(encoding="utf-8"))
        stored["model"] = without_added(stored["model"])
        config_file.write_text(json.dumps(stored), encoding="utf-8")
        record_file = config_file.parents[1] / integrity.ITEM / integrity.JSON_FILE
        if record_file.is_file():
            record = json.loads(record_file.read_text(encoding="utf-8"))
            record["digests"]["config"] = integrity.json_digest(stored)
            record_file.write_text(json.dumps(record), encoding="utf-8")
    print(f"old side: a copy of the workdir without model.{', model.'.join(added)} "
          "(at their defaults)", flush=True)
    return copy


def read_side(output: Path) -> dict:
    report = json.loads(output.read_text())
    hypotheses = output.with_name(f"{output.stem}_hypotheses.txt").read_text().splitlines()
    return {"bleu": report["bleu"], "chrf": report["chrf"], "hypotheses": hypotheses}


SIDES = {"old": "first run", "new": "first run (empty compilation cache)",
         "warm": "again (compilation cache filled)"}


def markdown(result: dict, args, command: str) -> str:
    old = result["old"]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {cpu_model()}, {os.cpu_count()} cores "
        f"(Python {platform.python_version()}); {args.runs} run(s) per side, alternating; "
        f"1-minute load average {result['load'][0]:.1f} before / {result['load'][1]:.1f} after.",
        "",
        f"    {command}",
        "",
        "| side | source tree | run | wall s (median) | BLEU | chrF | speed vs old (median pair "
        "ratio) | hypotheses identical to old |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for side, run in SIDES.items():
        scores, wall = result[side], result["wall"][side]
        tree = args.old if side == "old" else "working tree"
        if side == "old":
            ratio = same = ""
        else:
            ratio = f"{result['ratio'][side]:.2f}x"
            same = sum(a == b for a, b in zip(old["hypotheses"], scores["hypotheses"],
                                              strict=True))
            same = f"{same} of {len(scores['hypotheses'])}"
        lines.append(f"| {side} | {tree} | {run} | {statistics.median(wall):.1f} | "
                     f"{scores['bleu']:.2f} | {scores['chrf']:.2f} | {ratio} | {same} |")
    lines += ["", "Per-run wall seconds (" + "; ".join(SIDES) + "): " + "; ".join(
        ", ".join(f"{x:.1f}" for x in result["wall"][side]) for side in SIDES)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="an encoder-decoder's workdir")
    parser.add_argument("--old", required=True, help="git revision of the old side")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--sample", type=int, default=0,
                        help="a seeded sample of this many pairs (default 0: the whole split)")
    parser.add_argument("--runs", type=int, default=1, help="runs per side (default 1)")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if not (workdir / "checkpoints").is_dir():
        parser.error(f"--workdir {args.workdir}: no checkpoints there; train it first "
                     "(make demo trains workdirs/demo/s2s_transformer)")
    command = "python " + " ".join(
        shlex.quote(a) for a in ["experiments/bench_eval.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(old_tree), args.old], check=True)
        try:
            old_workdir = workdir_for_old_side(workdir, model_defaults_in(old_tree),
                                               model_defaults_in(ROOT), Path(tmp) / "old-workdir")
            warm_cache = str(Path(tmp) / "warm-cache")
            print("filling the compilation cache (untimed) ...", flush=True)
            run_eval(ROOT, workdir, args.split, args.sample, Path(tmp) / "fill.json", warm_cache)
            load_before = os.getloadavg()[0]
            wall = {side: [] for side in SIDES}
            for run in range(args.runs):
                sides = (("old", old_tree, old_workdir, "off"),
                         ("new", ROOT, workdir, str(Path(tmp) / f"empty-cache-{run}")),
                         ("warm", ROOT, workdir, warm_cache))
                for side, tree, side_workdir, cache in sides:
                    seconds = run_eval(tree, side_workdir, args.split, args.sample,
                                       Path(tmp) / f"{side}.json", cache)
                    wall[side].append(seconds)
                    print(f"run {run + 1} {side}: {seconds:.1f} s", flush=True)
            result = {
                "wall": wall, "load": (load_before, os.getloadavg()[0]),
                "ratio": {side: statistics.median(o / n for o, n in zip(
                    wall["old"], wall[side], strict=True)) for side in ("new", "warm")},
                **{side: read_side(Path(tmp) / f"{side}.json") for side in SIDES},
            }
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(old_tree)], check=False)
    block = markdown(result, args, command)
    print(block)
    if args.write:
        write_generated_block(ROOT / "BENCHMARKS.md", SECTION, "bench_eval", args.split, block)


if __name__ == "__main__":
    main()
