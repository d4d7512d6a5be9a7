"""Accelerator check: lmfuse's own train step and decoder on a GPU, measured in a few minutes.

    bash experiments/device_check.sh                  # a GPU machine with JAX for CUDA
    bash experiments/device_check.sh --dry_run        # the same report from a tiny model on CPU
    bash experiments/device_check.sh --config.model.attention_impl=cudnn --steps 50

Trains configs/lm_transformer.py:350m (368M parameters, bf16, rows of 1024 tokens) with the
step `lmfuse train` compiles (`build_trainer`: sharded over every local device, donated state,
AdamW) for a few dozen steps, then decodes greedily at batch 1 with `lmfuse.decode.greedy` over
the model's DecodeStep (the prefill and the whole token loop in one compiled program). The
data are random tokens: a speed check needs no dataset, and its loss means nothing.

The report, one line each:

* compile: seconds to lower and compile the train step and the decoder (ahead of time);
* train: tokens/s over the timed steps (after warm-up steps);
* MFU: model FLOPs (`lmfuse.train.metrics_log.model_flops_per_token`: 6N plus attention)
  per second over the devices' dense bf16 peak (`PEAK_TFLOPS`, or --peak_tflops);
* decode: generated tokens/s at batch 1, prefill included;
* roofline: at batch 1 every generated token reads every parameter (float32 as lmfuse stores
  them; the matmuls cast to bf16) and the whole KV cache (the cached attention reads every
  slot), so HBM bandwidth / those bytes bounds tokens/s; the report gives the fraction reached
  (`HBM_TBPS` by device kind, or --hbm_tbps).

Without a GPU it refuses (one line, exit status 2) unless --dry_run, which runs a tiny config
on CPU in seconds and prints the same lines (MFU and the roofline need --peak_tflops and
--hbm_tbps there). --json PATH also writes the numbers; --profile DIR traces a few more train
steps and one more decode call with jax.profiler, for experiments/profile_summary.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/lm_transformer.py:350m"
# The dry run: the tiny Transformer in bf16 with short rows and a small vocabulary.
DRY_CONFIG = "configs/lm_transformer.py:tiny"
DRY_OVERRIDES = ("--config.model.dtype=bfloat16", "--config.model.num_layers=1",
                 "--config.model.emb_dim=64", "--config.model.mlp_dim=128",
                 "--config.data.seq_len=32", "--config.tokenizer.vocab_size=256",
                 "--config.model.dropout=0.0")
# HBM bandwidth in TB/s by device kind: the first entry whose words all occur in the device's
# kind wins, so the more specific names come first.
HBM_TBPS = (
    (("gh200",), 4.0),
    (("h200",), 4.8),
    (("h100", "pcie"), 2.0),
    (("h100", "nvl"), 3.9),
    (("h100",), 3.35),  # SXM
    (("a100", "80gb"), 2.0),
    (("a100",), 1.555),  # 40GB
    (("b200",), 8.0),
)
DECODE_REPEATS = 3
PROFILE_STEPS = 3


def profiled(folder: str, name: str):
    """A jax.profiler trace into folder/name, or no trace where folder is empty."""
    import contextlib

    import jax

    if not folder:
        return contextlib.nullcontext()
    return jax.profiler.trace(str(Path(folder) / name), create_perfetto_trace=True)


def hbm_bandwidth(device_kind: str, override_tbps: float = 0.0) -> float | None:
    """Bytes/s of one device's HBM: the override (TB/s) if set, else `HBM_TBPS`, else None."""
    if override_tbps > 0:
        return override_tbps * 1e12
    kind = device_kind.lower()
    for words, tbps in HBM_TBPS:
        if all(word in kind for word in words):
            return tbps * 1e12
    return None


