"""Models that experiment cells share: trained once per workdir, recorded, timed apart.

    user_overrides(ctx, spec, base)   the user's --config overrides that `spec`'s config has
    user_config(ctx, spec, base)      that config with `base`, then those overrides
    check_user_overrides(ctx, specs)  each of them names a key of some config, with a valid value
    cadence(spec, overrides, n)       n evenly spaced checkpoints over the run's steps, all kept
    trained(ctx, run)                 ensure_trained(run) once per run, recorded in
                                      <workdir>/artifacts.json with its command and first time
    trained_lm(ctx, run)              the same for an LM, plus its validation perplexity
    validation_perplexity(model, params)   per token, over the whole validation split
    corpus_plan(ctx, config)          where the LMs' text comes from: the Bible's lm view, or
                                      (the user's files) the target sides written out as text,
                                      with every model pinned to one tokenizer
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from lib.runner import RunContext, write_json
from lib.runs import TrainRun, applicable, check_overrides_apply, ensure_trained, override


def user_overrides(ctx: RunContext, spec: str, base: Sequence[str]) -> tuple[str, ...]:
    """The user's --config overrides whose key the config of `spec` (with `base`) has."""
    from lmfuse.config import load_config

    return applicable(load_config(spec, tuple(base)), ctx.overrides)


def user_config(ctx: RunContext, spec: str, base: Sequence[str]) -> ml_collections.ConfigDict:
    """The config of `spec` with `base` and then the user's overrides (the data it reads)."""
    from lmfuse.config import load_config

    return load_config(spec, (*base, *user_overrides(ctx, spec, base)))


def check_user_overrides(ctx: RunContext, specs: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Every --config override names a key of some (spec, base overrides) config the experiment
    trains, and has a value that config accepts."""
    from lmfuse.config import load_config

    configs = [load_config(spec, tuple(base)) for spec, base in specs]
    check_overrides_apply(ctx.overrides, configs)
    for (spec, base), config in zip(specs, configs, strict=True):
        load_config(spec, (*base, *applicable(config, ctx.overrides)))


def cadence(spec: str, overrides: Sequence[str], checkpoints: int) -> tuple[str, ...]:
    """A step budget: `checkpoints` evenly spaced checkpoints over the run's steps, all kept.
    Early stopping: a checkpoint at every evaluation, the last max(checkpoints, patience + 1)
    kept, so the best one by the stop metric is among them when the run stops."""
    from lmfuse.config import load_config

    train = load_config(spec, tuple(overrides)).train
    if train.patience:
        return (override("train.checkpoint_every", train.eval_every),
                override("train.keep_checkpoints", max(checkpoints, train.patience + 1)))
    every = max(1, math.ceil(train.steps / checkpoints))
    return (override("train.checkpoint_every", every),
            override("train.keep_checkpoints", checkpoints))


def trained(ctx: RunContext, run: TrainRun) -> dict[str, Any]:
    """Trains `run` unless finished, once per experiment run; records it in artifacts.json."""
    def make():
        info = ensure_trained(run)
        record_artifact(ctx, Path(run.workdir).name, command=run.command(),
                        train_seconds=info["trained_seconds"])
        return info

    return ctx.shared(f"trained:{run.workdir}", make)


def artifacts(ctx: RunContext) -> dict[str, dict[str, Any]]:
    path = ctx.workdir / "artifacts.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def record_artifact(ctx: RunContext, name: str, **values) -> None:
    """<workdir>/artifacts.json: each shared model's command, first training time, and an
    LM's validation perplexity."""
    path = ctx.workdir / "artifacts.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Locked, because two runs of one grid (different --set fractions=...) may share a workdir.
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = artifacts(ctx)
        entry = table.setdefault(name, {})
        for key, value in values.items():
            if key.endswith("seconds") and not value and entry.get(key):
                continue  # found finished: keep the time it took when it was trained
            # Times to a tenth; a perplexity whole, as the cells that use the model record it.
            entry[key] = round(value, 1) if key.endswith("seconds") else value
        write_json(path, table)


def trained_lm(ctx: RunContext, run: TrainRun) -> dict[str, Any]:
    """An LM trained (once) for fusion: its workdir, command and validation perplexity."""
    def make():
        name = Path(run.workdir).name
        seconds = trained(ctx, run)["trained_seconds"]
        perplexity = artifacts(ctx).get(name, {}).get("validation_perplexity")
        if seconds or perplexity is None:  # measured once per trained model
            from lmfuse.train.workdir import load_model

            perplexity = validation_perplexity(*load_model(run.workdir)[:2])
            record_artifact(ctx, name, validation_perplexity=perplexity)
        return {"workdir": run.workdir, "command": run.command(), "perplexity": perplexity}

    return ctx.shared(f"lm:{run.workdir}", make)


def validation_perplexity(model, params) -> float:
    """Per-token perplexity over the whole validation split (`lmfuse eval`'s number)."""
    from lmfuse.train.evaluation import evaluate

    return float(evaluate(model, params, "validation")["perplexity"])


# ---------------------------------------------------------------------------------------------
# The LMs' text


def corpus_plan(ctx: RunContext, config: Callable[[], ml_collections.ConfigDict]
                ) -> dict[str, Any]:
    """What the parallel data is, from an encoder-decoder's config (a function: loaded only
    once): {'bible': True, 'target'} (LMs read the lm view), or {'bible': False, 'tokenizer',
    'lm_files'}: other files, whose target sides `lm_files(percent)` writes out as LM text
    (percent None: all of train), and whose tokenizer every model shares."""
    def make():
        loaded = config()
        if loaded.data.corpus == "bible":
            return {"bible": True, "target": loaded.data.target}
        from lmfuse.data import corpora

        with loaded.unlocked():
            loaded.data.train_fraction = 1.0  # the vocabulary of all the training text
        tokenizer = str(corpora.prepare(loaded).path)
        directory = ctx.workdir / "data"

        def lm_files(percent: float | None) -> dict[str, str]:
            name = "all" if percent is None else f"f{percent:g}"
            files = {"train": _write_targets(loaded, "train", percent,
                                             directory / f"{name}.train.txt")}
            for split in ("validation", "test"):
                files[split] = _write_targets(loaded, split, None, directory / f"{split}.txt")
            return files

        return {"bible": False, "tokenizer": tokenizer, "lm_files": lm_files}

    return ctx.shared("data", make)


def pin_tokenizer(data: dict[str, Any]) -> tuple[str, ...]:
    """Off the Bible, every model is pinned to the encoder-decoder's tokenizer."""
    return () if data["bible"] else (override("tokenizer.model_file", data["tokenizer"]),)


def text_lm_data(data: dict[str, Any], percent: float | None = None) -> tuple[str, ...]:
    """The overrides that train an LM on the written-out target text (off the Bible)."""
    files = data["lm_files"](percent)
    return (override("data.corpus", "text"),
            *(override(f"data.files.{split}", path) for split, path in files.items()))


def _write_targets(config, split: str, percent: float | None, path: Path) -> str:
    from lmfuse.data import corpora

    with config.unlocked():
        config.data.train_fraction = 1.0 if percent is None else percent / 100
    lines = [e["target"] for e in corpora.load_examples(config, split).dataset if e is not None]
    text = "".join(" ".join(line.split()) + "\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return str(path)
