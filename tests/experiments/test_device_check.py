"""experiments/device_check.sh: the accelerator check's report, rehearsed on CPU, and its refusal
to run without a GPU.

The dry run trains and decodes a tiny bf16 Transformer with lmfuse's own train step and
decoder (about 12 s of CPU time, mostly compiling); --hbm_tbps gives the CPU a bandwidth, so
the roofline line is printed with its fraction, as on a GPU. JAX_PLATFORMS=cpu stands for a
machine without a GPU, also where one is present.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import device_check
import pytest
from conftest import REPO

SCRIPT = REPO / "experiments" / "device_check.sh"


def run_check(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_dry_run_prints_the_report(tmp_path):
    out = tmp_path / "numbers.json"
    run = run_check("--dry_run", "--hbm_tbps", "0.05", "--json", str(out),
                    "--profile", str(tmp_path / "profile"))
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = {line.split(":", 1)[0]: line for line in run.stdout.splitlines() if ":" in line}
    assert lines["device_check"].endswith("; dry run")
    assert "bfloat16" in lines["model"] and "transformer" in lines["model"]
    assert lines["data"].startswith("data: synthetic random tokens")

    compiled = re.fullmatch(r"compile: ([\d.]+) s train step, ([\d.]+) s decoder",
                            lines["compile"])
    trained = re.match(r"train: ([\d,]+) tokens/s over 3 steps", lines["train"])
    decoded = re.match(r"decode: ([\d,.]+) tokens/s \(batch 1, greedy, 16 new tokens",
                       lines["decode"])
    roofline = re.fullmatch(
        r"roofline: ([\d,.]+) tokens/s at 0.05 TB/s HBM \(.* of params \+ .* of decode state "
        r"read per token\); decode reaches ([\d.]+)% of it", lines["roofline"])
    assert compiled and trained and decoded and roofline, run.stdout
    assert lines["MFU"].startswith("MFU: n/a on cpu")
    assert float(compiled[1]) > 0 and float(compiled[2]) > 0
    assert number(trained[1]) > 0 and number(decoded[1]) > 0

    numbers = json.loads(out.read_text(encoding="utf-8"))
    assert numbers["dry_run"] and numbers["backend"] == "cpu" and numbers["mfu"] is None
    assert numbers["decode_new_tokens"] == 16
    # The roofline counts every parameter as lmfuse stores it (float32) plus the decode state.
    assert numbers["param_bytes"] == 4 * numbers["num_params"]
    per_token = numbers["param_bytes"] + numbers["decode_state_bytes"]
    assert numbers["roofline_tokens_per_sec"] == pytest.approx(0.05e12 / per_token)
    assert numbers["roofline_fraction"] == pytest.approx(
        numbers["decode_tokens_per_sec"] / numbers["roofline_tokens_per_sec"])
    assert float(roofline[2]) == pytest.approx(100 * numbers["roofline_fraction"], abs=0.06)
    assert number(roofline[1]) == pytest.approx(numbers["roofline_tokens_per_sec"], abs=0.06)

    # --profile traced the train steps and the decode call; a CPU trace has no GPU streams, so
    # experiments/profile_summary.py refuses it in one line.
    for name in ("train", "decode"):
        traces = list((tmp_path / "profile" / name).rglob("perfetto_trace.json.gz"))
        assert len(traces) == 1, name
        summary = subprocess.run(
            [sys.executable, str(REPO / "experiments" / "profile_summary.py"), str(traces[0])],
            capture_output=True, text=True, timeout=60)
        assert summary.returncode == 2
        assert summary.stderr.strip().endswith("no GPU stream events in the trace: was it taken "
                                               "on a GPU, with create_perfetto_trace=True?")


def test_without_a_gpu_it_refuses_in_one_line():
    run = run_check(timeout=120)
    assert run.returncode == 2
    output = (run.stdout + run.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith("lmfuse: error: no GPU found (JAX backend: cpu)")
    assert "--dry_run" in output[0]


@pytest.mark.parametrize(
    ("kind", "tbps"),
    [("NVIDIA H200", 4.8), ("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H100 PCIe", 2.0),
     ("NVIDIA GH200 480GB", 4.0), ("NVIDIA A100-SXM4-80GB", 2.0), ("NVIDIA A100-SXM4-40GB", 1.555)],
)
def test_hbm_bandwidth_by_device_kind(kind, tbps):
    assert device_check.hbm_bandwidth(kind) == pytest.approx(tbps * 1e12)


def test_hbm_bandwidth_unknown_or_overridden():
    assert device_check.hbm_bandwidth("cpu") is None
    assert device_check.hbm_bandwidth("NVIDIA H200", override_tbps=1.5) == pytest.approx(1.5e12)
    # A 1.47 GB model at 4.8 TB/s: about 3,270 tokens/s at batch 1.
    assert device_check.roofline_tokens_per_sec(1.47e9, 4.8e12) == pytest.approx(3265.3, rel=1e-4)
