"""Exports lmfuse's compiled programs for GPU and TPU on a CPU-only machine, and checks them.

Used by `test_export_accelerators.py` (the leading underscore keeps pytest from collecting
it). `jax.export` lowers a jitted function for platforms this machine does not have, so what
would break on an accelerator shows up here: a primitive with no lowering for it, a CPU-only or
host-callback custom call, a result that cannot be serialized, a sharding lost on the way.

    python tests/train/_export_run.py --out exports.json --devices 8

For each model of `MODELS` it builds the trainer as `lmfuse train` does (`build_trainer`) on a
data=2 x fsdp=2 x tensor=2 mesh of simulated CPU devices (the device count is fixed when jax is
imported, hence a script) and exports, for ('cuda', 'tpu'), the train step, the eval step, the
sampler and beam search over the model's DecodeStep. `transformer_cudnn` is the one exception:
cuDNN attention exists for CUDA only, and its fused kernel's sharding rule is a Python callback
that `jax.export` cannot serialize, so it is exported for 'cuda' on one device, with the
cuDNN version probe answered as a GPU machine would (trace time asks the installed library).

Per program the JSON holds `check_export`'s summary, `problems` (empty when the program is fit
for its accelerators), and, for the train and eval steps, the shardings the jitted function
was given, broadcast over its inputs and outputs (`expected_in_specs`, `expected_out_specs`).
The checker is importable, so the test also shows a CPU-only function failing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

ACCELERATORS = ("cuda", "tpu")
# Custom-call targets that exist only in a CPU build of XLA, or that call back into the Python
# process that lowered them (host callbacks, CPU and GPU flavours alike, and Python sharding
# rules): neither can run from an exported module on an accelerator.
CPU_ONLY_PREFIXES = ("lapack_", "cpu_", "__cpu", "xla_python_cpu_callback",
                     "xla_ffi_python_cpu_callback")
IN_PROCESS_MARKERS = ("callback", "CustomSPMDPartitioning")
# What the cuDNN flash-attention kernels are called in StableHLO (a mask makes it a bias).
CUDNN_ATTENTION = ("__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward")
BATCH_FEATURES = ("inputs", "targets", "inputs_segment_ids", "targets_segment_ids",
                  "inputs_positions", "targets_positions")
VOCAB, BATCH, SEQ = 256, 8, 32
PROMPT_LEN, NEW_TOKENS, BEAMS = 4, 8, 2


@dataclasses.dataclass(frozen=True)
class ModelExport:
    """A small variant of a study config, in bf16 as it would run on an accelerator."""

    config: str
    overrides: tuple[str, ...]
    platforms: tuple[str, ...] = ACCELERATORS
    mesh: tuple[str, ...] = ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    devices: int = 0  # 0: all of them
    decode: bool = True  # also export the sampler and beam search
    allowed_custom_calls: tuple[str, ...] = ()  # outside jax's list of stable targets


TRANSFORMER = ("model.dtype=bfloat16", "model.emb_dim=64", "model.num_heads=4",
               "model.mlp_dim=128", "model.num_layers=2")
MODELS = {
    "transformer": ModelExport("configs/lm_transformer.py:tiny", TRANSFORMER),
    "lstm": ModelExport("configs/lm_rnn.py:lstm,tiny", ("model.dtype=bfloat16",)),
    # Decoding attends over the KV cache with its own einsums: cuDNN changes only the
    # teacher-forced passes, so only those are exported.
    "transformer_cudnn": ModelExport(
        "configs/lm_transformer.py:tiny", (*TRANSFORMER, "model.attention_impl=cudnn"),
        platforms=("cuda",), mesh=("mesh.data=1",), devices=1, decode=False,
        allowed_custom_calls=CUDNN_ATTENTION),
}


def custom_call_targets(mlir_text: str) -> list[str]:
    """Every custom-call target named in StableHLO text (pretty and generic op forms)."""
    pretty = re.findall(r"stablehlo\.custom_call\s+@([\w$.\-]+)", mlir_text)
    generic = re.findall(r'call_target_name\s*=\s*"([^"]+)"', mlir_text)
    return sorted(set(pretty) | set(generic))


def cpu_only_targets(targets: Sequence[str]) -> list[str]:
    return [t for t in targets
            if t.startswith(CPU_ONLY_PREFIXES) or any(m in t for m in IN_PROCESS_MARKERS)]


_REGISTERED: set[type] = set()


def register_serializable_pytrees(*treedefs: Any) -> None:
    """Makes every node type in `treedefs` serializable by `jax.export`: NamedTuples (optax
    states, SampleOutput, BeamOutput) by name, and nodes without static data (lmfuse's
    TrainState) with empty auxiliary data. Types already registered are skipped."""
    from jax import export

    def node_types(treedef) -> dict[type, Any]:
        data = treedef.node_data()
        found = {data[0]: data[1]} if data is not None else {}
        for child in treedef.children():
            found.update(node_types(child))
        return found

    for treedef in treedefs:
        for node, aux in node_types(treedef).items():
            if node in (tuple, list, dict, type(None)) or node in _REGISTERED:
                continue
            name = f"{node.__module__}.{node.__qualname__}"
            if issubclass(node, tuple) and hasattr(node, "_fields"):
                export.register_namedtuple_serialization(node, serialized_name=name)
            elif aux == ():
                export.register_pytree_node_serialization(
                    node, serialized_name=name, serialize_auxdata=lambda _: b"",
                    deserialize_auxdata=lambda _: ())
            else:
                raise TypeError(f"no serialization rule for pytree node {name} (aux {aux!r})")
            _REGISTERED.add(node)


def _shapes(avals: Sequence[Any]) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(a.shape), str(a.dtype)) for a in avals]


def _specs(shardings: Sequence[Any]) -> list[str | None]:
    return [None if s is None else str(s.spec) for s in shardings]


def check_export(fun_jit: Callable, args: Sequence[Any], platforms: Sequence[str] = ACCELERATORS,
                 allowed_custom_calls: Sequence[str] = (), mesh: Any = None
                 ) -> tuple[Any, dict[str, Any], list[str]]:
    """Exports `fun_jit(*args)` (abstract args, with shardings) for `platforms` and checks it
    is fit for accelerators: (exported or None, summary, problems; [] when fit).

    Problems: the export fails (a primitive with no lowering for a platform, a host callback,
    an unstable custom call not in `allowed_custom_calls`...); its platforms are not the
    accelerators asked for; its StableHLO calls a CPU-only or in-process custom-call target;
    it does not survive `serialize` / `deserialize` unchanged (module text, platforms, input
    tree, shapes and dtypes, and, given `mesh`, the input and output shardings)."""
    from jax import export

    try:
        exported = export.export(
            fun_jit, platforms=tuple(platforms),
            disabled_checks=[export.DisabledSafetyCheck.custom_call(t) for t in allowed_custom_calls],
        )(*args)
    except Exception as error:  # noqa: BLE001 - any failure to export is the finding
        lines = str(error).strip().splitlines() or [""]
        return None, {}, [f"export failed: {type(error).__name__}: {lines[0][:300]}"]

    problems = []
    not_accelerators = [p for p in exported.platforms if p not in ACCELERATORS]
    if tuple(exported.platforms) != tuple(platforms) or not_accelerators:
        problems.append(f"exported for {exported.platforms}, asked for {tuple(platforms)}; "
                        f"not accelerators: {not_accelerators}")
    text = exported.mlir_module()
    targets = custom_call_targets(text)
    problems += [f"CPU-only custom call {t!r}" for t in cpu_only_targets(targets)]
    summary = {
        "platforms": list(exported.platforms),
        "custom_calls": targets,
        "nr_devices": exported.nr_devices,
        # Inputs the program reads (an unused one, e.g. the dropout key with dropout off, is
        # dropped from the module and has no sharding).
        "kept_inputs": list(exported.module_kept_var_idx),
        "num_inputs": len(exported.in_avals),
    }
    if mesh is not None:
        summary["in_specs"] = _specs(exported.in_shardings_jax(mesh))
        summary["out_specs"] = _specs(exported.out_shardings_jax(mesh))

    try:
        register_serializable_pytrees(exported.in_tree, exported.out_tree)
        serialized = exported.serialize()
        restored = export.deserialize(serialized)
    except Exception as error:  # noqa: BLE001
        problems.append(f"serialize round trip failed: {type(error).__name__}: {error}"[:400])
        return exported, summary, problems
    summary["serialized_bytes"] = len(serialized)
    same = {
        "module": restored.mlir_module() == text,
        "platforms": restored.platforms == exported.platforms,
        "in_tree": restored.in_tree == exported.in_tree,
        "out_tree": restored.out_tree == exported.out_tree,
        # Shapes and dtypes: an aval's own sharding names the abstract mesh it was traced on,
        # which is not serialized; the shardings callers must follow are compared below.
        "in_avals": _shapes(restored.in_avals) == _shapes(exported.in_avals),
        "out_avals": _shapes(restored.out_avals) == _shapes(exported.out_avals),
    }
    if mesh is not None:
        same["in_specs"] = _specs(restored.in_shardings_jax(mesh)) == summary["in_specs"]
        same["out_specs"] = _specs(restored.out_shardings_jax(mesh)) == summary["out_specs"]
    problems += [f"serialize round trip changed the {what}" for what, ok in same.items() if not ok]
    return exported, summary, problems


def _trainer(spec: ModelExport):
    import jax

    from lmfuse.config import load_config
    from lmfuse.train.trainer import build_trainer

    class VocabOnly:  # a stand-in tokenizer: build_trainer reads only vocab_size
        vocab_size = VOCAB

    config = load_config(spec.config, [*spec.overrides, *spec.mesh, f"train.batch_size={BATCH}",
                                       f"data.seq_len={SEQ}", "model.dropout=0.0"])
    devices = jax.devices()[:spec.devices] if spec.devices else None
    return build_trainer(config, VocabOnly(), devices=devices)


def _programs(trainer, spec: ModelExport) -> dict[str, tuple]:
    """name -> (jitted function, abstract args, in_shardings, out_shardings), the shardings as
    given to jax.jit (prefixes of the argument and result trees; None: not checked)."""
    import jax
    import jax.numpy as jnp

    from lmfuse.decode import beam_search, lm_decode_step, sample
    from lmfuse.train import sharding

    batch_sharding = sharding.batch_sharding(trainer.mesh, trainer.rules)
    replicated = sharding.replicated(trainer.mesh)
    batch = {name: jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32, sharding=batch_sharding)
             for name in BATCH_FEATURES}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    params = trainer.abstract_params
    programs = {
        "train_step": (trainer.train_step, (trainer.abstract_state, batch, key),
                       (trainer.state_shardings, batch_sharding, replicated),
                       (trainer.state_shardings, replicated)),
        "eval_step": (trainer.eval_step, (params, batch),
                      (trainer.param_shardings, batch_sharding), replicated),
    }
    if spec.decode:
        decoder = lm_decode_step(trainer.model)
        prompts = {"prompt": jax.ShapeDtypeStruct((BATCH, PROMPT_LEN), jnp.int32,
                                                  sharding=batch_sharding)}

        def sampler(params, prompts, key):  # as `lmfuse sample` calls it, nucleus + top-k
            return sample(decoder, params, prompts, key, max_new_tokens=NEW_TOKENS,
                          temperature=0.8, top_k=20, top_p=0.9)

        def beam(params, prompts):
            return beam_search(decoder, params, prompts, beam_size=BEAMS,
                               max_new_tokens=NEW_TOKENS)

        # No shardings given to jax.jit: the inputs' own (params as restored on the mesh).
        for program, fun, args in (("sample", sampler, (params, prompts, key)),
                                   ("beam_search", beam, (params, prompts))):
            own = jax.tree.map(lambda a: a.sharding, args)
            programs[program] = (jax.jit(fun), args, own, None)
    return programs


def export_model(name: str) -> dict[str, Any]:
    """Exports and checks one model's programs: a JSON-ready record per program."""
    import jax

    from lmfuse.train import sharding

    spec = MODELS[name]
    trainer = _trainer(spec)
    records = {}
    with sharding.activate(trainer.mesh, trainer.rules):
        for program, (fun, args, in_shardings, out_shardings) in _programs(trainer, spec).items():
            exported, summary, problems = check_export(
                fun, args, spec.platforms, spec.allowed_custom_calls, mesh=trainer.mesh)
            record = {**summary, "problems": problems}
            if exported is not None:
                record["expected_in_specs"] = _specs(
                    jax.tree.leaves(jax.tree.broadcast(in_shardings, args)))
                record["num_state_leaves"] = len(jax.tree.leaves(args[0]))
            if exported is not None and out_shardings is not None:
                results = jax.tree.unflatten(exported.out_tree, exported.out_avals)
                record["expected_out_specs"] = _specs(
                    jax.tree.leaves(jax.tree.broadcast(out_shardings, results)))
            records[program] = record
    return {
        "programs": records,
        "num_params": trainer.num_params,
        "sharded_params": sum(any(s.spec) for s in jax.tree.leaves(trainer.param_shardings)),
        "compute_dtype": trainer.config.model.dtype,
        "attention_impl": trainer.config.model.attention_impl,
        "mesh": dict(trainer.mesh.shape),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    # Before jax is imported: simulated host devices; nothing here may reach a real backend.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.modules.setdefault("torch", None)  # tensorboardX would import it for nothing
    import jax
    from jax._src.cudnn import fused_attention_stablehlo

    assert jax.device_count() == args.devices, jax.devices()
    # jax asks the installed cuDNN for its version while tracing cuDNN attention; answer as a
    # GPU machine with cuDNN 9.10 would (lowering for CUDA needs no GPU).
    fused_attention_stablehlo.check_cudnn_version = lambda: 91000
    result = {name: export_model(name) for name in args.models.split(",")}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
