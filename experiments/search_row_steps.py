"""Rows x steps the beam search runs on a split, per batch against pooled (`beam_pool`).

    python experiments/search_row_steps.py MODE --workdir workdirs/demo/s2s_transformer

MODE: `per_batch` (each batch searched alone, as `beam_search` does: window 1, no looks inside
a cache phase), `phase_ends` (done lines leave at the cache phases' ends only) or `every8`
(every 8 new tokens). Runs `lmfuse translate --split test` and prints the row-steps, the
stage calls and the wall time; the hypotheses go to --output.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

from lmfuse.cli import main
from lmfuse.decode import beam_pool
from lmfuse.evaluate import translation

MODES = {"per_batch": {"window": 1, "every": 0}, "phase_ends": {"every": 0}, "every8": {"every": 8}}


def run(mode: str, workdir: str, output: str) -> dict[str, float]:
    counted = {"row_steps": 0, "calls": 0}
    search_stage = beam_pool.search_stage

    def counting(decoder, params, batch, stage, carry=None, until=None, **options):
        before = 0 if carry is None else int(carry.step)
        carry, done = search_stage(decoder, params, batch, stage, carry, until, **options)
        counted["row_steps"] += (int(carry.step) - before) * batch["prompt"].shape[0]
        counted["calls"] += 1
        return carry, done

    beam_pool.search_stage = counting
    translation.search_batches = functools.partial(beam_pool.search_batches, **MODES[mode])
    start = time.perf_counter()
    if main(["translate", "--workdir", workdir, "--split", "test", "--output", output]):
        sys.exit("search_row_steps: lmfuse translate failed")
    return {**counted, "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--output", default="/dev/null")
    args = parser.parse_args()
    print(args.mode, run(args.mode, args.workdir, args.output))
