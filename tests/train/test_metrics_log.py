"""MetricsLog: each record reaches metrics.jsonl (strict JSON) and TensorBoard, a resumed run logs
each step once, and a run that logs nothing
(training a finished workdir) leaves no empty event file behind. Counts are one text table per
run, not curves; the config is text and one hyperparameter session in the run itself."""

from __future__ import annotations

import json
import math
import struct

import jax
import pytest
from tensorboardX.proto import event_pb2

from lmfuse.train.metrics_log import MetricsLog, hparams_of, step_record


def read_scalars(tensorboard_dir) -> dict[tuple[str, int], float]:
    """Every scalar in the directory's event files, by (tag, step)."""
    return {(tag, step): value.simple_value
            for step, tag, value in read_summaries(tensorboard_dir)
            if value.WhichOneof("value") == "simple_value"}


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


def read_summaries(tensorboard_dir) -> list[tuple[int, str, object]]:
    """(step, tag, value) of every summary value in the directory's event files, in order."""
    values = []
    for path in sorted(tensorboard_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12: offset + 12 + length])
            offset += 12 + length + 4
            values.extend((event.step, value.tag, value) for value in event.summary.value)
    return values


def test_counts_are_one_text_table_per_run_and_stay_in_every_json_row(tmp_path):
    counts = {"tokens": 3912.0, "words": 2608, "chars": 13055, "docs": 85}

    def tables() -> list[tuple[int, str]]:
        return [(step, value.tensor.string_val[0].decode())
                for step, tag, value in read_summaries(tmp_path / "tensorboard")
                if tag == "validation/counts/text_summary"]

    for steps in ((5, 10), (15, 20)):  # a run and its resume
        log = MetricsLog(tmp_path)
        for step in steps:
            log.write(step, {"nll": 2.0, "bleu": 1.5}, "validation", counts)
        log.close()
        # Each run shows the table once, at its first evaluation. (Both runs start within a
        # second here, so the resume's event file, named by the second, replaces the first's.)
        assert [step for step, _ in tables()][-1:] == [steps[0]]
        assert "| tokens | 3,912 |" in tables()[-1][1] and "| docs | 85 |" in tables()[-1][1]
    summaries = read_summaries(tmp_path / "tensorboard")
    assert {tag for _, tag, value in summaries if value.HasField("simple_value")} == {
        "validation/nll", "validation/bleu"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    assert all(row == {"step": row["step"], "split": "validation", "nll": 2.0, "bleu": 1.5,
                       **counts} for row in rows)


def test_the_config_is_text_and_a_session_start_in_the_run_itself(tmp_path):
    import ml_collections
    from tensorboardX.proto import plugin_hparams_pb2

    config = ml_collections.ConfigDict({
        "seed": 3, "train": {"steps": 40, "label_smoothing": 0.1},
        "model": {"name": "s2s_rnn", "copy_source": True, "sizes": (1, 2)},
        "fusion": {"lm_model": {"name": "transformer"}},
    })
    assert hparams_of(config) == {"seed": 3, "train.steps": 40, "train.label_smoothing": 0.1,
                                  "model.name": "s2s_rnn", "model.copy_source": True,
                                  "fusion.lm_model.name": "transformer"}
    log = MetricsLog(tmp_path)
    log.write_config(config, 7)
    log.close()
    assert not [p for p in (tmp_path / "tensorboard").iterdir() if p.is_dir()]  # no sub-run
    (text,) = [(step, value) for step, tag, value in read_summaries(tmp_path / "tensorboard")
               if tag == "config/text_summary"]
    assert text[0] == 7 and text[1].tensor.string_val[0].decode() == f"```\n{config}\n```"
    (start,) = [value for _, tag, value in read_summaries(tmp_path / "tensorboard")
                if tag.startswith("_hparams_/")]
    assert start.tag == "_hparams_/session_start_info"  # no experiment tag: columns from all runs
    data = plugin_hparams_pb2.HParamsPluginData.FromString(start.metadata.plugin_data.content)
    hparams = data.session_start_info.hparams
    assert set(hparams) == set(hparams_of(config))
    assert hparams["train.steps"].number_value == 40
    assert hparams["model.copy_source"].bool_value is True
    assert hparams["fusion.lm_model.name"].string_value == "transformer"


def test_step_record_averages_the_steps_and_counts_throughput():
    fetched = [{"loss": 2.0, "grad_norm": 1.0, "tokens": 100.0},
               {"loss": 4.0, "grad_norm": 3.0, "tokens": 300.0}]
    record = step_record(fetched, lr=1e-3, seconds=2.0, flops_token=10.0, peak_flops=None)
    assert record == {"loss": 3.0, "grad_norm": 2.0, "lr": 1e-3, "tokens_per_sec": 200.0,
                      "perplexity": pytest.approx(math.exp(3.0)), "mfu": None}
    with_peak = step_record(fetched, 1e-3, 2.0, flops_token=10.0, peak_flops=1e4)
    assert with_peak["mfu"] == pytest.approx(200.0 * 10.0 / (1e4 * jax.device_count()))
