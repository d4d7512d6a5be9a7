"""Training metrics: TensorBoard (tensorboardX, no TensorFlow), `metrics.jsonl`, MFU estimate.

`metrics.jsonl` holds one JSON object per record, `{"step": ..., "split": "train" |
"validation", <metric>: <number or null>}`: a non-finite number is written as null (NaN is not
JSON). After a resume it holds each step's rows once: the rows a crashed run logged after the
checkpoint the run resumes from are dropped before they are logged again (`MetricsLog`).

TensorBoard gets every metric as a scalar curve (`train/loss`, `validation/nll`,
`validation/bleu`, ...), except counts that do not change between evaluations (a split's tokens,
words, characters, documents): those are one text table per run (`validation/counts`), and
stay in the JSON rows. Each run start also writes the config as text (`config`) and as
hyperparameters (the HPARAMS tab, one row per workdir: see `MetricsLog.write_config`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from lmfuse.models.registry import TRANSFORMER_NAMES

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


def model_flops_per_token(config: ml_collections.ConfigDict, num_params: int) -> float:
    """`flops_per_token` of a config's model (attention counted for Transformers only)."""
    model = config.model
    layers = model.num_layers if model.name in TRANSFORMER_NAMES else 0
    return flops_per_token(num_params, layers, model.emb_dim, config.data.seq_len)


def step_record(fetched: Sequence[Mapping[str, Any]], lr: float, seconds: float,
                flops_token: float, peak_flops: float | None) -> dict[str, float | None]:
    """The mean of some steps' fetched metrics (loss, grad_norm), the learning rate, and the
    throughput over `seconds` (tokens/s and, when the device's peak is known, MFU)."""
    tokens_per_sec = sum(float(m["tokens"]) for m in fetched) / max(seconds, 1e-9)
    loss = float(np.mean([m["loss"] for m in fetched]))
    return {
        "loss": loss,
        "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
        "lr": float(lr),
        "tokens_per_sec": tokens_per_sec,
        "perplexity": math.exp(min(loss, 50.0)),
        "mfu": (tokens_per_sec * flops_token / (peak_flops * jax.device_count())
                if peak_flops else None),
    }


def hparams_of(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """The config's scalar, string and bool leaves, keyed by dotted path ('train.steps')."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, bool | int | float | str):
                flat[f"{prefix}{key}"] = value

    walk(config.to_dict(), "")
    return flat


def counts_table(counts: Mapping[str, float | None]) -> str:
    """A Markdown table of counts, as TensorBoard's text tab shows it."""
    rows = "".join(f"| {name} | {'-' if value is None else f'{int(value):,}'} |\n"
                   for name, value in counts.items())
    return "| count | value |\n|---|---:|\n" + rows


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
        self._counted: set[str] = set()  # prefixes whose counts this run has shown as text

    def _tensorboard(self):
        if self._writer is None:
            # Imported here: tensorboardX pulls in torch when present, seconds of import time.
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self._tensorboard_dir))
        return self._writer

    def write_config(self, config: ml_collections.ConfigDict, step: int) -> None:
        """The run's config, once per run start: its text form under the text tag `config`,
        and its scalar leaves as hyperparameters.

        tensorboardX's `add_hparams` would write them into a new sub-run (a folder under
        tensorboard/ per call), which the HPARAMS tab shows as a row of its own with none of
        the run's curves, one more per resume. The session-start summary is written into this
        run's own event file instead: TensorBoard then shows one row per workdir, with its
        latest scalars (validation/nll, validation/bleu, ...) as the metric columns. No
        experiment summary is written, so TensorBoard builds the columns from every workdir
        under --logdir (an LM's and an encoder-decoder's differ) instead of picking one's.
        TensorBoard reads a tag's metadata from its first event, so the row holds the first
        run's values; a resumed run's config is the `config` text at its start step."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams

        writer = self._tensorboard()
        writer.add_text("config", f"```\n{config}\n```", step)
        _, session_start, _ = hparams(hparams_of(config), {})
        writer._get_file_writer().add_summary(session_start, step)
        writer.flush()

    def write(self, step: int, record: Mapping[str, float | None], prefix: str = "train",
              counts: Mapping[str, float] | None = None) -> None:
        """One record: each metric a TensorBoard scalar, and all in one JSON row. `counts`
        (constant over the run, such as a split's token count) join the JSON row, and are
        shown once per run as a TensorBoard text table (`<prefix>/counts`), not as curves."""
        if not self.enabled:
            return
        writer = self._tensorboard()
        if self._jsonl is None:
            if not self._start_known:
                drop_rows_after(self._jsonl_path, int(step) - 1)
            self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None)
                 for k, v in record.items()}
        for key, value in clean.items():
            if value is not None:
                writer.add_scalar(f"{prefix}/{key}", value, step)
        counts = finite_or_null(dict(counts or {}))
        if counts and prefix not in self._counted:
            writer.add_text(f"{prefix}/counts", counts_table(counts), step)
            self._counted.add(prefix)
        # allow_nan=False: a non-finite number that got past the cleaning fails here, loudly,
        # instead of writing a row no JSON reader accepts.
        row = {"step": int(step), "split": prefix, **clean, **counts}
        self._jsonl.write(json.dumps(row, allow_nan=False) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            if self._writer is not None:
                self._writer.close()
            if self._jsonl is not None:
                self._jsonl.close()
