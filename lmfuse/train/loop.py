"""The training loop: config -> sharded state -> jitted steps -> checkpoints and metrics.

    tokenizer + data  ->  model (registry)  ->  mesh + logical rules  ->  sharded TrainState
      -> restore the latest checkpoint if the workdir has one (state + data iterator)
      -> for each step: next batch -> global array -> train_step (jit, donated state)
      -> every log_every: metrics to TensorBoard / metrics.jsonl / progress bar (one host sync)
      -> every eval_every: validation perplexity (early stopping: train.patience);
         every checkpoint_every: async checkpoint
      -> until the budget (train.steps or train.epochs) is spent or patience runs out: a final
         checkpoint and <workdir>/training.json (`lmfuse.train.budget`, `training_record`)

Host syncs happen only at log, eval and checkpoint points. A non-finite loss or updated state
(the step's `finite` flag) is caught at the next of those points, before any checkpoint is
written (`lmfuse.train.divergence`), so every checkpoint is finite. Resuming takes the newest
intact checkpoint and moves damaged newer ones aside (`lmfuse.train.checkpoint.restore`).
SIGTERM saves a checkpoint at the current step and returns cleanly.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from lmfuse.data import corpora
from lmfuse.data.pipeline import PipelineOptions, make_dataset
from lmfuse.models.registry import TRANSFORMER_NAMES
from lmfuse.train import budget, checkpoint, divergence, sharding
from lmfuse.train.budget import training_record
from lmfuse.train.evaluation import evaluate
from lmfuse.train.metrics_log import MetricsLog, flops_per_token, peak_flops_per_device
from lmfuse.train.trainer import build_trainer, check_config, tokenizer_ref

__all__ = ["train", "training_record"]


class _StopFlag:
    """Set by SIGTERM; checked once per step, so the handler itself does no work."""

    def __init__(self):
        self.raised = False

    def __call__(self, signum, frame):
        self.raised = True


def train(config: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True) -> dict:
    """Trains to the step budget (`lmfuse.train.budget`), resuming from the workdir's latest
    checkpoint; returns the run's record (as training.json holds it) and its last metrics."""
    check_config(config)  # every check that needs no data, before anything is written
    workdir = Path(workdir)
    tokenizer = corpora.prepare(config)
    workdir.mkdir(parents=True, exist_ok=True)  # after the data: a data error leaves no workdir
    plan = budget.step_budget(config, tokenizer)
    done = budget.finished(workdir, plan)  # nothing left to train: says so, returns its record
    if done is not None:
        return done
    trainer = build_trainer(config, tokenizer, total_steps=plan.steps)
    config = trainer.config  # a fused config gains its LM's model config, saved with the state
    train_cfg = config.train
    is_main = jax.process_index() == 0

    options = PipelineOptions.from_config(config, "train")
    iterator = iter(make_dataset(corpora.load_examples(config, "train").dataset, tokenizer, options))
    manager = checkpoint.make_manager(workdir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    if manager.latest_step() is not None:
        state, start = checkpoint.restore(manager, trainer.abstract_state, iterator)
        run = budget.Progress.restore(manager, start)
        if is_main:
            print(f"resuming {workdir} from step {start}")
    else:
        state, start = trainer.init_fn(jax.random.key(config.seed)), 0
        run = budget.Progress()

    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGTERM, stop)
    log = MetricsLog(workdir, enabled=is_main, start_step=start)  # drops rows after `start`
    dropout_key = jax.random.key(config.seed + 1)
    peak = peak_flops_per_device(train_cfg.peak_tflops)
    model_cfg = config.model
    flops_token = flops_per_token(
        trainer.num_params,
        model_cfg.num_layers if model_cfg.name in TRANSFORMER_NAMES else 0,
        model_cfg.emb_dim,
        config.data.seq_len,
    )
    bar = tqdm(total=plan.steps, initial=start, disable=not (progress and is_main),
               desc="train", unit="step", dynamic_ncols=True)
    pending: list[tuple[int, dict]] = []
    last_time = time.perf_counter()
    compile_start = time.perf_counter()
    compile_seconds = None
    summary: dict = {"start_step": start}
    step = start
    wall_before, loop_start = run.wall_seconds, time.perf_counter()

    def save(force: bool = False) -> None:
        flush_metrics()  # a no-op after the flush every save follows: no unchecked state is saved
        run.wall_seconds = wall_before + time.perf_counter() - loop_start
        checkpoint.save(manager, step, state, iterator, config, tokenizer_ref(tokenizer),
                        force=force, progress=dataclasses.asdict(run))

    def flush_metrics() -> dict | None:
        """One host sync: fetch the buffered step metrics, check them, log their mean."""
        nonlocal last_time
        if not pending:
            return None
        fetched = jax.device_get([m for _, m in pending])
        divergence.check(zip([s for s, _ in pending], fetched, strict=True), manager.latest_step(),
                         config.optimizer)
        now = time.perf_counter()
        tokens = sum(float(m["tokens"]) for m in fetched)
        record = {
            "loss": float(np.mean([m["loss"] for m in fetched])),
            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "lr": float(trainer.schedule(pending[-1][0])),
            "tokens_per_sec": tokens / max(now - last_time, 1e-9),
        }
        record["perplexity"] = math.exp(min(record["loss"], 50.0))
        record["mfu"] = (
            record["tokens_per_sec"] * flops_token / (peak * jax.device_count()) if peak else None
        )
        last_time = now
        log.write(pending[-1][0] + 1, record)
        pending.clear()
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_sec']:.0f}")
        return record

    try:
        with sharding.activate(trainer.mesh, trainer.rules):
            while step < plan.steps and not run.stopped_early:
                if stop.raised:
                    break
                batch = sharding.global_batch(next(iterator), trainer.mesh, trainer.rules)
                state, metrics = trainer.train_step(state, batch, dropout_key)
                pending.append((step, metrics))
                step += 1
                bar.update(1)
                if compile_seconds is None:
                    jax.block_until_ready(metrics)
                    compile_seconds = time.perf_counter() - compile_start
                    last_time = time.perf_counter()
                at_log = step % train_cfg.log_every == 0
                at_eval = train_cfg.eval_every and step % train_cfg.eval_every == 0
                at_ckpt = step % train_cfg.checkpoint_every == 0
                if at_log or at_eval or at_ckpt or step == plan.steps:
                    summary["train"] = flush_metrics() or summary.get("train")
                if at_eval:
                    result = evaluate(trainer, state.params, "validation", train_cfg.eval_batches)
                    log.write(step, result, prefix="validation")
                    summary["validation"] = result
                    run.observe(step, result["nll"], train_cfg.patience, train_cfg.min_delta)
                if at_ckpt:
                    save()
            summary["train"] = flush_metrics() or summary.get("train")
            # A final (early-stopping, SIGTERM) checkpoint, off the every-K grid if need be.
            if manager.latest_step() != step:
                save(force=True)
            manager.wait_until_finished()
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
        log.close()
        manager.close()

    summary.update(budget.record(plan, step, run), step=step, compile_seconds=compile_seconds,
                   num_params=trainer.num_params, stopped_by_sigterm=stop.raised)
    if is_main:
        budget.write_record(workdir, budget.record(plan, step, run))
        _print_summary(summary, workdir)
    return summary


def _print_summary(summary: dict, workdir: Path) -> None:
    if summary["stopped_by_sigterm"]:
        print(f"SIGTERM: saved a checkpoint at step {summary['step']} in {workdir}; "
              "run the same command to resume")
        return
    train = summary.get("train") or {}
    line = f"done: {budget.describe(summary)}, {summary['num_params']:,} params"
    if train:
        line += f", train loss {train['loss']:.4f}, {train['tokens_per_sec']:.0f} tokens/s"
    if summary.get("validation"):
        line += f", validation ppl {summary['validation']['perplexity']:.2f}"
    if summary.get("compile_seconds") is not None:
        line += f", first step (compile) {summary['compile_seconds']:.1f}s"
    print(line)
