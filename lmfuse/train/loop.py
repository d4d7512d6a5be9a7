"""The training loop: config -> sharded state -> jitted steps -> checkpoints and metrics.

    tokenizer + data  ->  model (registry)  ->  mesh + logical rules  ->  sharded TrainState
      -> restore the latest checkpoint if the workdir has one (state + data iterator)
      -> config.json, config.txt and a provenance.json entry at the workdir root
         (`lmfuse.train.provenance`); the config to TensorBoard as text and hyperparameters
      -> for each step: next batch -> global array -> train_step (jit, donated state)
      -> every log_every: metrics to TensorBoard / metrics.jsonl / progress bar (one host sync)
      -> every eval_every (and at the last step): validation perplexity plus what the
         `extra_eval` hook adds (`lmfuse train`: BLEU, chrF of an encoder-decoder); early
         stopping (train.patience, on train.stop_metric) on the eval_every ones; every
         checkpoint_every: checkpoint
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
import signal
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections

from lmfuse.data import corpora
from lmfuse.data.pipeline import PipelineOptions, make_dataset
from lmfuse.progress import progress_bar
from lmfuse.train import budget, checkpoint, divergence, provenance, sharding
from lmfuse.train.budget import training_record
from lmfuse.train.evaluation import evaluate, split_counts
from lmfuse.train.metrics_log import (
    MetricsLog,
    model_flops_per_token,
    peak_flops_per_device,
    step_record,
)
from lmfuse.train.trainer import Trainer, build_trainer, check_config, tokenizer_ref

__all__ = ["ExtraEval", "train", "training_record"]

# Extra validation metrics at each evaluation: (trainer, params, step) -> {name: number}.
ExtraEval = Callable[[Trainer, object, int], dict[str, float]]


class _StopFlag:
    """Set by SIGTERM; checked once per step, so the handler itself does no work."""

    def __init__(self):
        self.raised = False

    def __call__(self, signum, frame):
        self.raised = True


def train(config: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True,
          extra_eval: ExtraEval | None = None) -> dict:
    """Trains to the step budget (`lmfuse.train.budget`), resuming from the workdir's latest
    checkpoint; returns the run's record (as training.json holds it) and its last metrics.
    `extra_eval` adds metrics to every validation evaluation (run on every process)."""
    check_config(config)  # every check that needs no data, before anything is written
    stop_metric = budget.stop_metric(config.train, scored=extra_eval is not None)
    workdir = Path(workdir)
    tokenizer = corpora.prepare(config)
    workdir.mkdir(parents=True, exist_ok=True)  # after the data: a data error leaves no workdir
    plan = budget.step_budget(config, tokenizer)
    done = budget.finished(workdir, plan, stop_metric)  # nothing to train: says so, returns it
    if done is not None:
        return done
    trainer = build_trainer(config, tokenizer, total_steps=plan.steps)
    config = trainer.config  # a fused config gains its LM's model config, saved with the state
    train_cfg = config.train
    is_main = jax.process_index() == 0

    options = PipelineOptions.from_config(config, "train")
    # A run of at least one epoch reads the split in one go: record by record, decoding the
    # records is most of the input pipeline's time (3-4x fewer batches/s on the Carlson pairs,
    # experiments/bench_pipeline.py). The examples, and so the batches, are the same.
    in_memory = plan.steps_per_epoch is not None and plan.steps >= plan.steps_per_epoch
    examples = corpora.load_examples(config, "train", in_memory=in_memory).dataset
    iterator = iter(make_dataset(examples, tokenizer, options))
    manager = checkpoint.make_manager(workdir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    if manager.latest_step() is not None:
        state, start = checkpoint.restore(manager, trainer.abstract_state, iterator)
        run = budget.Progress.restore(manager, start)
        if is_main:
            print(f"resuming {workdir} from step {start}")
    else:
        state, start = trainer.init_fn(jax.random.key(config.seed)), 0
        run = budget.Progress()
    provenance.record_run(workdir, config, start)  # process 0 writes

    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGTERM, stop)
    log = MetricsLog(workdir, enabled=is_main, start_step=start)  # drops rows after `start`
    log.write_config(config, start)
    dropout_key = jax.random.key(config.seed + 1)
    peak = peak_flops_per_device(train_cfg.peak_tflops)
    flops_token = model_flops_per_token(config, trainer.num_params)
    bar = progress_bar(total=plan.steps, initial=start, disable=not (progress and is_main),
               desc="train", unit="step", dynamic_ncols=True)
    pending: list[tuple[int, dict]] = []
    last_time = compile_start = time.perf_counter()
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
        record = step_record(fetched, trainer.schedule(pending[-1][0]), now - last_time,
                             flops_token, peak)
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
                on_grid = train_cfg.eval_every and step % train_cfg.eval_every == 0
                # The last step too: a budget off the eval grid still ends with a validation point.
                at_eval = train_cfg.eval_every and (on_grid or step == plan.steps)
                at_ckpt = step % train_cfg.checkpoint_every == 0
                if at_log or at_eval or at_ckpt or step == plan.steps:
                    summary["train"] = flush_metrics() or summary.get("train")
                if at_eval:
                    result = evaluate(trainer, state.params, "validation", train_cfg.eval_batches)
                    result.update(extra_eval(trainer, state.params, step) if extra_eval else {})
                    scores, counts = split_counts(result)
                    log.write(step, scores, "validation", counts)
                    summary["validation"] = result
                    last_time = time.perf_counter()  # tokens/s counts training time only
                if on_grid:  # the every-eval_every evaluations only: a resume stops alike
                    run.observe(step, result, train_cfg)
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

    done = budget.record(plan, step, run, stop_metric)
    summary.update(done, step=step, compile_seconds=compile_seconds,
                   num_params=trainer.num_params, stopped_by_sigterm=stop.raised)
    if is_main:
        budget.write_record(workdir, done)
        budget.print_summary(summary, workdir)
    return summary