def roofline_tokens_per_sec(bytes_per_token: float, bandwidth: float) -> float:
    """The memory-bound limit of batch-1 decoding: each token reads `bytes_per_token`."""
    return bandwidth / bytes_per_token


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from lmfuse.config import split_override_args

    overrides, rest = split_override_args(argv)
    parser = argparse.ArgumentParser(
        prog="device_check", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true",
                        help="a tiny config on CPU in seconds (no GPU needed)")
    parser.add_argument("--config", default=None,
                        help=f"config file[:variant] (default {CONFIG}; dry run {DRY_CONFIG})")
    parser.add_argument("--steps", type=int, default=None, help="timed train steps (30; dry 3)")
    parser.add_argument("--warmup_steps", type=int, default=None,
                        help="untimed steps after compiling (3; dry 1)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="rows per device (16; dry 4); the global batch is this x devices")
    parser.add_argument("--decode_tokens", type=int, default=None,
                        help="greedy tokens generated at batch 1 (256; dry 16)")
    parser.add_argument("--prompt_len", type=int, default=None,
                        help="prompt tokens, BOS + random (16; dry 4)")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="per-device dense bf16 peak for MFU (default: by device kind)")
    parser.add_argument("--hbm_tbps", type=float, default=0.0,
                        help="per-device HBM bandwidth for the roofline (default: by device kind)")
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    parser.add_argument("--profile", default="",
                        help="after timing, trace PROFILE_STEPS train steps and one decode call "
                             "with jax.profiler into this folder (train/ and decode/, each with "
                             "a perfetto_trace.json.gz that experiments/profile_summary.py reads)")
    args = parser.parse_args(rest)
    dry = args.dry_run
    defaults = {"config": DRY_CONFIG if dry else CONFIG, "steps": 3 if dry else 30,
                "warmup_steps": 1 if dry else 3, "batch_size": 4 if dry else 16,
                "decode_tokens": 16 if dry else 256, "prompt_len": 4 if dry else 16}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if dry:
        overrides = [*DRY_OVERRIDES, *overrides]
    return args, overrides


def check_args(args: argparse.Namespace, config) -> None:
    from lmfuse.errors import LmfuseError

    for name in ("steps", "batch_size", "decode_tokens", "prompt_len"):
        if getattr(args, name) <= 0:
            raise LmfuseError(f"--{name}={getattr(args, name)} must be positive")
    if args.warmup_steps < 0:
        raise LmfuseError(f"--warmup_steps={args.warmup_steps} must be >= 0")
    if config.model.name not in ("transformer", "rnn", "lstm", "gru"):
        raise LmfuseError(
            f"model.name={config.model.name!r}: device_check trains and decodes a decoder-only "
            "LM; pick an LM config (e.g. configs/lm_transformer.py:350m)")
    total = args.prompt_len + args.decode_tokens
    if config.model.positions == "learned" and total > config.model.max_len:
        raise LmfuseError(
            f"--prompt_len + --decode_tokens = {total} exceeds model.max_len="
            f"{config.model.max_len} (learned positions); generate fewer tokens")


def synthetic_batches(rows: int, length: int, vocab: int, count: int = 2) -> list[dict]:
    """Random packed-LM batches (one document per row, no padding), numpy int32 [rows, length]."""
    import numpy as np

    rng = np.random.default_rng(0)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
    ones = np.ones((rows, length), np.int32)
    batches = []
    for _ in range(count):
        tokens = rng.integers(1, vocab, (rows, length + 1), dtype=np.int32)
        batches.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                        "inputs_segment_ids": ones, "targets_segment_ids": ones,
                        "inputs_positions": positions, "targets_positions": positions})
    return [{k: np.ascontiguousarray(v) for k, v in b.items()} for b in batches]


