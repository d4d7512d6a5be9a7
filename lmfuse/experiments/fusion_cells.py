"""The cells of the fusion ablation: (parallel-data fraction, backbone, method) -> scores.

Models, as `lmfuse train` runs (each one a workdir under the experiment's workdir):

    lm_target                       the target-side LM (configs/lm_transformer.py): all target
                                    (ASV) training text; every fused cell uses it
    lm_f<p>                         density ratio's "source-domain" LM (McDermott et al.): the
                                    same LM on the target side of fraction p's parallel data
                                    (at 100% that is lm_target's text: lm_target is reused)
    s2s_<backbone>_f<p>             the plain encoder-decoder ('none'): the base that shallow,
                                    density-ratio and ILME decoding fuse, and the model that
                                    deep and linear fusion start from (its last checkpoint)
    <method>_<backbone>_f<p>        a trained fusion: cold and simple_* from scratch with the
                                    frozen LM, deep and linear from s2s_<backbone>_f<p>

On the Bible corpus the LMs read the lm view of the target version (`data.versions`), whose
`data.train_fraction` keeps exactly the verses the translate view keeps (the same fixed
permutation over the same verse list), and every model gets the tokenizer of
`tokenizer.versions`. On other corpora (the user's files) the LMs train on the target side of
the parallel files, written out as text, and every model is pinned to the encoder-decoder's
tokenizer (`tokenizer.model_file`), so all of them share one vocabulary.

Selection uses validation only: a trained model's checkpoint (every kept one is decoded) and a
decode-time method's λ (the grid; ILME's μ and density ratio's λ2 are tied to λ, as
`lmfuse translate` defaults them) are chosen by validation BLEU, then the test set is decoded
once at the choice. Every validation point is kept in the cell's result.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from lmfuse.errors import LmfuseError
from lmfuse.experiments.artifacts import (
    TrainRun,
    applicable,
    check_overrides_apply,
    ensure_trained,
    override,
)
from lmfuse.experiments.ledger import write_json
from lmfuse.experiments.runner import Cell, RunContext

DECODE_TIME = ("shallow", "density_ratio", "ilme")
TRAINED = ("deep", "cold", "simple_postnorm", "simple_prenorm", "linear")
PRETRAINED_S2S = ("deep", "linear")  # start from the plain encoder-decoder
METHODS = ("none", *DECODE_TIME, *TRAINED)
BACKBONES = {"transformer": "configs/s2s_transformer.py", "rnn": "configs/s2s_rnn.py"}
LM_CONFIG = "configs/lm_transformer.py"


@dataclasses.dataclass(frozen=True)
class Plan:
    """A budget's sizes (the experiment file sets them)."""

    variant: str | None  # 'tiny' or None (the full configs)
    lm_overrides: tuple[str, ...]  # for every LM
    s2s_overrides: tuple[str, ...]  # for every encoder-decoder, fused or not
    method_steps: dict[str, int]  # train.steps of deep / linear fusion (0: the config's)
    checkpoints: int  # checkpoints kept per encoder-decoder, chosen among on validation
    lambdas: tuple[float, ...]
    eval_sentences: int  # first N validation / test pairs in file order (0: all)

    def spec(self, path: str) -> str:
        return f"{path}:{self.variant}" if self.variant else path


def fraction_label(percent: float) -> str:
    return f"f{percent:g}"


def cell_key(percent: float, backbone: str, method: str) -> str:
    return f"{fraction_label(percent)}-{backbone}-{method}"


def check_grid(fractions, backbones, methods) -> None:
    for p in fractions:
        if not 0 < p <= 100:
            raise LmfuseError(f"fraction {p:g} is not a percentage in (0, 100]")
    for name, valid, given in (("backbone", BACKBONES, backbones), ("method", METHODS, methods)):
        for value in given:
            if value not in valid:
                raise LmfuseError(f"unknown {name} {value!r}; choose from {', '.join(valid)}")


