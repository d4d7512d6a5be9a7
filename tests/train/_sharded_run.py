"""Runs N train steps in a fresh interpreter and writes the per-step losses as JSON.

Used by `test_sharding.py` (the leading underscore keeps pytest from collecting it). The device
count must be fixed before jax is imported, hence a script rather than an in-process helper:

    python tests/train/_sharded_run.py --out run.json --devices 8 -- --config.mesh.data=2 ...
    python tests/train/_sharded_run.py --out p0.json --devices 2 \
        --coordinator 127.0.0.1:PORT --num-processes 2 --process-id 0 -- ...
    python tests/train/_sharded_run.py --out ref.json --devices 1 --simulate-shards 2 -- ...

It builds config, tokenizer and trainer as `lmfuse.train.loop` does, initialises the state and
runs the steps on pipeline batches inside `sharding.activate(mesh)`. The JSON holds `losses`
and `tokens` (per step, fetched once at the end), the process/device counts and mesh, the first
batch this process fed, phase `timings` (seconds since start) and, with `--specs`, every
param's and Adam `mu`/`nu` leaf's PartitionSpec, each param's per-device shard shape and the
fraction of it this process holds.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default="configs/lm_transformer.py:tiny")
    parser.add_argument("--devices", type=int, default=1, help="CPU devices in this process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--coordinator", default="", help="host:port; set for multi-process")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument(
        "--simulate-shards", type=int, default=0,
        help="one process assembling each global batch from this many per-process pipelines "
             "(shard_index=0..n-1), in process order, exactly as n processes feed it",
    )
    parser.add_argument("--specs", action="store_true", help="also record the state's specs")
    parser.add_argument(
        "--compare-plain", action="store_true",
        help="with --simulate-shards: record whether each assembled global batch is the plain "
             "one-process pipeline's batch, every feature equal row for row",
    )
    if "--" in argv:
        cut = argv.index("--")
        return parser.parse_args(argv[:cut]), argv[cut + 1:]
    return parser.parse_args(argv), []


def main(argv: list[str]) -> None:
    started = time.perf_counter()
    args, overrides = parse_args(argv)
    # Before jax is imported: simulated host devices, and fp32 numerics pinned to "highest"
    # (the CPU default already, stated so a platform change cannot silently relax it).
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # tensorboardX (the metrics writer, unused here) imports torch if it can: ~3 s per
    # interpreter for nothing. It treats torch as optional, so keep it out.
    sys.modules.setdefault("torch", None)

    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=60,
        )
    assert jax.local_device_count() == args.devices, jax.local_devices()
    assert jax.process_count() == args.num_processes, jax.process_count()

    import numpy as np
    from flax.traverse_util import flatten_dict

    from lmfuse.config import load_config
    from lmfuse.data import corpora
    from lmfuse.data.pipeline import PipelineOptions, make_dataset
    from lmfuse.train import sharding
    from lmfuse.train.trainer import build_trainer

    timings = {"imports": time.perf_counter() - started}
    config = load_config(args.config, overrides)
    # Process 0 trains the tokenizer if need be (the test prepares it beforehand, so here every
    # process only finds it); the others wait, so no two processes write the cache at once.
    tokenizer = corpora.prepare(config) if jax.process_index() == 0 else None
    if args.coordinator:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("tokenizer ready")
    if tokenizer is None:
        tokenizer = corpora.load_tokenizer(config)
    trainer = build_trainer(config, tokenizer)
    examples = corpora.load_examples(config, "train").dataset

    def pipeline(**overrides):
        options = PipelineOptions.from_config(config, "train", **overrides)
        return iter(make_dataset(examples, tokenizer, options))

    if args.simulate_shards:
        shards = [pipeline(shard_index=i, shard_count=args.simulate_shards)
                  for i in range(args.simulate_shards)]

        def next_batch() -> dict[str, np.ndarray]:
            parts = [next(shard) for shard in shards]
            return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    else:
        next_batch = functools.partial(next, pipeline())
    if args.compare_plain:
        assert args.simulate_shards and jax.process_count() == 1, "--compare-plain needs both"
        plain = pipeline()

    timings["build"] = time.perf_counter() - started
    state = trainer.init_fn(jax.random.key(config.seed))
    jax.block_until_ready(state)
    timings["init"] = time.perf_counter() - started
    dropout_key = jax.random.key(config.seed + 1)
    all_metrics, first_inputs, same_batches = [], None, []
    with sharding.activate(trainer.mesh, trainer.rules):
        for _ in range(args.steps):
            local = next_batch()
            if first_inputs is None:
                first_inputs = local["inputs"]
            if args.compare_plain:
                same_batches.append(_same_batch(local, next(plain)))
            state, metrics = trainer.train_step(state, sharding.global_batch(local, trainer.mesh, trainer.rules),
                                                dropout_key)
            all_metrics.append(metrics)
            if len(all_metrics) == 1:
                jax.block_until_ready(metrics)
                timings["first_step"] = time.perf_counter() - started
    fetched = jax.device_get(all_metrics)
    timings["steps"] = time.perf_counter() - started

    result = {
        "losses": [float(m["loss"]) for m in fetched],
        "tokens": [float(m["tokens"]) for m in fetched],
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "cpu_collectives": jax.config.jax_cpu_collectives_implementation,
        "mesh": dict(trainer.mesh.shape),
        "batch_spec": list(sharding.batch_sharding(trainer.mesh, trainer.rules).spec),
        "first_local_inputs": np.asarray(first_inputs).tolist(),
        "same_batch_as_plain": same_batches,
        "timings": timings,
    }
    if args.specs:
        def specs(tree) -> dict[str, list]:
            return {"/".join(map(str, path)): list(leaf.sharding.spec)
                    for path, leaf in flatten_dict(tree).items()}

        adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
                if hasattr(s, "mu")]
        assert len(adam) == 1, state.opt_state
        result["param_specs"] = specs(state.params)
        result["mu_specs"] = specs(adam[0].mu)
        result["nu_specs"] = specs(adam[0].nu)
        flat = {"/".join(path): leaf for path, leaf in flatten_dict(state.params).items()}
        result["param_shard_shapes"] = {
            name: list(leaf.addressable_shards[0].data.shape) for name, leaf in flat.items()
        }
        # The fraction of each param's elements held by this process's devices: below 1
        # where the rest lives only in other processes.
        result["param_local_fraction"] = {name: _local_fraction(leaf) for name, leaf in flat.items()}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    if args.coordinator:
        jax.distributed.shutdown()


def _local_fraction(array) -> float:
    blocks = {tuple(s.indices(n)[:2] for s, n in zip(shard.index, array.shape, strict=True))
              for shard in array.addressable_shards}
    held = sum(math.prod(stop - start for start, stop in block) for block in blocks)
    return held / math.prod(array.shape)


def _same_batch(a: dict, b: dict) -> bool:
    """Same features, each equal in shape, dtype and every value."""
    import numpy as np

    return a.keys() == b.keys() and all(
        a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]) for key in a)


if __name__ == "__main__":
    main(sys.argv[1:])
