"""Sharded and multi-process training compute the same losses as one device.

Each run happens in a fresh interpreter (`_sharded_run.py`), because the number of CPU devices
is fixed when jax is imported and `jax.distributed.initialize` is once per process:

* 8 simulated devices, mesh data=2 x fsdp=2 x tensor=2, vs. 1 device: same per-step losses,
  and every parameter (and its Adam moments) really is laid out by `LOGICAL_AXIS_RULES`;
* 2 processes (gloo collectives, 2 CPU devices each, mesh fsdp=2 x tensor=2), shuffling and
  packing, each feeding its own block of every global batch, vs. 1 process on 1 device: the
  global batches are the same, row for row, so the losses are too.

Everything is float32 with dropout off, so the runs differ only in how reductions are split
across devices; the tolerance is the issue's 1e-5 on losses of about 6 (measured: ~1e-6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import portpicker
import pytest
from conftest import REPO, tiny_lm_overrides
from jax.sharding import PartitionSpec

from lmfuse.tokens import BOS_ID

CONFIG = f"{REPO / 'configs' / 'lm_transformer.py'}:tiny"
SCRIPT = Path(__file__).with_name("_sharded_run.py")
STEPS = 20
TOLERANCE = 1e-5
TIMEOUT = 300.0  # per group of runs; each run takes well under a minute on 2 CPU cores


def overrides(corpus, **extra) -> list[str]:
    values = {"train.steps": STEPS, "model.dropout": 0.0, "model.dtype": "float32", **extra}
    return tiny_lm_overrides(corpus, **values)


@pytest.fixture(scope="module")
def corpus(text_corpus):
    """The text corpus with its tokenizer trained up front, so parallel runs only read it."""
    from lmfuse.config import load_config
    from lmfuse.data import corpora

    corpora.prepare(load_config(CONFIG, overrides(text_corpus)))
    return text_corpus


def start(out: Path, script_args: list[str], config_overrides: list[str]) -> subprocess.Popen:
    """Starts one `_sharded_run.py`; its output goes to `<out>.log` (no pipe to fill up)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env.update(PYTHONHASHSEED="0", JAX_PLATFORMS="cpu")
    log = open(out.with_suffix(".log"), "w", encoding="utf-8")  # closed in finish()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--out", str(out), "--steps", str(STEPS), *script_args,
         "--", *config_overrides],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    process.out, process.log = out, log
    return process


def finish(processes: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[dict]:
    """Waits for all runs. If one fails (a peer of a failed process would block in a collective)
    or time runs out, kills the rest and fails with the tail of every run's log."""
    deadline = time.monotonic() + timeout
    failed = None
    try:
        while True:
            codes = [process.poll() for process in processes]
            crashed = [p for p, code in zip(processes, codes, strict=True) if code not in (None, 0)]
            if crashed:
                failed = f"{crashed[0].out.name} run exited with {crashed[0].returncode}"
                break
            if None not in codes:
                break
            if time.monotonic() > deadline:
                failed = f"timed out after {timeout:.0f}s"
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.log.close()
    if failed:
        tails = []
        for process in processes:
            lines = process.out.with_suffix(".log").read_text(encoding="utf-8").splitlines()
            lines = [line for line in lines if "Involuntary full rematerialization" not in line]
            tails.append(f"--- {process.out.name} (rc {process.returncode}) ---\n"
                         + "\n".join(lines[-40:]))
        pytest.fail(f"{failed}\n" + "\n".join(tails), pytrace=False)
    return [json.loads(process.out.read_text(encoding="utf-8")) for process in processes]


def max_loss_difference(a: dict, b: dict) -> float:
    assert len(a["losses"]) == len(b["losses"]) == STEPS
    return max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True))


def spec(recorded: list) -> PartitionSpec:
    """A PartitionSpec back from its JSON form (tuples of mesh axes became lists)."""
    return PartitionSpec(*(tuple(axis) if isinstance(axis, list) else axis for axis in recorded))


# Parameter -> (mesh spec under LOGICAL_AXIS_RULES, shard shape on one device) for the tiny
# transformer: vocab 512, embed 32, 2 heads of 16, mlp 64; embed -> fsdp (2), vocab/heads/mlp
# -> tensor (2), 'kv' unsharded, and no parameter on 'data' (pure data parallelism).
EXPECTED_PARAMS = {
    "wte/embedding": (PartitionSpec("tensor", "fsdp"), [256, 16]),
    "blocks_0/attn/query/kernel": (PartitionSpec("fsdp", "tensor", None), [16, 1, 16]),
    "blocks_0/attn/key/kernel": (PartitionSpec("fsdp", "tensor", None), [16, 1, 16]),
    "blocks_1/attn/value/kernel": (PartitionSpec("fsdp", "tensor", None), [16, 1, 16]),
    "blocks_1/attn/query/bias": (PartitionSpec("tensor", None), [1, 16]),
    "blocks_0/attn/out/kernel": (PartitionSpec("tensor", None, "fsdp"), [1, 16, 16]),
    "blocks_0/mlp/fc/kernel": (PartitionSpec("fsdp", "tensor"), [16, 32]),
    "blocks_0/mlp/fc/bias": (PartitionSpec("tensor"), [32]),
    "blocks_1/mlp/proj/kernel": (PartitionSpec("tensor", "fsdp"), [32, 16]),
    "blocks_1/ln_2/scale": (PartitionSpec("fsdp"), [16]),
    "ln_f/bias": (PartitionSpec("fsdp"), [16]),
}