def build_cells(plan: Plan, fractions, backbones, methods) -> list[Cell]:
    """One cell per (fraction, backbone, method), fraction-major, 'none' first within each."""
    check_grid(fractions, backbones, methods)
    ordered = [m for m in METHODS if m in methods]
    cells = []
    for percent in fractions:
        for backbone in backbones:
            for method in ordered:
                labels = {"fraction": percent, "backbone": backbone, "method": method}
                cells.append(Cell(cell_key(percent, backbone, method), labels,
                                  _cell_function(plan, percent, backbone, method)))
    return cells


def check_overrides(plan: Plan, context: RunContext) -> None:
    """Every --config override names a key of some config here and has a valid value."""
    from lmfuse.config import load_config

    configs = [load_config(plan.spec(LM_CONFIG), plan.lm_overrides)]
    configs += [load_config(plan.spec(p), plan.s2s_overrides) for p in BACKBONES.values()]
    check_overrides_apply(context.overrides, configs)
    load_config(plan.spec(LM_CONFIG), (*plan.lm_overrides,
                                       *applicable(configs[0], context.overrides)))
    for path, config in zip(BACKBONES.values(), configs[1:], strict=True):
        load_config(plan.spec(path), (*plan.s2s_overrides,
                                      *applicable(config, context.overrides)))


def _cell_function(plan: Plan, percent: float, backbone: str, method: str):
    if method == "none":
        return lambda ctx: _plain_cell(ctx, plan, percent, backbone)
    if method in DECODE_TIME:
        return lambda ctx: _decode_time_cell(ctx, plan, percent, backbone, method)
    return lambda ctx: _trained_cell(ctx, plan, percent, backbone, method)


# ---------------------------------------------------------------------------------------------
# The runs: configs and overrides (budget sizes, then the user's, then what defines the run)


def _user(ctx: RunContext, spec: str, base: tuple[str, ...]) -> tuple[str, ...]:
    from lmfuse.config import load_config

    return applicable(load_config(spec, base), ctx.overrides)


def _s2s_run(ctx: RunContext, plan: Plan, percent: float, backbone: str,
             method: str = "none") -> TrainRun:
    spec = plan.spec(BACKBONES[backbone])
    base = plan.s2s_overrides
    if method in TRAINED:
        base += _recipe(plan, method)
    user = _user(ctx, spec, base)
    defining = [override("data.train_fraction", percent / 100)]
    if method in TRAINED:
        defining += [override("fusion.method", method),
                     override("fusion.lm_workdir", _lm_run(ctx, plan, None).workdir)]
        if method in PRETRAINED_S2S:
            defining.append(override("fusion.s2s_workdir",
                                     _s2s_run(ctx, plan, percent, backbone).workdir))
    name = f"s2s_{backbone}" if method == "none" else f"{method}_{backbone}"
    overrides = (*base, *_cadence(ctx, plan, spec, base, user), *user, *_pin(ctx, plan),
                 *defining)
    return TrainRun(spec, str(ctx.workdir / f"{name}_{fraction_label(percent)}"), overrides)


def _recipe(plan: Plan, method: str) -> tuple[str, ...]:
    """Deep and linear fusion train a few weights on a trained model: their configs' learning
    rate and the plan's steps. Cold and simple fusion train like the plain model."""
    if method not in PRETRAINED_S2S:
        return ()
    from lmfuse.config import load_config

    rate = load_config(plan.spec(f"configs/fusion_{method}.py")).optimizer.learning_rate
    steps = plan.method_steps.get(method, 0)
    return (override("optimizer.learning_rate", rate),
            *([override("train.steps", steps)] if steps else []))


def _cadence(ctx: RunContext, plan: Plan, spec: str, base, user) -> tuple[str, ...]:
    """`plan.checkpoints` evenly spaced checkpoints over the run's steps, all kept."""
    from lmfuse.config import load_config

    steps = load_config(spec, (*base, *user)).train.steps
    every = max(1, math.ceil(steps / plan.checkpoints))
    return (override("train.checkpoint_every", every),
            override("train.keep_checkpoints", plan.checkpoints))


