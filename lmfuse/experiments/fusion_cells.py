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
from typing import Any

from lmfuse.errors import LmfuseError
from lmfuse.experiments.artifacts import TrainRun, ensure_trained, override
from lmfuse.experiments.cell_decoding import (
    Evaluation,
    chosen_checkpoint,
    decode_time_cell,
    finish,
    plain_cell,
    point,
    selection,
)
from lmfuse.experiments.runner import Cell, RunContext
from lmfuse.experiments.shared_models import (
    cadence,
    check_user_overrides,
    corpus_plan,
    pin_tokenizer,
    text_lm_data,
    trained,
    trained_lm,
    user_config,
    user_overrides,
)

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
    # Steps multiplier per backbone, so backbones whose configs train smaller batches see as
    # many tokens as the others (the tiny RNN trains 16 rows a step, the Transformer 32).
    step_scale: dict[str, int] = dataclasses.field(default_factory=dict)

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
    check_user_overrides(context, [(plan.spec(LM_CONFIG), plan.lm_overrides)]
                         + [(plan.spec(p), plan.s2s_overrides) for p in BACKBONES.values()])


def _cell_function(plan: Plan, percent: float, backbone: str, method: str):
    if method == "none":
        return lambda ctx: _plain_cell(ctx, plan, percent, backbone)
    if method in DECODE_TIME:
        return lambda ctx: _decode_time_cell(ctx, plan, percent, backbone, method)
    return lambda ctx: _trained_cell(ctx, plan, percent, backbone, method)


# ---------------------------------------------------------------------------------------------
# The runs: configs and overrides (budget sizes, then the user's, then what defines the run)


def _evaluation(ctx: RunContext, plan: Plan) -> Evaluation:
    return Evaluation(plan.eval_sentences, ctx.workdir / "eval")


def _s2s_run(ctx: RunContext, plan: Plan, percent: float, backbone: str,
             method: str = "none") -> TrainRun:
    spec = plan.spec(BACKBONES[backbone])
    base = plan.s2s_overrides
    if method in TRAINED:
        base += _recipe(plan, method)
    base += _scaled_steps(plan, spec, backbone, base)
    user = user_overrides(ctx, spec, base)
    defining = [override("data.train_fraction", percent / 100)]
    if method in TRAINED:
        defining += [override("fusion.method", method),
                     override("fusion.lm_workdir", _lm_run(ctx, plan, None).workdir)]
        if method in PRETRAINED_S2S:
            defining.append(override("fusion.s2s_workdir",
                                     _s2s_run(ctx, plan, percent, backbone).workdir))
    name = f"s2s_{backbone}" if method == "none" else f"{method}_{backbone}"
    overrides = (*base, *cadence(spec, (*base, *user), plan.checkpoints), *user,
                 *pin_tokenizer(_data(ctx, plan)), *defining)
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


def _scaled_steps(plan: Plan, spec: str, backbone: str, base: tuple[str, ...]
                  ) -> tuple[str, ...]:
    scale = plan.step_scale.get(backbone, 1)
    if scale == 1:
        return ()
    from lmfuse.config import load_config

    return (override("train.steps", scale * load_config(spec, base).train.steps),)


def _lm_run(ctx: RunContext, plan: Plan, percent: float | None) -> TrainRun:
    """The target LM (percent None or 100) or the LM of fraction `percent`'s targets."""
    if percent == 100:
        percent = None
    spec = plan.spec(LM_CONFIG)
    user = user_overrides(ctx, spec, plan.lm_overrides)
    data = _data(ctx, plan)
    if data["bible"]:
        defining = (override("data.versions", data["target"]),)
        if percent is not None:
            defining += (override("data.train_fraction", percent / 100),)
    else:
        defining = text_lm_data(data, percent)
    name = "lm_target" if percent is None else f"lm_{fraction_label(percent)}"
    return TrainRun(spec, str(ctx.workdir / name),
                    (*plan.lm_overrides, *user, *pin_tokenizer(data), *defining))


def _s2s_config(ctx: RunContext, plan: Plan):
    """The encoder-decoders' config as the user's overrides leave it (the data they read)."""
    return user_config(ctx, plan.spec(BACKBONES["transformer"]), plan.s2s_overrides)


def _data(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    return corpus_plan(ctx, lambda: _s2s_config(ctx, plan))


def _source_lm(ctx: RunContext, plan: Plan, percent: float) -> TrainRun:
    run = _lm_run(ctx, plan, percent)
    trained(ctx, run)
    return run


# ---------------------------------------------------------------------------------------------
# Cells


def _plain_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str) -> dict[str, Any]:
    return plain_cell(ctx, _evaluation(ctx, plan), _s2s_run(ctx, plan, percent, backbone),
                      cell_key(percent, backbone, "none"))


def _decode_time_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str,
                      method: str) -> dict[str, Any]:
    lm = trained_lm(ctx, _lm_run(ctx, plan, None))
    run = _s2s_run(ctx, plan, percent, backbone)
    evaluation = _evaluation(ctx, plan)
    chosen_checkpoint(ctx, evaluation, run)  # the base model before the source LM, as listed
    source_lm = _source_lm(ctx, plan, percent) if method == "density_ratio" else None
    return decode_time_cell(ctx, evaluation, run, lm, method, plan.lambdas,
                            cell_key(percent, backbone, method), source_lm)


def _trained_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str,
                  method: str) -> dict[str, Any]:
    lm = trained_lm(ctx, _lm_run(ctx, plan, None))
    commands = [lm["command"]]
    if method in PRETRAINED_S2S:
        base = _s2s_run(ctx, plan, percent, backbone)
        trained(ctx, base)
        commands.append(base.command())
    run = _s2s_run(ctx, plan, percent, backbone, method)
    ensure_trained(run)  # the cell's own training
    evaluation = _evaluation(ctx, plan)
    chosen = selection(ctx, evaluation, run)
    values = finish(ctx, evaluation, run, chosen["step"], None,
                    point(chosen["points"], "step", chosen["step"]), chosen["points"],
                    [*commands, run.command()], key=cell_key(percent, backbone, method))
    values["lm_perplexity"] = lm["perplexity"]
    return values


def describe_task(plan: Plan, ctx: RunContext) -> str:
    """The parallel data in words, from the encoder-decoders' config."""
    data = _s2s_config(ctx, plan).data
    if data.corpus == "bible":
        return (f"Bible style transfer {data.source.upper()} → {data.target.upper()} "
                "(translate view; Carlson et al. 2018's split)")
    return f"{data.corpus} corpus, translate view (train {data.files.train})"
