"""How long a run trains: a step budget (or one in epochs), early stopping on a validation
metric, and the record a run leaves at its workdir's root.

    train.epochs > 0    budget = ceil(epochs * steps_per_epoch), steps_per_epoch = the rows one
                        pass of the training pipeline makes (packed rows if data.pack, else
                        examples kept) / the rows of a step; else budget = train.steps
    train.patience > 0  stop once train.stop_metric (validation nll, or the BLEU / chrF of the
                        validation sample) has not beaten its best by more than
                        train.min_delta for `patience` evaluations in a row
    training.json       steps, epochs and wall seconds done, the budget, early stopping:
                        `training_record(workdir)` reads it

The early-stopping state and the wall time so far travel in each checkpoint (`Progress`, its
`progress` item), so a resumed run stops at the step an uninterrupted one stops at, and a run
that stopped early stays finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import ml_collections

from lmfuse.data import corpora
from lmfuse.data.pipeline import PipelineOptions, make_dataset
from lmfuse.data.tokenizer import Tokenizer
from lmfuse.errors import LmfuseError
from lmfuse.train import checkpoint

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

RECORD = "training.json"
# Early-stopping metrics and whether higher is better: the loss from every evaluation, the
# scores from the translation hook (`lmfuse.evaluate.validation`).
STOP_METRICS = {"nll": False, "bleu": True, "chrf": True}


def check_config(train_cfg: ml_collections.ConfigDict) -> None:
    """One-line errors for budget, cadence and early-stopping settings that cannot work,
    raised before the workdir is touched: a run of no steps would save an untrained checkpoint
    as if finished, keep_checkpoints=0 would keep none, and a zero cadence divides by zero
    mid-run."""
    if train_cfg.epochs < 0:
        raise LmfuseError(f"train.epochs={train_cfg.epochs} must be >= 0 (0: train.steps counts)")
    if train_cfg.epochs == 0 and train_cfg.steps <= 0:
        raise LmfuseError(f"train.steps={train_cfg.steps} must be >= 1 (or set train.epochs > 0); "
                          "a run of no steps would only save an untrained checkpoint")
    if train_cfg.keep_checkpoints < 1:
        raise LmfuseError(f"train.keep_checkpoints={train_cfg.keep_checkpoints} must be >= 1: "
                          "with 0 the run would keep no checkpoint at all")
    if train_cfg.checkpoint_every < 1:
        raise LmfuseError(f"train.checkpoint_every={train_cfg.checkpoint_every} must be >= 1 (the "
                          "run always saves at its end; set it to train.steps for only that one)")
    for key, meaning in (("log_every", "steps between metrics rows"),
                         ("batch_size", "rows per step"),
                         ("accum_steps", "micro-batches per step; 1: no accumulation")):
        if train_cfg[key] < 1:
            raise LmfuseError(f"train.{key}={train_cfg[key]} must be >= 1 ({meaning})")
    for key, meaning in (("eval_every", "0: no evaluation during training"),
                         ("eval_batches", "0: the whole validation split")):
        if train_cfg[key] < 0:
            raise LmfuseError(f"train.{key}={train_cfg[key]} must be >= 0 ({meaning})")
    if not 0.0 <= train_cfg.label_smoothing < 1.0:
        raise LmfuseError(f"train.label_smoothing={train_cfg.label_smoothing} must be in [0, 1)")
    if train_cfg.patience < 0 or train_cfg.min_delta < 0:
        raise LmfuseError(f"train.patience={train_cfg.patience} and train.min_delta="
                          f"{train_cfg.min_delta} must be >= 0 (patience 0: no early stopping)")
    if train_cfg.stop_metric not in STOP_METRICS:
        raise LmfuseError(f"train.stop_metric={train_cfg.stop_metric!r} is not one of "
                          f"{', '.join(STOP_METRICS)}")
    if train_cfg.patience and train_cfg.eval_every <= 0:
        raise LmfuseError(f"train.patience={train_cfg.patience} needs validation evaluations: "
                          "set train.eval_every > 0, or train.patience=0")


def stop_metric(train_cfg: ml_collections.ConfigDict, scored: bool) -> str:
    """train.stop_metric, refused in one line when the run's evaluations cannot give it: BLEU
    and chrF come from the translation hook (`scored`), which only encoder-decoders on a
    translate view with train.eval_translate_sample > 0 get."""
    metric = train_cfg.stop_metric
    if metric != "nll" and train_cfg.eval_every and not scored:  # without evaluations: unread
        raise LmfuseError(f"train.stop_metric={metric} needs {metric} at each evaluation, which "
                          "only an encoder-decoder on a translate view with "
                          "train.eval_translate_sample > 0 gets; set train.stop_metric=nll")
    return metric


@dataclasses.dataclass(frozen=True)
class Budget:
    steps: int
    rows_per_epoch: int | None = None  # global rows of one pass (None: not counted)
    batch_size: int = 0  # global rows per step

    @property
    def steps_per_epoch(self) -> float | None:
        return self.rows_per_epoch / self.batch_size if self.rows_per_epoch else None


def step_budget(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> Budget:
    """train.steps, or (train.epochs > 0) the steps of that many passes over the training data."""
    train_cfg = config.train
    if train_cfg.epochs <= 0:
        return Budget(train_cfg.steps)
    rows = rows_per_epoch(config, tokenizer)
    # Rounded first, so that e.g. 0.1 epochs of 30 steps is 3 steps, not 4.
    steps = max(1, math.ceil(round(train_cfg.epochs * rows / train_cfg.batch_size, 6)))
    return Budget(steps, rows, train_cfg.batch_size)


def rows_per_epoch(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> int:
    """Global rows of one pass over the training split: the training pipeline (same order,
    packing and filters) run once, whole; its global batches are the same on every process
    (`lmfuse.data.pipeline`), so every process finds the same count. Training repeats the data
    without a break, so packing across an epoch's end saves at most a fraction of a row per
    bin."""
    options = PipelineOptions.from_config(config, "train", num_epochs=1, drop_remainder=False,
                                          shard_index=0, shard_count=1)
    examples = corpora.load_examples(config, "train", in_memory=True).dataset  # a whole pass
    dataset = make_dataset(examples, tokenizer, options)
    rows = sum(batch["inputs"].shape[0] for batch in dataset)
    if not rows:
        raise LmfuseError("the training split has no examples; check data.files / data.corpus")
    return rows


@dataclasses.dataclass
class Progress:
    """What a checkpoint keeps of the run besides its state (stored as JSON)."""

    wall_seconds: float = 0.0  # time in the loop up to this checkpoint, summed over resumes
    best_value: float | None = None  # the best value of train.stop_metric so far, and its step
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False

    @classmethod
    def from_json(cls, stored: dict) -> Progress:
        fields = {f.name for f in dataclasses.fields(cls)}
        if "best_loss" in stored:  # saved when only the nll stopped runs
            stored = {**stored, "best_value": stored["best_loss"]}
        return cls(**{k: v for k, v in stored.items() if k in fields})

    @classmethod
    def restore(cls, manager: ocp.CheckpointManager, step: int) -> Progress:
        """The progress saved with checkpoint `step` (the defaults if it was saved without)."""
        return cls.from_json(checkpoint.read_progress(manager, step))

    def observe(self, step: int, result: dict, train_cfg: ml_collections.ConfigDict) -> None:
        """Takes one evaluation's metrics; tracks the best train.stop_metric and sets
        `stopped_early` once it has not improved by train.min_delta for train.patience
        evaluations."""
        value = float(result[train_cfg.stop_metric])
        sign = -1.0 if STOP_METRICS[train_cfg.stop_metric] else 1.0  # as a loss: lower is better
        if self.best_value is None or sign * value < sign * self.best_value - train_cfg.min_delta:
            self.best_value, self.best_step, self.evals_since_best = value, step, 0
        else:
            self.evals_since_best += 1
        self.stopped_early = 0 < train_cfg.patience <= self.evals_since_best


def record(budget: Budget, step: int, progress: Progress, stop_metric: str = "nll") -> dict:
    """The run as training.json holds it (and `train` returns it)."""
    per_epoch = budget.steps_per_epoch
    return {
        "steps": step,
        "step_budget": budget.steps,
        "finished": progress.stopped_early or step >= budget.steps,
        "stopped_early": progress.stopped_early,
        "epochs": step / per_epoch if per_epoch else None,
        "steps_per_epoch": per_epoch,
        "rows_per_epoch": budget.rows_per_epoch,
        "wall_seconds": progress.wall_seconds,
        "stop_metric": stop_metric,
        "best_validation_step": progress.best_step,
        "best_validation_value": progress.best_value,
    }


def describe(record: dict) -> str:
    """'step 120 of 400, 2.50 epochs, 31s, stopped early (best validation loss 3.1 at step 80)'"""
    text = f"step {record['steps']} of {record['step_budget']}"
    if record.get("epochs") is not None:
        text += f", {record['epochs']:.2f} epochs"
    if record.get("wall_seconds") is not None:
        text += f", {record['wall_seconds']:.0f}s"
    if record.get("stopped_early"):
        metric = record.get("stop_metric", "nll")
        text += (f", stopped early (best validation {metric} "
                 f"{record['best_validation_value']:.4f} at step {record['best_validation_step']})")
    return text


def write_record(workdir: str | Path, values: dict) -> None:
    path = Path(workdir) / RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=1) + "\n")
    os.replace(tmp, path)


def training_record(workdir: str | Path) -> dict | None:
    """The workdir's training.json (None if it has none): `steps`, `step_budget`, `finished`
    (the budget is spent or the run stopped early), `stopped_early`, `epochs`, `steps_per_epoch`
    and `rows_per_epoch` (None unless train.epochs > 0), `wall_seconds` (time in the training
    loop up to the last checkpoint, summed over resumes; None for a checkpoint saved before
    runs kept it), `stop_metric`, and `best_validation_step` and `best_validation_value` (the
    best of that metric; None without evaluations)."""
    path = Path(workdir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def finished(workdir: str | Path, budget: Budget, stop_metric: str = "nll") -> dict | None:
    """The record of a workdir that has nothing left to train under `budget` (written to
    training.json and printed on the main process), else None."""
    if not checkpoint.checkpoint_dir(workdir).is_dir():
        return None
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        step = manager.latest_step()
        if step is None:
            return None
        stored = checkpoint.read_progress(manager, step)
        done = record(budget, step, Progress.from_json(stored), stop_metric)
        if not done["finished"]:
            return None
        checkpoint.verify(manager, step)  # a finished run's arrays are read once more, here only
    except checkpoint.Damaged:
        return None  # not finished: the loop's restore falls back to an intact checkpoint, and says so
    finally:
        manager.close()
    if not stored:  # saved before runs kept their time
        done["wall_seconds"] = None
    if jax.process_index() == 0:
        write_record(workdir, done)
        print(f"{workdir} is finished ({describe(done)}); nothing to train")
    return done


def print_summary(summary: dict, workdir: Path) -> None:
    """The line `train` ends with: the record, the last training and validation metrics."""
    if summary["stopped_by_sigterm"]:
        print(f"SIGTERM: saved a checkpoint at step {summary['step']} in {workdir}; "
              "run the same command to resume")
        return
    train = summary.get("train") or {}
    line = f"done: {describe(summary)}, {summary['num_params']:,} params"
    if train:
        line += f", train loss {train['loss']:.4f}, {train['tokens_per_sec']:.0f} tokens/s"
    validation = summary.get("validation") or {}
    if validation:
        line += f", validation ppl {validation['perplexity']:.2f}"
    if validation.get("bleu") is not None:
        line += f", BLEU {validation['bleu']:.2f} (sample)"
    if summary.get("compile_seconds") is not None:
        line += f", first step (compile) {summary['compile_seconds']:.1f}s"
    print(line)