def _lm_run(ctx: RunContext, plan: Plan, percent: float | None) -> TrainRun:
    """The target LM (percent None or 100) or the LM of fraction `percent`'s targets."""
    if percent == 100:
        percent = None
    spec = plan.spec(LM_CONFIG)
    user = _user(ctx, spec, plan.lm_overrides)
    data = ctx.shared("data", lambda: _data_plan(ctx, plan))
    if data["bible"]:
        defining = [override("data.versions", data["target"])]
        if percent is not None:
            defining.append(override("data.train_fraction", percent / 100))
    else:
        files = data["lm_files"](percent)
        defining = [override("data.corpus", "text"),
                    *(override(f"data.files.{split}", path) for split, path in files.items())]
    name = "lm_target" if percent is None else f"lm_{fraction_label(percent)}"
    return TrainRun(spec, str(ctx.workdir / name),
                    (*plan.lm_overrides, *user, *_pin(ctx, plan), *defining))


def _pin(ctx: RunContext, plan: Plan) -> tuple[str, ...]:
    data = ctx.shared("data", lambda: _data_plan(ctx, plan))
    return () if data["bible"] else (override("tokenizer.model_file", data["tokenizer"]),)


def _data_plan(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """What the parallel data is: the Bible (LMs read its lm view), or other files (LMs read
    their target sides, written out here, and everything shares the s2s tokenizer)."""
    from lmfuse.config import load_config

    spec = plan.spec(BACKBONES["transformer"])
    config = load_config(spec, (*plan.s2s_overrides,
                                *_user(ctx, spec, plan.s2s_overrides)))
    if config.data.corpus == "bible":
        return {"bible": True, "target": config.data.target}
    from lmfuse.data import corpora

    with config.unlocked():
        config.data.train_fraction = 1.0  # the vocabulary of all the training text
    tokenizer = str(corpora.prepare(config).path)
    directory = ctx.workdir / "data"

    def lm_files(percent: float | None) -> dict[str, str]:
        name = "all" if percent is None else fraction_label(percent)
        files = {"train": _write_targets(config, "train", percent, directory / f"{name}.train.txt")}
        for split in ("validation", "test"):
            files[split] = _write_targets(config, split, None, directory / f"{split}.txt")
        return files

    return {"bible": False, "tokenizer": tokenizer, "lm_files": lm_files}


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


# ---------------------------------------------------------------------------------------------
# Shared artifacts: trained once per experiment workdir, timed apart from the cells


def _trained(ctx: RunContext, run: TrainRun) -> dict[str, Any]:
    def make():
        info = ensure_trained(run)
        _record_artifact(ctx, Path(run.workdir).name, command=run.command(),
                         train_seconds=info["trained_seconds"])
        return info

    return ctx.shared(f"trained:{run.workdir}", make)


def _artifacts(ctx: RunContext) -> dict[str, dict[str, Any]]:
    path = ctx.workdir / "artifacts.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _record_artifact(ctx: RunContext, name: str, **values) -> None:
    """<workdir>/artifacts.json: each shared model's command, first training time, and the
    LM's validation perplexity."""
    path = ctx.workdir / "artifacts.json"
    table = _artifacts(ctx)
    entry = table.setdefault(name, {})
    for key, value in values.items():
        if key.endswith("seconds") and not value and entry.get(key):
            continue  # found finished: keep the time it took when it was trained
        entry[key] = round(value, 1) if isinstance(value, float) else value
    write_json(path, table)


def _target_lm(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    """The target LM's workdir, command and validation perplexity."""
    def make():
        run = _lm_run(ctx, plan, None)
        name = Path(run.workdir).name
        trained = _trained(ctx, run)["trained_seconds"]
        artifacts = _artifacts(ctx)
        perplexity = artifacts.get(name, {}).get("validation_perplexity")
        if trained or perplexity is None:  # measured once per trained model
            from lmfuse.experiments.evaluation import validation_perplexity
            from lmfuse.train.workdir import load_trained

            trainer, state, _ = load_trained(run.workdir)
            perplexity = validation_perplexity(trainer, state.params)
            _record_artifact(ctx, name, validation_perplexity=perplexity)
        return {"workdir": run.workdir, "command": run.command(), "perplexity": perplexity}

    return ctx.shared("lm_target", make)


def _eval_sets(ctx: RunContext, plan: Plan, config) -> dict[str, Any]:
    """Validation and test subsets (the same for every cell), also written as files."""
    from lmfuse.experiments.evaluation import EvalSet

    def make():
        sets = {split: EvalSet.first(config, split, plan.eval_sentences)
                for split in ("validation", "test")}
        for evalset in sets.values():
            evalset.write(ctx.workdir / "eval")
        return sets

    return ctx.shared("eval_sets", make)


def _selection(ctx: RunContext, plan: Plan, run: TrainRun) -> dict[str, Any]:
    """Every kept checkpoint of a trained run decoded on validation; the best by BLEU.
    Cached in the workdir (recomputed when its checkpoints or the evaluation set change)."""
    from lmfuse.experiments import evaluation as ev
    from lmfuse.experiments.artifacts import kept_steps

    steps = kept_steps(run.workdir)
    key = {"steps": steps, "eval_sentences": plan.eval_sentences}
    cache = Path(run.workdir) / "selection.json"
    if cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored
    start = time.perf_counter()
    points = []
    for step in steps:
        trainer, params = ev.load_step(run.workdir, step)
        validation = _eval_sets(ctx, plan, trainer.config)["validation"]
        scores = ev.decode_and_score(trainer, params, _flags(None), validation)
        points.append({"step": step, "val": ev.brief(scores),
                       "val_perplexity": ev.validation_perplexity(trainer, params)})
    result = {"key": key, "points": points, "step": ev.pick(points)["step"],
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(cache, result)
    return result


def _plain_selection(ctx: RunContext, plan: Plan, percent: float, backbone: str):
    run = _s2s_run(ctx, plan, percent, backbone)

    def make():
        _trained(ctx, run)
        return _selection(ctx, plan, run)

    return run, ctx.shared(f"selection:{run.workdir}", make)


def _source_lm(ctx: RunContext, plan: Plan, percent: float) -> TrainRun:
    run = _lm_run(ctx, plan, percent)
    _trained(ctx, run)
    return run


# ---------------------------------------------------------------------------------------------
# Cells


def _plain_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str) -> dict[str, Any]:
    run, selection = _plain_selection(ctx, plan, percent, backbone)
    chosen = _point(selection["points"], "step", selection["step"])
    values = _finish(ctx, plan, run, selection["step"], None, chosen, selection["points"],
                     commands=[run.command()], key=cell_key(percent, backbone, "none"))
    # The model is shared (other cells decode it), but training and choosing it is this
    # cell's work: its wall time counts them (as first measured, so reruns agree).
    trained = _artifacts(ctx).get(Path(run.workdir).name, {}).get("train_seconds", 0.0)
    values["attributed_seconds"] = round(trained + selection.get("seconds", 0.0), 1)
    return values


def _decode_time_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str,
                      method: str) -> dict[str, Any]:
    from lmfuse.experiments import evaluation as ev

    lm = _target_lm(ctx, plan)
    run, selection = _plain_selection(ctx, plan, percent, backbone)
    source_lm = _source_lm(ctx, plan, percent) if method == "density_ratio" else None
    step = selection["step"]
    trainer, params = ev.load_step(run.workdir, step)
    validation = _eval_sets(ctx, plan, trainer.config)["validation"]
    points = []
    for weight in plan.lambdas:
        flags = _flags(method, lm["workdir"], weight, source_lm)
        scores = ev.decode_and_score(trainer, params, flags, validation)
        points.append({"lambda": weight, "val": ev.brief(scores)})
    chosen = ev.pick(points)
    flags = _flags(method, lm["workdir"], chosen["lambda"], source_lm)
    commands = [lm["command"], *([source_lm.command()] if source_lm else []), run.command()]
    values = _finish(ctx, plan, run, step, flags, chosen, points, commands,
                     key=cell_key(percent, backbone, method), loaded=(trainer, params))
    values["lm_perplexity"] = lm["perplexity"]
    return values


def _trained_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str,
                  method: str) -> dict[str, Any]:
    lm = _target_lm(ctx, plan)
    commands = [lm["command"]]
    if method in PRETRAINED_S2S:
        base = _s2s_run(ctx, plan, percent, backbone)
        _trained(ctx, base)
        commands.append(base.command())
    run = _s2s_run(ctx, plan, percent, backbone, method)
    ensure_trained(run)  # the cell's own training
    selection = _selection(ctx, plan, run)
    chosen = _point(selection["points"], "step", selection["step"])
    values = _finish(ctx, plan, run, selection["step"], None, chosen, selection["points"],
                     [*commands, run.command()], key=cell_key(percent, backbone, method))
    values["lm_perplexity"] = lm["perplexity"]
    return values


