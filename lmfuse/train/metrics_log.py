"""Training metrics: TensorBoard (tensorboardX, no TensorFlow), `metrics.jsonl`, MFU estimate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

# Peak dense bf16 FLOP/s per device, for the MFU estimate. CPUs have no meaningful single
# figure, so MFU is left out there unless train.peak_tflops is set.
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "v4": 275.0, "v5e": 197.0,
               "v5 lite": 197.0, "v5p": 459.0, "v6": 918.0}


def peak_flops_per_device(override_tflops: float = 0.0) -> float | None:
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind.lower()
    for name, tflops in PEAK_TFLOPS.items():
        if name in kind:
            return tflops * 1e12
    return None


def flops_per_token(num_params: int, num_layers: int = 0, width: int = 0, seq_len: int = 0) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention (Chinchilla/nanoGPT)."""
    return 6.0 * num_params + 12.0 * num_layers * width * seq_len


class MetricsLog:
    """Writes each record to TensorBoard and as one JSON line."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        if not enabled:  # non-zero processes stay quiet
            return
        workdir = Path(workdir)
        self._tensorboard_dir = workdir / "tensorboard"
        self._writer = None  # opened at the first record: a run with nothing to log (a
        # finished workdir) leaves no empty event file behind
        self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, step: int, record: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        if self._writer is None:
            # Imported here: tensorboardX pulls in torch when present, seconds of import time.
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self._tensorboard_dir))
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None)
                 for k, v in record.items()}
        for key, value in clean.items():
            if value is not None:
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **clean}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            if self._writer is not None:
                self._writer.close()
            self._jsonl.close()
