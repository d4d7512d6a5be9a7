"""Training metrics: TensorBoard (tensorboardX, no TensorFlow), `metrics.jsonl`, MFU estimate.

`metrics.jsonl` holds one JSON object per record, `{"step": ..., "split": "train" |
"validation", <metric>: <number or null>}`: a non-finite number is written as null (NaN is not
JSON). After a resume it holds each step's rows once: the rows a crashed run logged after the
checkpoint the run resumes from are dropped before they are logged again (`MetricsLog`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN / ±inf (NumPy's too) as None, through dicts, lists and tuples:
    what JSON can hold (json.dumps would write a bare NaN, which no strict parser reads)."""
    if isinstance(value, Mapping):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)  # NumPy integers too, which json cannot write
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def drop_rows_after(path: Path, step: int) -> int:
    """Keeps the rows of a metrics.jsonl up to `step` (a resumed run's restored step) and drops
    the rest, and any torn line a kill left: the resumed run logs those steps again. Atomic
    (written beside, then renamed). Returns the number of rows dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row["step"]) <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricsLog:
    """Writes each record to TensorBoard and as one JSON line.

    `start_step`, the step the run starts from (a resume's restored step, or 0): rows an
    earlier run logged after it (it died before its next checkpoint) are dropped before this
    run logs those steps again. Without it, the first record's step S stands in for it: rows at
    S or later are dropped then, which is the same set whenever the logging cadence did not
    change between the runs (steps are logged on fixed multiples)."""

    def __init__(self, workdir: str | Path, enabled: bool = True, start_step: int | None = None):
        self.enabled = enabled
        if not enabled:  # non-zero processes stay quiet
            return
        workdir = Path(workdir)
        self._tensorboard_dir = workdir / "tensorboard"
        self._jsonl_path = workdir / "metrics.jsonl"
        # Both opened at the first record: a run with nothing to log (a finished workdir)
        # leaves no empty event file behind, and the rows it replaces are known by then.
        self._writer = None
        self._jsonl = None
        if start_step is not None:
            drop_rows_after(self._jsonl_path, start_step)
        self._start_known = start_step is not None

    def write(self, step: int, record: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        if self._writer is None:
            # Imported here: tensorboardX pulls in torch when present, seconds of import time.
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self._tensorboard_dir))
        if self._jsonl is None:
            if not self._start_known:
                drop_rows_after(self._jsonl_path, int(step) - 1)
            self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None)
                 for k, v in record.items()}
        for key, value in clean.items():
            if value is not None:
                self._writer.add_scalar(f"{prefix}/{key}", value, step)
        # allow_nan=False: a non-finite number that got past the cleaning fails here, loudly,
        # instead of writing a row no JSON reader accepts.
        row = {"step": int(step), "split": prefix, **clean}
        self._jsonl.write(json.dumps(row, allow_nan=False) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            if self._writer is not None:
                self._writer.close()
            if self._jsonl is not None:
                self._jsonl.close()
