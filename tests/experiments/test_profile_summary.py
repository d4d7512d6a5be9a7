"""experiments/profile_summary.py: the GPU's busy share, kernel counts and time by kind, read
from a jax.profiler perfetto trace (here, traces written to the format jax writes)."""

from __future__ import annotations

import gzip
import json

import profile_summary
import pytest
from hypothesis import given
from hypothesis import strategies as st


def trace(kernels: list[tuple[float, float, str]], tid: int = 7) -> list[dict]:
    """A GPU process with one compute stream holding `kernels` (start, duration, name), an
    'XLA Ops' line (derived, not kernels: never counted) and a host thread."""
    return [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 1, "tid": tid, "name": "thread_name",
         "args": {"name": "Stream #13(Compute)"}},
        {"ph": "M", "pid": 1, "tid": 99, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "tid": 5, "name": "thread_name", "args": {"name": "Stream #1"}},
        {"ph": "X", "pid": 1, "tid": 99, "ts": 0, "dur": 1000, "name": "fusion.1"},
        {"ph": "X", "pid": 2, "tid": 5, "ts": 0, "dur": 1000, "name": "host work"},
        *({"ph": "X", "pid": 1, "tid": tid, "ts": ts, "dur": dur, "name": name}
          for ts, dur, name in kernels),
    ]


def test_busy_share_counts_overlaps_once_and_gaps_as_idle():
    events = trace([(0, 10, "sm90_xmma_gemm_bf16bf16"), (5, 10, "loop_add_fusion"),
                    (30, 10, "cudnn_fmha_fwd"), (40, 20, "input_reduce_fusion_3")])
    summary = profile_summary.summarize(events, per=2)
    assert summary["kernels"] == 4 and summary["kernels_per_unit"] == 2
    assert summary["span_us"] == 60 and summary["span_us_per_unit"] == 30
    assert summary["busy_us"] == 15 + 30  # [0, 15] and [30, 60]
    assert summary["busy_fraction"] == pytest.approx(45 / 60)
    assert summary["kernel_time_us"] == 50
    kinds = summary["by_kind"]
    assert list(kinds) == ["reduce", "matmul", "fusion", "attention"]  # longest first
    assert kinds["reduce"] == {"us": 20.0, "count": 1, "share": 0.4}
    assert summary["top"][0]["name"] == "input_reduce_fusion_3"


@pytest.mark.parametrize(("name", "kind"), [
    ("nvjet_sm90_tst_128x128_64x6_2x1_v_bz_TNT", "matmul"),
    ("gemm_fusion_dot_937", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention"),
    ("loop_convert_multiply_fusion_23", "fusion"),
    ("input_add_reduce_fusion_161", "reduce"),
    ("Memcpy DtoD", "copy"),
    ("void cub::DeviceScanKernel", "other"),
])
def test_kernel_kinds_by_name(name, kind):
    assert profile_summary.kind_of(name) == kind


@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 100)), min_size=1, max_size=30))
def test_union_is_bounded_by_the_span_and_the_sum(intervals):
    pairs = [(float(start), float(start + length)) for start, length in intervals]
    covered = profile_summary.union_length(pairs)
    span = max(end for _, end in pairs) - min(start for start, _ in pairs)
    assert max(end - start for start, end in pairs) <= covered <= min(
        span, sum(end - start for start, end in pairs))
    # Every integer point inside some interval is covered: count unit cells.
    cells = {t for start, end in pairs for t in range(int(start), int(end))}
    assert covered == len(cells)


def test_cli_reads_a_gzipped_trace_and_writes_json(tmp_path, capsys):
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump({"displayTimeUnit": "ns",
                   "traceEvents": trace([(0, 100, "gemm_fusion_dot_1"), (200, 100, "fusion_2")])},
                  handle)
    out = tmp_path / "summary.json"
    assert profile_summary.main([str(path), "--per", "2", "--unit", "step",
                                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("span 0.30 ms (0.150 ms a step); GPU busy 66.7% of it; 2 kernels")
    assert "| matmul | 0.050 | 50.0% | 0.5 |" in printed
    assert json.loads(out.read_text(encoding="utf-8"))["busy_us"] == 200


def test_cli_refuses_a_trace_without_gpu_streams_in_one_line(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"traceEvents": trace([])[3:]}), encoding="utf-8")
    assert profile_summary.main([str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert profile_summary.main([str(tmp_path / "missing.json.gz")]) == 2