def _flags(method: str | None, lm: str | None = None, weight: float = 0.0,
           source_lm: TrainRun | None = None):
    """`lmfuse translate`'s fusion flags (method None: plain decoding)."""
    from lmfuse.decode.fusion_setup import FusionFlags

    if method is None:
        return FusionFlags()
    return FusionFlags(method, lm, weight, source_lm.workdir if source_lm else None)


def _point(points: list[dict], field: str, value) -> dict:
    return next(p for p in points if p[field] == value)


def _finish(ctx: RunContext, plan: Plan, run: TrainRun, step: int, flags, chosen: dict,
            points: list[dict], commands: list[str], key: str, loaded=None) -> dict[str, Any]:
    """Decodes the test set at the choice; the cell's values, with its reproducing commands."""
    from lmfuse.experiments import evaluation as ev

    trainer, params = loaded or ev.load_step(run.workdir, step)
    sets = _eval_sets(ctx, plan, trainer.config)
    test = ev.decode_and_score(trainer, params, flags or _flags(None), sets["test"])
    hypotheses = ctx.workdir / "cells" / f"{key}.test.hyp"
    hypotheses.parent.mkdir(parents=True, exist_ok=True)
    hypotheses.write_text("".join(h + "\n" for h in test["hypotheses"]), encoding="utf-8")
    translate = [_translate_command(ctx, run.workdir, step, flags, sets[split], key)
                 for split in ("validation", "test")]
    return {
        "step": step,
        "lambda": flags.lm_weight if flags else None,
        "val": chosen["val"],
        "val_perplexity": chosen.get("val_perplexity"),
        "test": ev.brief(test),
        "lm_perplexity": None,
        "sweep": points,
        "eval_sentences": {s: len(sets[s].sources) for s in sets},
        "bleu_signature": test["bleu_signature"],
        "chrf_signature": test["chrf_signature"],
        "beam_size": test["beam_size"],
        "commands": [*dict.fromkeys(commands), *translate],
    }


