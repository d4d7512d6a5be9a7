"""MetricsLog: each record reaches metrics.jsonl and TensorBoard, and a run that logs nothing
(training a finished workdir) leaves no empty event file behind."""

from __future__ import annotations

import json
import math
import struct

import pytest
from tensorboardX.proto import event_pb2

from lmfuse.train.metrics_log import MetricsLog


def read_scalars(tensorboard_dir) -> dict[tuple[str, int], float]:
    """Every scalar in the directory's event files (TFRecord framing: length, crc, data, crc)."""
    scalars = {}
    for path in sorted(tensorboard_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12: offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_records_reach_jsonl_and_tensorboard(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(5, {"loss": 2.5, "mfu": None})
    log.write(10, {"loss": 2.0, "mfu": float("nan")}, prefix="validation")
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 5, "split": "train", "loss": 2.5, "mfu": None},
                     {"step": 10, "split": "validation", "loss": 2.0, "mfu": None}]
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars == {("train/loss", 5): pytest.approx(2.5),
                       ("validation/loss", 10): pytest.approx(2.0)}
    assert not any(math.isnan(v) for v in scalars.values())


def test_a_run_with_nothing_to_log_leaves_no_event_file(tmp_path):
    MetricsLog(tmp_path).close()
    assert not list(tmp_path.glob("tensorboard/events.out.tfevents.*"))
    # A later run that does log appends to the same metrics file.
    log = MetricsLog(tmp_path)
    log.write(1, {"loss": 1.0})
    log.close()
    assert len(list(tmp_path.glob("tensorboard/events.out.tfevents.*"))) == 1