def tree_bytes(tree: Any) -> int:
    import jax

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def train(trainer, args) -> dict[str, Any]:
    """Compiles the train step ahead of time, runs the warm-up steps, times the rest."""
    import jax

    from lmfuse.train import sharding
    from lmfuse.train.metrics_log import (
        model_flops_per_token,
        peak_flops_per_device,
        step_record,
    )

    config, mesh, rules = trainer.config, trainer.mesh, trainer.rules
    rows = args.batch_size * jax.device_count()
    batches = [sharding.global_batch(b, mesh, rules) for b in synthetic_batches(
        rows, config.data.seq_len, trainer.tokenizer.vocab_size)]
    key = jax.random.key(config.seed + 1)
    with sharding.activate(mesh, rules):
        state = jax.block_until_ready(trainer.init_fn(jax.random.key(config.seed)))
        started = time.perf_counter()
        step = trainer.train_step.lower(state, batches[0], key).compile()
        compile_seconds = time.perf_counter() - started
        for i in range(args.warmup_steps):
            state, _ = step(state, batches[i % len(batches)], key)
        jax.block_until_ready(state)
        started = time.perf_counter()
        metrics = []
        for i in range(args.steps):
            state, m = step(state, batches[i % len(batches)], key)
            metrics.append(m)
        jax.block_until_ready((state, metrics))
        seconds = time.perf_counter() - started
        with profiled(args.profile, "train"):  # after the timing, so it costs the figures nothing
            for i in range(PROFILE_STEPS if args.profile else 0):
                state, _ = step(state, batches[i % len(batches)], key)
            jax.block_until_ready(state)
    fetched = jax.device_get(metrics)
    flops_token = model_flops_per_token(config, trainer.num_params)
    peak = peak_flops_per_device(args.peak_tflops)
    lr = float(trainer.schedule(args.warmup_steps + args.steps))
    return {"state": state, "compile_seconds": compile_seconds, "seconds": seconds,
            "rows": rows, "first_loss": float(fetched[0]["loss"]),
            "last_loss": float(fetched[-1]["loss"]), "flops_per_token": flops_token,
            "peak_flops": peak, **step_record(fetched, lr, seconds, flops_token, peak)}


def decode(trainer, params, args) -> dict[str, Any]:
    """Greedy batch-1 decoding of exactly --decode_tokens tokens (no EOS stop), compiled ahead
    of time; tokens/s is the median of `DECODE_REPEATS` timed calls."""
    import jax
    import numpy as np

    from lmfuse.decode import greedy, lm_decode_step
    from lmfuse.tokens import BOS_ID

    decoder = lm_decode_step(trainer.model)
    rng = np.random.default_rng(1)
    prompt = rng.integers(1, trainer.tokenizer.vocab_size, (1, args.prompt_len), dtype=np.int32)
    prompt[:, 0] = BOS_ID
    batch = {"prompt": jax.numpy.asarray(prompt)}
    new_tokens = args.decode_tokens

    def generate(params, batch):
        return greedy(decoder, params, batch, max_new_tokens=new_tokens, eos_id=None).tokens

    started = time.perf_counter()
    compiled = jax.jit(generate).lower(params, batch).compile()
    compile_seconds = time.perf_counter() - started
    tokens = jax.block_until_ready(compiled(params, batch))  # warm-up
    times = []
    for _ in range(DECODE_REPEATS):
        started = time.perf_counter()
        jax.block_until_ready(compiled(params, batch))
        times.append(time.perf_counter() - started)
    with profiled(args.profile, "decode"):
        jax.block_until_ready(compiled(params, batch))
    # What each generated token reads: every parameter, and the decode state (the KV cache,
    # every slot of which the cached attention reads at each step).
    max_len = args.prompt_len + new_tokens
    _, state = jax.eval_shape(lambda p, b: decoder.init(p, b, max_len), params, batch)
    return {"compile_seconds": compile_seconds, "tokens_per_sec": new_tokens / statistics.median(times),
            "generated": int(tokens.shape[-1]), "param_bytes": tree_bytes(params),
            "state_bytes": tree_bytes(state)}


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.3g} MB"


