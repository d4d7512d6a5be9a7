"""MetricsLog: each record reaches metrics.jsonl (strict JSON) and TensorBoard, a resumed run logs
each step once, and a run that logs nothing
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


def rows_of(path) -> list[tuple[int, str]]:
    return [(row["step"], row["split"])
            for row in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())]


def crashed_run(path) -> None:
    """A run that logged steps 1-6 (validation at 2, 4 and 6), then died with its last
    checkpoint at step 4, in the middle of writing a row."""
    log = MetricsLog(path)
    for step in range(1, 7):
        log.write(step, {"loss": 1.0 / step})
        if step % 2 == 0:
            log.write(step, {"loss": 2.0}, prefix="validation")
    log.close()
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "split": "tr')  # torn by the kill


@pytest.mark.parametrize("start_step", [4, None])
def test_a_resumed_run_logs_each_step_once(tmp_path, start_step):
    """Given the restored step, or else from the first step the resumed run logs."""
    crashed_run(tmp_path)
    resumed = MetricsLog(tmp_path, start_step=start_step)
    for step in range(5, 9):
        resumed.write(step, {"loss": 0.5})
        if step % 2 == 0:
            resumed.write(step, {"loss": 2.0}, prefix="validation")
    resumed.close()
    assert rows_of(tmp_path) == [
        (1, "train"), (2, "train"), (2, "validation"), (3, "train"), (4, "train"),
        (4, "validation"), (5, "train"), (6, "train"), (6, "validation"), (7, "train"),
        (8, "train"), (8, "validation")]


def test_a_fresh_start_drops_an_earlier_attempts_rows(tmp_path):
    crashed_run(tmp_path)
    log = MetricsLog(tmp_path, start_step=0)  # no checkpoint survived
    log.write(1, {"loss": 3.0})
    log.close()
    assert rows_of(tmp_path) == [(1, "train")]


def test_every_row_is_strict_json_with_null_for_non_finite_numbers(tmp_path):
    import numpy as np

    log = MetricsLog(tmp_path)
    log.write(np.int64(3), {"loss": float("inf"), "grad_norm": -float("inf"),
                            "lr": np.float32("nan"), "tokens": np.float64(8.0)})
    log.close()

    def refuse(constant):
        raise ValueError(constant)

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line, parse_constant=refuse) == {
        "step": 3, "split": "train", "loss": None, "grad_norm": None, "lr": None, "tokens": 8.0}