def test_data_fsdp_tensor_mesh_matches_one_device(corpus, tmp_path):
    base = overrides(corpus)
    single = start(tmp_path / "single.json", ["--devices", "1"],
                   base + ["--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"])
    sharded = start(tmp_path / "sharded.json", ["--devices", "8", "--specs"],
                    base + ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"])
    single, sharded = finish([single, sharded])

    assert single["device_count"] == 1 and single["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert sharded["device_count"] == 8 and sharded["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    # Same data: both read the one-process pipeline, so the first batches are identical.
    assert sharded["first_local_inputs"] == single["first_local_inputs"]
    assert sharded["tokens"] == single["tokens"]
    difference = max_loss_difference(single, sharded)
    print(f"8-device vs 1-device max |loss difference| over {STEPS} steps: {difference:.2e}")
    assert difference <= TOLERANCE, (single["losses"], sharded["losses"])
    assert single["losses"][-1] < single["losses"][0] - 0.5  # it trained, not a flat line

    # The batch is split over data x fsdp (4 ways) and replicated over tensor.
    assert spec(sharded["batch_spec"]) == PartitionSpec(("data", "fsdp"), None)
    params = {name: spec(s) for name, s in sharded["param_specs"].items()}
    for name, (expected, shard_shape) in EXPECTED_PARAMS.items():
        assert params[name] == expected, name
        assert sharded["param_shard_shapes"][name] == shard_shape, name
    for name, value in params.items():
        axes = {a for axis in value for a in (axis if isinstance(axis, tuple) else (axis,))}
        assert "data" not in axes, f"{name} is split over 'data': {value}"
        assert axes - {None}, f"{name} is fully replicated: {value}"
    # Optimizer state (Adam's first and second moments) is laid out exactly like the params.
    assert {n: spec(s) for n, s in sharded["mu_specs"].items()} == params
    assert {n: spec(s) for n, s in sharded["nu_specs"].items()} == params


def test_two_processes_match_one_process(corpus, tmp_path):
    # The input path a multi-host run takes: packing and shuffling on. Every process runs the
    # whole pipeline and feeds its own block of each global batch (`lmfuse.data.pipeline`), so
    # 2 processes train on the one-process batches, row for row. The reference run (1 process,
    # 1 device) assembles each global batch from the pipeline's shard_index/shard_count blocks,
    # in process order, exactly as the 2 processes feed it, and checks every step that this is
    # its plain one-process batch. So the multi-process run is held to the inputs of an ordinary
    # one-host run, and only the runtime differs: distributed init, gloo collectives, global
    # arrays from per-process data. Documents of at most 16 tokens in rows of 32: rows really
    # hold several documents each.
    base = overrides(corpus, **{"data.pack": True, "data.shuffle": True, "data.max_length": 16})
    port = portpicker.pick_unused_port()
    workers = [
        start(tmp_path / f"process{index}.json",
              ["--devices", "2", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
               "--process-id", str(index), "--specs"],
              base + ["--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"])
        for index in range(2)
    ]
    reference = start(tmp_path / "reference.json",
                      ["--devices", "1", "--simulate-shards", "2", "--compare-plain"],
                      base + ["--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"])
    *workers, reference = finish([*workers, reference])

    assert reference["process_count"] == 1 and reference["device_count"] == 1
    assert reference["same_batch_as_plain"] == [True] * STEPS
    # Packed for real: every row of the first batch holds several documents.
    assert min(row.count(BOS_ID) for row in reference["first_local_inputs"]) > 1
    for index, worker in enumerate(workers):
        assert worker["process_index"] == index and worker["process_count"] == 2
        assert worker["local_device_count"] == 2 and worker["device_count"] == 4
        assert worker["cpu_collectives"] == "gloo"
        # fsdp spans the processes (process p holds fsdp shard p on its 2 tensor devices), so
        # a process holds half of each param split over 'fsdp' and all of the others.
        specs = {name: spec(s) for name, s in worker["param_specs"].items()}
        assert specs["wte/embedding"] == PartitionSpec("tensor", "fsdp")
        assert worker["param_shard_shapes"]["wte/embedding"] == [256, 16]
        for name, value in specs.items():
            assert worker["param_local_fraction"][name] == (0.5 if "fsdp" in value else 1.0), name
        assert worker["mu_specs"] == worker["param_specs"]
        # Each process fed only its own half of the first global batch.
        assert worker["first_local_inputs"] == reference["first_local_inputs"][4 * index:4 * index + 4]
    # The loss is a global reduction, so both processes report the same value.
    assert workers[0]["losses"] == workers[1]["losses"]
    assert workers[0]["tokens"] == reference["tokens"]
    difference = max_loss_difference(reference, workers[0])
    print(f"2-process vs 1-process max |loss difference| over {STEPS} steps: {difference:.2e}")
    assert difference <= TOLERANCE, (reference["losses"], workers[0]["losses"])
    assert reference["losses"][-1] < reference["losses"][0] - 0.5
