"""Training runs as the `lmfuse train` commands that reproduce them: train once, reuse while
the config is the same.

    run = TrainRun('configs/lm_transformer.py:tiny', 'workdirs/x/lm', ('--config.train.steps=300',))
    run.command()        -> 'lmfuse train --config configs/lm_transformer.py:tiny --workdir ...'
    ensure_trained(run)  -> trains in-process (as that command would), resumes a partial
                            workdir, and leaves a finished one untouched

A workdir whose stored config differs from the run's is refused with the first differing key,
so a changed experiment never silently reuses a model trained for another one.

    size_overrides('cpu', {'s2s_steps': 1000, 'lm_steps': 300, 'lm_seq_len': 96, 'beam_size': 4})
      -> (encoder-decoder overrides, LM overrides): a budget's sizes (0 keeps the config's)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from lmfuse.config import OVERRIDE_PREFIX, load_config
from lmfuse.errors import LmfuseError


@dataclasses.dataclass(frozen=True)
class TrainRun:
    config: str  # 'configs/<file>.py[:variant]'
    workdir: str
    overrides: tuple[str, ...] = ()  # '--config.key=value', later ones win

    def __post_init__(self):
        # Only the last override of a key counts, so the others are left out of the command.
        last = {override_key(o): i for i, o in enumerate(self.overrides)}
        kept = tuple(o for i, o in enumerate(self.overrides) if last[override_key(o)] == i)
        object.__setattr__(self, "overrides", kept)

    def command(self) -> str:
        return shlex.join(["lmfuse", "train", "--config", self.config, "--workdir", self.workdir,
                           *self.overrides])

    def load(self) -> ml_collections.ConfigDict:
        return load_config(self.config, self.overrides)


def override(key: str, value: Any) -> str:
    return f"{OVERRIDE_PREFIX}{key}={value}"


def override_key(text: str) -> str:
    body = text[len(OVERRIDE_PREFIX):] if text.startswith(OVERRIDE_PREFIX) else text
    return body.partition("=")[0]


def has_key(config: ml_collections.ConfigDict, key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def applicable(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides whose key exists in `config` (decode.* means nothing to an LM)."""
    return tuple(o for o in overrides if has_key(config, override_key(o)))


def check_overrides_apply(overrides: Sequence[str], configs: Sequence[ml_collections.ConfigDict]
                          ) -> None:
    """Each override must name a key of at least one config the experiment trains."""
    for text in overrides:
        if not any(has_key(c, override_key(text)) for c in configs):
            raise LmfuseError(f"override {text} names a key that none of the experiment's "
                              "configs has; check its spelling")


def ensure_trained(run: TrainRun) -> dict[str, Any]:
    """Trains `run` unless its workdir is finished (its step budget spent, or stopped early on
    validation): {'trained_seconds', 'steps' (kept)}."""
    from lmfuse.evaluate.validation import translation_hook
    from lmfuse.train.loop import train, training_record

    config = run.load()
    steps = kept_steps(run.workdir)
    if steps:
        _check_same_config(run, config)
    if not _finished(run.workdir, steps, config):
        start = time.perf_counter()
        # As `lmfuse train` does (the command the study records): BLEU at each evaluation.
        train(config, run.workdir, progress=False, extra_eval=translation_hook(config))
        steps = kept_steps(run.workdir)
        if not _finished(run.workdir, steps, config):  # SIGTERM: saved, not finished
            record = training_record(run.workdir) or {}
            raise LmfuseError(f"training {run.workdir} stopped at step {steps[-1] if steps else 0}"
                              f" of {record.get('step_budget', config.train.steps)}; run again "
                              "to resume it")
        return {"trained_seconds": time.perf_counter() - start, "steps": steps}
    return {"trained_seconds": 0.0, "steps": steps}


def _finished(workdir: str, steps: list[int], config: ml_collections.ConfigDict) -> bool:
    """The training record says so; a workdir from before records: its last step is the
    config's budget."""
    from lmfuse.train.loop import training_record

    if not steps:
        return False
    record = training_record(workdir)
    if record is not None:
        return bool(record["finished"]) and record["steps"] == steps[-1]
    return steps[-1] >= config.train.steps


