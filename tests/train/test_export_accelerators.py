"""lmfuse's compiled programs are fit for GPU and TPU, shown on a CPU-only machine.

`jax.export` lowers a jitted function for platforms this machine does not have. One fresh
interpreter (`_export_run.py`, 8 simulated CPU devices, mesh data=2 x fsdp=2 x tensor=2)
exports, for ('cuda', 'tpu'), the sharded train step and the eval step that `build_trainer`
compiles, `sample` and `beam_search` over the model's DecodeStep, for a bf16 Transformer LM
and a bf16 LSTM LM (small variants of configs/lm_transformer.py and configs/lm_rnn.py:lstm).
Each export must name both platforms, call no CPU-only or host-callback custom call, keep the
shardings the program was given, and survive serialize / deserialize unchanged.

cuDNN attention (`model.attention_impl='cudnn'`) is CUDA-only by design, and its kernel's
sharding rule is a Python callback that cannot be serialized, so it is exported for 'cuda' on
one device; the test checks the attention really lowers to the cuDNN kernels.

The checker is also run on functions that cannot leave a CPU: it must fail them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _export_run import (
    BATCH_FEATURES,
    CUDNN_ATTENTION,
    check_export,
    cpu_only_targets,
    custom_call_targets,
)
from conftest import REPO

SCRIPT = Path(__file__).with_name("_export_run.py")
DEVICES = 8
PORTABLE = [("transformer", p) for p in ("train_step", "eval_step", "sample", "beam_search")] + [
    ("lstm", p) for p in ("train_step", "eval_step", "sample", "beam_search")]
STEPS = ("train_step", "eval_step")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """The exports' records, from one run of `_export_run.py` (about 10 s on 2 cores)."""
    out = tmp_path_factory.mktemp("exports") / "exports.json"
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env.update(PYTHONHASHSEED="0", JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--devices", str(DEVICES)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("model", "program"), PORTABLE)
def test_program_exports_for_cuda_and_tpu(exports, model, program):
    record = exports[model]["programs"][program]
    assert record["problems"] == []
    assert record["platforms"] == ["cuda", "tpu"]
    assert record["nr_devices"] == DEVICES
    assert cpu_only_targets(record["custom_calls"]) == []
    assert record["serialized_bytes"] > 0
    assert exports[model]["compute_dtype"] == "bfloat16"


@pytest.mark.parametrize(("model", "program"), PORTABLE)
def test_exported_program_keeps_its_input_shardings(exports, model, program):
    """Every input the module reads carries the sharding it was given (`jax.jit`'s
    in_shardings, or the abstract input's own); only unused inputs are dropped."""
    record = exports[model]["programs"][program]
    kept = record["kept_inputs"]
    assert [record["in_specs"][i] for i in kept] == [record["expected_in_specs"][i] for i in kept]
    # The whole state (train step) or all params (the others) is read and laid out as given:
    # params are split over fsdp and tensor, so the comparison is not between replicas.
    state = range(record["num_state_leaves"])
    assert set(state) <= set(kept)
    state_specs = [record["in_specs"][i] for i in state]
    assert any("tensor" in spec for spec in state_specs)
    assert any("fsdp" in spec for spec in state_specs)
    assert exports[model]["sharded_params"] > 0
    assert exports[model]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize("model", ["transformer", "lstm"])
@pytest.mark.parametrize("program", STEPS)
def test_exported_step_keeps_its_output_shardings(exports, model, program):
    """The train step hands back its state laid out as it came (so it can be donated and fed
    back), and metrics replicated."""
    record = exports[model]["programs"][program]
    assert record["out_specs"] == record["expected_out_specs"]
    if program == "train_step":
        state = record["num_state_leaves"]
        assert record["out_specs"][:state] == record["in_specs"][:state]
        assert set(record["out_specs"][state:]) == {"P()"}


@pytest.mark.parametrize("program", STEPS)
def test_cudnn_attention_exports_for_cuda(exports, program):
    model = exports["transformer_cudnn"]
    record = model["programs"][program]
    assert model["attention_impl"] == "cudnn" and model["compute_dtype"] == "bfloat16"
    assert record["problems"] == []
    assert record["platforms"] == ["cuda"]
    # The attention is cuDNN's fused kernel: forward, plus its backward in the train step.
    expected = list(CUDNN_ATTENTION) if program == "train_step" else [CUDNN_ATTENTION[0]]
    assert [t for t in record["custom_calls"] if t.startswith("__cudnn")] == expected
    kept = record["kept_inputs"]
    assert [record["in_specs"][i] for i in kept] == [record["expected_in_specs"][i] for i in kept]


def test_a_host_callback_fails_the_check():
    """A function that calls back into Python cannot run on an accelerator from an export."""

    def on_host(x):
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x) + 1.0

    exported, _, problems = check_export(jax.jit(on_host), [jax.ShapeDtypeStruct((4,), jnp.float32)])
    assert exported is None
    assert len(problems) == 1
    assert problems[0].startswith("export failed:") and "callback" in problems[0]


def test_a_cpu_only_custom_call_fails_the_check():
    """Lowered for CPU, a Cholesky factorisation calls LAPACK: the checker names the call and
    the platform. The same function exported for the accelerators passes."""
    matrix = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    _, summary, problems = check_export(jax.jit(jnp.linalg.cholesky), [matrix], platforms=("cpu",))
    assert "lapack_spotrf_ffi" in summary["custom_calls"]
    assert "CPU-only custom call 'lapack_spotrf_ffi'" in problems
    assert any("not accelerators: ['cpu']" in p for p in problems)

    _, summary, problems = check_export(jax.jit(jnp.linalg.cholesky), [matrix])
    assert problems == []
    assert not any(t.startswith("lapack_") for t in summary["custom_calls"])


def test_custom_call_targets_reads_both_op_forms():
    text = ('%0 = stablehlo.custom_call @cusolver_potrf_ffi(%arg0) : ...\n'
            '%1 = "stablehlo.custom_call"(%0) {call_target_name = "xla_ffi_python_gpu_callback"}')
    targets = custom_call_targets(text)
    assert targets == ["cusolver_potrf_ffi", "xla_ffi_python_gpu_callback"]
    assert cpu_only_targets(targets) == ["xla_ffi_python_gpu_callback"]


@pytest.mark.slow
def test_device_check_model_exports_for_cuda_and_tpu():
    """The 368M-parameter model that experiments/device_check.sh trains on a GPU
    (configs/lm_transformer.py:350m, bf16, rows of 1024): its train step lowers for both
    accelerators (about 20 s of tracing on one CPU device)."""
    from lmfuse.config import load_config
    from lmfuse.train import sharding
    from lmfuse.train.trainer import build_trainer

    config = load_config("configs/lm_transformer.py:350m", ["train.batch_size=16"])

    class VocabOnly:
        vocab_size = config.tokenizer.vocab_size

    trainer = build_trainer(config, VocabOnly(), devices=jax.devices()[:1])
    assert trainer.num_params >= 350_000_000 and config.model.dtype == "bfloat16"
    mesh, rules = trainer.mesh, trainer.rules
    batch = {name: jax.ShapeDtypeStruct((16, 1024), jnp.int32,
                                        sharding=sharding.batch_sharding(mesh, rules))
             for name in BATCH_FEATURES}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    with sharding.activate(mesh, rules):
        _, summary, problems = check_export(trainer.train_step, (trainer.abstract_state, batch, key),
                                            mesh=mesh)
    assert problems == []
    assert summary["platforms"] == ["cuda", "tpu"]
