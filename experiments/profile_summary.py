"""Where a GPU's time goes in a jax.profiler trace: busy share, kernel count and time by kind.

    python experiments/profile_summary.py TRACE [--per N --unit step] [--top 15] [--json PATH]

TRACE is the `perfetto_trace.json.gz` that `jax.profiler.trace(..., create_perfetto_trace=True)`
writes (experiments/device_check.py --profile DIR writes one for its train steps and one for a
decode call). Only the GPU's stream lines are read, the kernels and copies the device ran:

* span: first kernel start to last kernel end;
* busy: the union of the kernel intervals over the span (the rest the GPU waited: on the host,
  on launches, on copies it did not overlap);
* kernels: how many ran, and per --unit when --per N divides the trace into N equal units
  (train steps, generated tokens);
* by kind: time and count of matrix products, attention, elementwise/reduction fusions, copies
  and the rest, by the kernel's name (`KINDS`), and the longest kernels by total time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
from pathlib import Path
from typing import Any

# Kernel kinds by words in the kernel's name; the first kind whose word occurs wins.
KINDS = (
    ("attention", ("fmha", "flash", "cudnn", "attention", "softmax")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "dot")),
    ("copy", ("memcpy", "memset", "copy", "transpose")),
    ("reduce", ("reduce", "reduction")),
    ("fusion", ("fusion", "loop_", "input_", "elementwise")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, words in KINDS:
        if any(word in lowered for word in words):
            return kind
    return "other"


def gpu_kernel_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The complete ('X') events on the stream lines of every /device:GPU process."""
    gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                and str(e.get("args", {}).get("name", "")).startswith("/device:GPU")}
    stream_threads = {(e["pid"], e["tid"]) for e in events
                      if e.get("ph") == "M" and e.get("name") == "thread_name"
                      and e.get("pid") in gpu_pids
                      and str(e.get("args", {}).get("name", "")).startswith("Stream")}
    return [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in stream_threads
            and e.get("dur") is not None]


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the (start, end) intervals, overlaps counted once."""
    covered, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                covered += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        covered += current_end - current_start
    return covered


def summarize(events: list[dict[str, Any]], per: int = 1, top: int = 15) -> dict[str, Any]:
    """Span, busy share and kernel counts and times (microseconds) of a trace's GPU kernels."""
    kernels = gpu_kernel_events(events)
    if not kernels:
        raise ValueError("no GPU stream events in the trace: was it taken on a GPU, with "
                         "create_perfetto_trace=True?")
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    busy = union_length(intervals)
    by_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    by_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for event in kernels:
        for table, key in ((by_kind, kind_of(event["name"])), (by_name, event["name"])):
            table[key][0] += float(event["dur"])
            table[key][1] += 1
    kernel_time = sum(float(e["dur"]) for e in kernels)
    return {
        "span_us": span, "busy_us": busy, "busy_fraction": busy / span if span else 0.0,
        "kernels": len(kernels), "kernel_time_us": kernel_time, "per": per,
        "span_us_per_unit": span / per, "kernels_per_unit": len(kernels) / per,
        "by_kind": {k: {"us": v[0], "count": int(v[1]), "share": v[0] / kernel_time}
                    for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1][0])},
        "top": [{"name": k, "us": v[0], "count": int(v[1]), "share": v[0] / kernel_time}
                for k, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]],
    }


def load_events(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    return data["traceEvents"] if isinstance(data, dict) else data


def print_summary(summary: dict[str, Any], unit: str) -> None:
    per = summary["per"]
    print(f"span {summary['span_us'] / 1e3:.2f} ms ({summary['span_us_per_unit'] / 1e3:.3f} ms a "
          f"{unit}); GPU busy {100 * summary['busy_fraction']:.1f}% of it; "
          f"{summary['kernels']} kernels ({summary['kernels_per_unit']:.1f} a {unit}), "
          f"{summary['kernel_time_us'] / 1e3:.2f} ms of kernel time")
    print(f"\n| kind | ms a {unit} | share of kernel time | kernels a {unit} |")
    print("|---|---:|---:|---:|")
    for kind, row in summary["by_kind"].items():
        print(f"| {kind} | {row['us'] / per / 1e3:.3f} | {100 * row['share']:.1f}% | "
              f"{row['count'] / per:.1f} |")
    print(f"\n| kernel (longest total) | ms a {unit} | share | count a {unit} |")
    print("|---|---:|---:|---:|")
    for row in summary["top"]:
        name = row["name"] if len(row["name"]) <= 70 else row["name"][:67] + "..."
        print(f"| `{name}` | {row['us'] / per / 1e3:.3f} | {100 * row['share']:.1f}% | "
              f"{row['count'] / per:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="perfetto_trace.json.gz from jax.profiler")
    parser.add_argument("--per", type=int, default=1, help="units the trace covers (steps, tokens)")
    parser.add_argument("--unit", default="trace", help="what one unit is called in the report")
    parser.add_argument("--top", type=int, default=15, help="how many kernels to list")
    parser.add_argument("--json", default="", help="also write the summary to this file")
    args = parser.parse_args(argv)
    if args.per <= 0:
        print(f"profile_summary: error: --per={args.per} must be positive", file=sys.stderr)
        return 2
    try:
        summary = summarize(load_events(args.trace), args.per, args.top)
    except (OSError, ValueError, KeyError) as error:
        print(f"profile_summary: error: {args.trace}: {error}", file=sys.stderr)
        return 2
    print_summary(summary, args.unit)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