def report(args, config, trainer, trained: dict, decoded: dict, elapsed: float) -> dict[str, Any]:
    """Prints the report lines; returns the numbers."""
    import jax

    devices = jax.devices()
    kind, backend = devices[0].device_kind, jax.default_backend()
    model = config.model
    print(f"device_check: {kind} x {len(devices)} (backend {backend}, jax {jax.__version__}, "
          f"Python {platform.python_version()})" + ("; dry run" if args.dry_run else ""))
    print(f"model: {args.config}, {trainer.num_params:,} params, {model.name}, {model.dtype}, "
          f"attention {model.attention_impl}, batch {trained['rows']} x "
          f"{config.data.seq_len} ({args.batch_size} rows per device)")
    print("data: synthetic random tokens (no dataset: a speed check, the loss means nothing)")
    print(f"compile: {trained['compile_seconds']:.1f} s train step, "
          f"{decoded['compile_seconds']:.1f} s decoder")
    print(f"train: {trained['tokens_per_sec']:,.0f} tokens/s over {args.steps} steps "
          f"({trained['seconds'] / args.steps:.3f} s/step after {args.warmup_steps} warm-up); "
          f"loss {trained['first_loss']:.3f} -> {trained['last_loss']:.3f}")
    if trained["mfu"] is not None:
        print(f"MFU: {100 * trained['mfu']:.1f}% ({trained['flops_per_token']:.3g} FLOPs/token, "
              f"peak {trained['peak_flops'] / 1e12:g} TFLOP/s bf16 per device x {len(devices)})")
    elif backend == "cpu":
        print("MFU: n/a on cpu (no peak FLOP/s for a CPU; --peak_tflops sets one)")
    else:
        print(f"MFU: n/a (no bf16 peak known for {kind!r}; pass --peak_tflops)")
    decode_rate = decoded["tokens_per_sec"]
    print(f"decode: {decode_rate:,.1f} tokens/s (batch 1, greedy, {decoded['generated']} new "
          f"tokens after a {args.prompt_len}-token prompt, prefill included)")
    bandwidth = hbm_bandwidth(kind, args.hbm_tbps)
    per_token = decoded["param_bytes"] + decoded["state_bytes"]
    roofline = fraction = None
    if bandwidth is None:
        where = "on cpu (no HBM" if backend == "cpu" else f"(no HBM figure for {kind!r}"
        print(f"roofline: n/a {where}; --hbm_tbps sets the bandwidth)")
    else:
        roofline = roofline_tokens_per_sec(per_token, bandwidth)
        fraction = decode_rate / roofline
        print(f"roofline: {roofline:,.1f} tokens/s at {bandwidth / 1e12:g} TB/s HBM "
              f"({_size(decoded['param_bytes'])} of params + {_size(decoded['state_bytes'])} "
              f"of decode state read per token); decode reaches {100 * fraction:.1f}% of it")
    print(f"total: {elapsed:.1f} s")
    return {"device_kind": kind, "devices": len(devices), "backend": backend,
            "dry_run": args.dry_run, "config": args.config, "num_params": trainer.num_params,
            "dtype": model.dtype, "attention_impl": model.attention_impl,
            "batch_rows": trained["rows"], "seq_len": config.data.seq_len,
            "train_compile_seconds": trained["compile_seconds"],
            "decode_compile_seconds": decoded["compile_seconds"],
            "train_tokens_per_sec": trained["tokens_per_sec"], "mfu": trained["mfu"],
            "decode_tokens_per_sec": decode_rate, "decode_new_tokens": decoded["generated"],
            "param_bytes": decoded["param_bytes"], "decode_state_bytes": decoded["state_bytes"],
            "hbm_bytes_per_sec": bandwidth, "roofline_tokens_per_sec": roofline,
            "roofline_fraction": fraction, "seconds": elapsed}


def run(argv: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    args, overrides = parse_args(argv)
    import jax

    if args.dry_run:  # before any backend starts: never touch an accelerator
        jax.config.update("jax_platforms", "cpu")

    from lmfuse.config import load_config
    from lmfuse.errors import LmfuseError
    from lmfuse.train.trainer import build_trainer

    backend = jax.default_backend()
    if backend != "gpu" and not args.dry_run:
        raise LmfuseError(
            f"no GPU found (JAX backend: {backend}); run on a GPU machine with JAX for CUDA "
            "installed (pip install 'jax[cuda12]'), or pass --dry_run for the CPU rehearsal")
    config_path = args.config if Path(args.config.split(":")[0]).exists() else str(REPO / args.config)
    config = load_config(config_path, overrides)
    check_args(args, config)
    with config.unlocked():
        config.train.batch_size = args.batch_size * jax.device_count()

    class VocabOnly:  # no tokenizer to train: build_trainer reads only vocab_size
        vocab_size = config.tokenizer.vocab_size

    trainer = build_trainer(config, VocabOnly())
    trained = train(trainer, args)
    decoded = decode(trainer, trained.pop("state").params, args)
    numbers = report(args, config, trainer, trained, decoded, time.perf_counter() - started)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1) + "\n", encoding="utf-8")
    return numbers


def main(argv: list[str] | None = None) -> int:
    from lmfuse.cli import quiet_library_logs
    from lmfuse.errors import LmfuseError

    quiet_library_logs()
    try:
        run(sys.argv[1:] if argv is None else argv)
    except LmfuseError as error:
        print(f"lmfuse: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