def kept_steps(workdir: str | Path) -> list[int]:
    """The steps of the workdir's finished checkpoints, ascending ([] if none)."""
    from lmfuse.train import checkpoint

    if not checkpoint.checkpoint_dir(workdir).is_dir():
        return []
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def _check_same_config(run: TrainRun, config: ml_collections.ConfigDict) -> None:
    from lmfuse.schema import base_config, decode_config
    from lmfuse.train.workdir import load_workdir_config

    stored = _flat(json.loads(load_workdir_config(run.workdir).to_json()))
    wanted = _flat(json.loads(config.to_json()))
    # A key added to the schema after the workdir was trained: it trained as the default says.
    defaults = _flat({**base_config().to_dict(), "decode": decode_config().to_dict()})
    for key in sorted(set(stored) | set(wanted)):
        if key.startswith("fusion.lm_model"):
            continue  # filled in from the LM's workdir when fused training starts
        if key not in stored and key in defaults and wanted.get(key) == defaults[key]:
            continue
        if stored.get(key) != wanted.get(key):
            raise LmfuseError(
                f"workdir {run.workdir} was trained with {key}={stored.get(key)!r}, this run has "
                f"{wanted.get(key)!r}; use another --workdir (or delete that one)"
            )


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def size_overrides(budget: str, sizes: Mapping[str, int]
                   ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(encoder-decoder, LM) overrides for `s2s_steps`, `lm_steps`, `lm_seq_len`, `beam_size`;
    `s2s_epochs` > 0: an epoch budget instead of steps; `patience` > 0: early stopping, with
    `eval_every` (an evaluation every that many steps) and, if given, `stop_metric` (the
    metric it watches; 'nll' if not) with `eval_translate_sample` (the validation pairs
    decoded for BLEU at each evaluation)."""
    def steps(n: int) -> tuple[str, ...]:
        return (override("train.steps", n),) if n else ()

    s2s = steps(sizes["s2s_steps"])
    if sizes.get("s2s_epochs"):
        s2s += (override("train.epochs", sizes["s2s_epochs"]),)
    if sizes.get("patience"):
        s2s += (override("train.patience", sizes["patience"]),
                override("train.eval_every", sizes["eval_every"]))
        if sizes.get("stop_metric", "nll") != "nll":
            s2s += (override("train.stop_metric", sizes["stop_metric"]),
                    override("train.eval_translate_sample", sizes["eval_translate_sample"]))
    elif budget == "cpu":  # validation is scored at the checkpoints, not during training
        s2s += (override("train.eval_every", 0),)
    if sizes["beam_size"]:
        s2s += (override("decode.beam_size", sizes["beam_size"]),)
    lm = steps(sizes["lm_steps"])
    if sizes["lm_seq_len"]:  # fused decoding and training run the LM over whole outputs
        lm += tuple(override(key, sizes["lm_seq_len"])
                    for key in ("data.seq_len", "data.max_length", "model.max_len"))
    return s2s, lm


def training_facts(workdir: str | Path) -> dict[str, Any]:
    """Steps, epochs and wall seconds of a finished run, and whether it stopped early, from
    its training record ({} for a workdir trained before records were kept). A step budget's
    record has no epochs: they are counted here (one pass of the training pipeline)."""
    from lmfuse.train.loop import training_record

    record = training_record(workdir)
    if record is None:
        return {}
    facts = {k: record.get(k) for k in ("steps", "epochs", "wall_seconds", "stopped_early",
                                        "best_validation_step")}
    if facts["epochs"] is None and facts["steps"]:
        facts["epochs"] = facts["steps"] / _steps_per_epoch(str(workdir))
    return facts


@functools.cache
def _steps_per_epoch(workdir: str) -> float:
    """One pass of the workdir's training pipeline, counted once per process: the cells that
    share a model would otherwise each run it again."""
    from lmfuse.train.budget import rows_per_epoch
    from lmfuse.train.workdir import load_workdir_config, load_workdir_tokenizer

    config = load_workdir_config(workdir)
    return rows_per_epoch(config, load_workdir_tokenizer(workdir)) / config.train.batch_size