def _translate_command(ctx: RunContext, workdir: str, step: int, flags, evalset, key: str) -> str:
    import shlex

    args = ["lmfuse", "translate", "--workdir", workdir, "--step", str(step)]
    if evalset.limit:
        source = ctx.workdir / "eval" / f"{evalset.name}.src"
        output = ctx.workdir / "cells" / f"{key}.{evalset.split}.hyp"
        args += ["--input", str(source), "--output", str(output)]
    else:
        args += ["--split", evalset.split]
    if flags is not None:
        args += ["--fusion", flags.method, "--lm", flags.lm, "--lm_weight", f"{flags.lm_weight:g}"]
        if flags.source_lm:
            args += ["--source_lm", flags.source_lm]
    return shlex.join(args)



def describe_task(plan: Plan, ctx: RunContext) -> str:
    """The parallel data in words, from the encoder-decoders' config."""
    from lmfuse.config import load_config

    spec = plan.spec(BACKBONES["transformer"])
    data = load_config(spec, (*plan.s2s_overrides, *_user(ctx, spec, plan.s2s_overrides))).data
    if data.corpus == "bible":
        return (f"Bible style transfer {data.source.upper()} → {data.target.upper()} "
                "(translate view; Carlson et al. 2018's split)")
    return f"{data.corpus} corpus, translate view (train {data.files.train})"
