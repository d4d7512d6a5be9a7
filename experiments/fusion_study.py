"""Fusion study: how much does fusing a target-side LM help as parallel data shrinks?

    python experiments/fusion_study.py --budget cpu
    python experiments/fusion_study.py --budget gpu
    python experiments/fusion_study.py --fractions 5 --methods none shallow

Grid: parallel-data fraction {1, 5, 20, 100}% of the training pairs (`data.train_fraction`, a
fixed subset, smaller fractions inside larger ones) x method {none, shallow, density_ratio,
ilme, rescore, deep, deep_no_lm, cold, simple_postnorm, simple_prenorm, linear, lm_prior} x backbone
{transformer, rnn} x training seed (--seeds), on
Bible style transfer YLT -> ASV (configs/s2s_transformer.py and configs/s2s_rnn.py). The LM is
configs/lm_transformer.py on all ASV training text, for both backbones (the fused models take
any decoder-only LM; a Transformer LM with an RNN encoder-decoder trains and decodes). The
results go to experiments/results/fusion_study.{md,csv,png}.

Models, as `lmfuse train` runs (each one a workdir under the study's workdir):

    lm_target                       the target-side LM: all target (ASV) training text; every
                                    fused cell uses it
    lm_f<p>                         density ratio's "source-domain" LM (McDermott et al.): the
                                    same LM on the target side of fraction p's parallel data,
                                    for p% of lm_target's steps (as many passes over its text)
                                    (at 100% that is lm_target's text: lm_target is reused)
    s2s_<backbone>_f<p>             the plain encoder-decoder ('none'): the base that shallow,
                                    density-ratio and ILME decoding fuse, and the model that
                                    deep and linear fusion start from (at its checkpoint
                                    chosen on validation, `fusion.s2s_step`)
    <method>_<backbone>_f<p>        a trained fusion (configs/fusion.py:<method>): cold,
                                    simple_* and lm_prior from scratch with the frozen LM, deep
                                    and linear from s2s_<backbone>_f<p>; deep_no_lm is deep
                                    fusion's control, the same training with the LM's state
                                    zeroed (`fusion.lm_ablated`): what deep fusion gains over
                                    it is the LM's, not more training of the output layer
    ..._s<n>                        the same with training seed n (seed 0 has no suffix)

On the Bible corpus the LMs read the lm view of the target version (`data.versions`), whose
`data.train_fraction` keeps exactly the verses the translate view keeps (the same fixed
permutation over the same verse list), and every model gets the tokenizer of
`tokenizer.versions`. On other corpora (your files) the LMs train on the target side of the
parallel files, written out as text, and every model is pinned to the encoder-decoder's
tokenizer (`tokenizer.model_file`), so all of them share one vocabulary.

Every model trained from scratch has an epoch budget over its own fraction's pairs, with
early stopping on the BLEU of a validation sample (`train.epochs`, `train.patience`,
`train.stop_metric`), so small fractions are not undertrained nor large ones cut short; each
row reports the steps, epochs and training time its model took (the cpu budget gives all the
pairs 4 epochs, the RNN 2, not 60: 30 minutes a model, with about half an epoch of patience).
Deep and linear fusion fine-tune for the budget's steps.

The protocol is `lmfuse.evaluate.protocol`'s. Selection reads a seeded validation sample
spread over every book (--val_sample) and nothing else: a trained model's checkpoint (early
stopping's best, else the best validation BLEU of those kept) and a
decode-time method's weights (every combination of the grids of λ,
λ_src, μ and β its formula has, each grid with 0 added, so the plain decode is always a
candidate) are chosen by validation BLEU. The test sample (--test_sample, 0: the whole split)
is decoded once at the choice and compared, by sacrebleu's paired bootstrap, with the plain
model of its fraction, backbone and seed (`none`) and with copying the source. Every validation
point is kept in the cell's result; every sample's verse ids are written under <workdir>/eval.
Density ratio at 100% data would use the target LM twice (λ log p_LM − λ_src log p_LM is
shallow fusion with λ − λ_src): the cell is marked N/A and not run.

Run it from the repository root (config paths are relative to it). Rerunning resumes: finished
cells are skipped, trained models reused, failed cells retried.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from lib import study_cli, tables
from lib.method_plot import plot_methods
from lib.runner import OK, Cell, CellRecord, Report, RunContext, Study
from lib.runs import TrainRun, override, size_overrides
from lib.scoring import (
    Evaluation,
    check_reproduced,
    chosen_checkpoint,
    decode_time_cell,
    plain_cell,
)
from lib.shared_models import (
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
from lib.sweeps import WEIGHT_GRIDS, grids_read_by
from lib.trained_fusion import fusion_method, fusion_overrides, recipe, trained_fusion_cell

from lmfuse.errors import LmfuseError
from lmfuse.evaluate import protocol

NAME = "fusion_study"

DECODE_TIME = ("shallow", "density_ratio", "ilme", "rescore")
# deep_no_lm: deep fusion's control, the LM's state zeroed (lib.trained_fusion.CONTROLS)
TRAINED = ("deep", "deep_no_lm", "cold", "simple_postnorm", "simple_prenorm", "linear",
           "lm_prior")
METHODS = ("none", *DECODE_TIME, *TRAINED)
BACKBONES = {"transformer": "configs/s2s_transformer.py", "rnn": "configs/s2s_rnn.py"}
LM_CONFIG = "configs/lm_transformer.py"


# Every size of both budgets, in one place. `cpu`: the tiny configs trained in epochs with early
# stopping, a 500-verse validation sample and a 1000-verse test sample: one to several hours
# per (fraction, backbone) on a 2-core CPU (the larger the fraction, the more steps an epoch),
# so a fraction at a time (`--fractions 5`) rather than the whole grid at once. `gpu`: the full
# configs and the full splits.
SIZES = {
    "cpu": {
        "variant": "tiny",
        "lm_steps": 2000,  # configs/lm_transformer.py:tiny, about 5 minutes here
        "lm_seq_len": 96,  # as long as the tiny encoder-decoders' outputs (tiny LM: 64)
        "s2s_steps": 0,  # 0: the epoch budget below
        # Every encoder-decoder trained from scratch: up to 60 epochs of its fraction's pairs,
        # stopped once the BLEU of 200 validation pairs (every 50 steps) has not improved 3
        # times in a row. Validation loss stops improving long before BLEU does here (5%:
        # loss is best at step 100, BLEU still rises at 250), so stopping on it undertrains.
        "s2s_epochs": 60,
        # 60 epochs of 1% or 5% is 190-940 steps; of all the pairs (about 10,000) it would be
        # 19,000, where the budget allows a model 30 minutes: the Transformer 4 epochs (about
        # 1,270 steps of 32 rows; 1,564 s on seed 0), the RNN 2 (about 1,290 steps of 16 rows;
        # 1,560 s on seed 0, where 4 epochs would take it about 52 minutes).
        "s2s_epochs_by_fraction": {100.0: {"transformer": 4, "rnn": 2}},
        "patience": 3,
        # 3 evaluations of 50 steps are 5-23 epochs of 1% or 5% but a fraction of one of all the
        # pairs: 0.47 of the Transformer's, 0.23 of the RNN's, which stopped the RNN's seed 2 at
        # 1.4 epochs, its validation BLEU on a plateau while validation perplexity still fell.
        # At 100% the patience is half an epoch, to the nearest evaluation (the Transformer's 3).
        "patience_by_fraction": {100.0: {"rnn": 6}},
        "eval_every": 50,
        "stop_metric": "bleu",
        "eval_translate_sample": 200,
        "s2s_dropout": 0.1,  # the tiny configs have none; a few hundred pairs need some
        "deep_steps": 100,  # deep / linear fusion, from the plain encoder-decoder
        "linear_steps": 100,
        "rnn_step_scale": 2,  # the tiny RNN's batches are 16 rows, the Transformer's 32
        "beam_size": 4,
    },
    "gpu": {
        "variant": None,
        "lm_steps": 0,  # 0: the config's (lm 20k, s2s 40k, deep 10k, linear 5k steps)
        "lm_seq_len": 0,  # 0: the config's (128, as the encoder-decoders)
        "s2s_steps": 0,
        "s2s_epochs": 30,
        "s2s_epochs_by_fraction": {},
        "patience": 5,
        "patience_by_fraction": {},
        "eval_every": 500,
        "stop_metric": "bleu",
        "eval_translate_sample": 500,
        "s2s_dropout": None,  # None: the config's
        "deep_steps": 0,  # 0: the epoch budget with early stopping, as every model
        "linear_steps": 0,
        "rnn_step_scale": 1,  # the full configs' batches are the same size
        "beam_size": 0,  # 0: the config's (4)
    },
}

# The protocol's settings per budget (the command line changes them). Each weight grid gets 0
# added; a method's candidates are every combination of the grids its formula has.
PROTOCOL = {
    "lambdas": {"cpu": (0.1, 0.2, 0.3, 0.5, 0.8), "gpu": (0.05, 0.1, 0.2, 0.3, 0.5)},
    # λ_src and μ reach 0.5: on the 5% Transformer, seed 0, validation chose 0.3 at the edge
    # of {0, 0.1, 0.3} for both. λ_src then moved to 0.5, the edge again, on a ridge λ ≈ λ_src,
    # so it reaches 0.8, λ's own top.
    "source_lm_weights": {"cpu": (0.1, 0.3, 0.5, 0.8), "gpu": (0.1, 0.2, 0.3, 0.5, 0.8)},
    "ilm_weights": {"cpu": (0.1, 0.3, 0.5), "gpu": (0.1, 0.2, 0.3, 0.5)},
    "length_rewards": {"cpu": (), "gpu": (0.5, 1.0)},
    "val_sample": {"cpu": 500, "gpu": 0},
    "test_sample": {"cpu": 1000, "gpu": 0},
    "sample_seed": {"cpu": 0, "gpu": 0},
    "seeds": {"cpu": (0,), "gpu": (0, 1, 2)},
    "checkpoints": {"cpu": 2, "gpu": 4},
}

GRID = ("fractions", "methods", "backbones", "seeds")  # settings that only choose cells


@dataclasses.dataclass(frozen=True)
class Plan:
    """A budget's sizes with the settings."""

    variant: str | None  # 'tiny' or None (the full configs)
    lm_overrides: tuple[str, ...]  # for every LM
    s2s_overrides: tuple[str, ...]  # for every encoder-decoder, fused or not
    method_steps: dict[str, int]  # train.steps of deep / linear fusion (0: the config's)
    # fraction % -> backbone -> its encoder-decoders' epoch budget / early-stopping patience,
    # where they differ from the budget's
    epochs_by_fraction: dict[float, dict[str, float]]
    patience_by_fraction: dict[float, dict[str, int]]
    checkpoints: int  # checkpoints kept per encoder-decoder, chosen among on validation
    grids: dict[str, tuple[float, ...]]  # decode-time weight -> its grid (0 added when used)
    val_sample: int  # seeded validation sample (0: all)
    test_sample: int  # seeded test sample (0: all)
    sample_seed: int
    # Steps multiplier per backbone, so backbones whose configs train smaller batches see as
    # many tokens as the others (the tiny RNN trains 16 rows a step, the Transformer 32).
    step_scale: dict[str, int] = dataclasses.field(default_factory=dict)

    def fraction_overrides(self, percent: float, backbone: str) -> tuple[str, ...]:
        """The epoch budget and patience of a fraction's encoder-decoders of `backbone`, where
        they differ from the budget's."""
        overrides = ()
        if (epochs := self.epochs_by_fraction.get(percent, {}).get(backbone)) is not None:
            overrides += (override("train.epochs", epochs),)
        if (patience := self.patience_by_fraction.get(percent, {}).get(backbone)) is not None:
            overrides += (override("train.patience", patience),)
        return overrides

    def spec(self, path: str) -> str:
        """`path` with the plan's variant, after its own: 'configs/fusion.py:deep,tiny'."""
        if not self.variant:
            return path
        return f"{path}{',' if ':' in path else ':'}{self.variant}"


def defaults(budget: str) -> dict[str, Any]:
    """The settings of a budget, which the command line can change."""
    return {
        "fractions": (1.0, 5.0, 20.0, 100.0),  # % of the training pairs
        "methods": METHODS,
        "backbones": tuple(BACKBONES),
        **{name: values[budget] for name, values in PROTOCOL.items()},
    }


def plan(budget: str, settings: dict[str, Any]) -> Plan:
    sizes = SIZES[budget]
    s2s, lm = size_overrides(budget, sizes)
    # Every encoder-decoder has a copy output (pointer-generator): style transfer keeps most
    # source words, and without it the small-data models lose to copying the source. Decode-
    # time fusion mixes the copied distribution; trained fusion wraps the fused one in it.
    s2s = (*s2s, override("model.copy_source", True))
    if sizes["s2s_dropout"] is not None:
        s2s = (*s2s, override("model.dropout", sizes["s2s_dropout"]))
    return Plan(
        variant=sizes["variant"],
        lm_overrides=lm,
        s2s_overrides=s2s,
        method_steps={"deep": sizes["deep_steps"], "linear": sizes["linear_steps"]},
        epochs_by_fraction=dict(sizes["s2s_epochs_by_fraction"]),
        patience_by_fraction=dict(sizes["patience_by_fraction"]),
        checkpoints=settings["checkpoints"],
        grids={weight: tuple(settings[name]) for name, weight in WEIGHT_GRIDS.items()},
        val_sample=settings["val_sample"],
        test_sample=settings["test_sample"],
        sample_seed=settings["sample_seed"],
        step_scale={"rnn": sizes["rnn_step_scale"]},
    )


# ---------------------------------------------------------------------------------------------
# The runs: configs and overrides (budget sizes, then the user's, then what defines the run)


def fraction_label(percent: float) -> str:
    return f"f{percent:g}"


def seed_suffix(seed: int, separator: str) -> str:
    """'' for seed 0 (the configs' own seed), else e.g. '-s1'."""
    return f"{separator}s{seed}" if seed else ""


def cell_key(percent: float, backbone: str, method: str, seed: int = 0) -> str:
    return f"{fraction_label(percent)}-{backbone}-{method}{seed_suffix(seed, '-')}"


def _evaluation(ctx: RunContext, plan: Plan) -> Evaluation:
    return Evaluation(plan.val_sample, plan.test_sample, plan.sample_seed, ctx.workdir / "eval")


def s2s_run(ctx: RunContext, plan: Plan, percent: float, backbone: str,
            method: str = "none", seed: int = 0, base_step: int = 0) -> TrainRun:
    """The plain encoder-decoder of a fraction, backbone and training seed, or (method) a
    trained fusion; deep and linear fusion start from the plain model's checkpoint `base_step`
    (the one chosen on validation; 0: its newest)."""
    spec = plan.spec(BACKBONES[backbone])
    base = plan.s2s_overrides
    # Before the recipe, whose steps then win for deep / linear fusion.
    base += plan.fraction_overrides(percent, backbone)
    if method in TRAINED:
        trains_as = fusion_method(method)
        base += recipe(plan.spec(f"configs/fusion.py:{trains_as}"), method,
                       plan.method_steps.get(trains_as, 0))
    base += _scaled_steps(plan, spec, backbone, base)
    user = user_overrides(ctx, spec, base)
    defining = [override("data.train_fraction", percent / 100)]
    if seed:
        defining.append(override("seed", seed))
    if method in TRAINED:
        defining += fusion_overrides(method, lm_run(ctx, plan, None).workdir,
                                     s2s_run(ctx, plan, percent, backbone, seed=seed).workdir,
                                     base_step)
    name = f"s2s_{backbone}" if method == "none" else f"{method}_{backbone}"
    overrides = (*base, *cadence(spec, (*base, *user), plan.checkpoints), *user,
                 *pin_tokenizer(_data(ctx, plan)), *defining)
    workdir = ctx.workdir / f"{name}_{fraction_label(percent)}{seed_suffix(seed, '_')}"
    return TrainRun(spec, str(workdir), overrides)


def _scaled_steps(plan: Plan, spec: str, backbone: str, base: tuple[str, ...]
                  ) -> tuple[str, ...]:
    from lmfuse.config import load_config

    scale = plan.step_scale.get(backbone, 1)
    train = load_config(spec, base).train
    if scale == 1 or train.epochs:  # an epoch is an epoch, whatever the batch
        return ()
    return (override("train.steps", scale * train.steps),)


def lm_run(ctx: RunContext, plan: Plan, percent: float | None) -> TrainRun:
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
    if percent is not None:
        defining += (source_lm_steps(spec, (*plan.lm_overrides, *user), percent),)
    name = "lm_target" if percent is None else f"lm_{fraction_label(percent)}"
    return TrainRun(spec, str(ctx.workdir / name),
                    (*plan.lm_overrides, *user, *pin_tokenizer(data), *defining))


def source_lm_steps(spec: str, overrides: Sequence[str], percent: float) -> str:
    """The source LM passes over its text as often as the target LM over all of its own:
    `percent`% of its steps. Trained as long as the target LM, an LM of a few hundred verses
    memorises them (5%: validation perplexity 154 at 100 steps, 229 at 300, 136,716 at 2,000),
    and density ratio would divide by a model of nothing but the training verses."""
    from lmfuse.config import load_config

    steps = load_config(spec, list(overrides)).train.steps
    return override("train.steps", max(1, round(steps * percent / 100)))


def _s2s_config(ctx: RunContext, plan: Plan) -> ml_collections.ConfigDict:
    """The encoder-decoders' config as the user's overrides leave it (the data they read)."""
    return user_config(ctx, plan.spec(BACKBONES["transformer"]), plan.s2s_overrides)


def _data(ctx: RunContext, plan: Plan) -> dict[str, Any]:
    return corpus_plan(ctx, lambda: _s2s_config(ctx, plan))


def _source_lm(ctx: RunContext, plan: Plan, percent: float) -> TrainRun:
    run = lm_run(ctx, plan, percent)
    trained(ctx, run)
    return run


def check_overrides(plan: Plan, context: RunContext) -> None:
    """Every --config override names a key of some config here and has a valid value."""
    check_user_overrides(context, [(plan.spec(LM_CONFIG), plan.lm_overrides)]
                         + [(plan.spec(p), plan.s2s_overrides) for p in BACKBONES.values()])


# ---------------------------------------------------------------------------------------------
# Cells: (parallel-data fraction, backbone, method) -> scores


SAME_LM_TWICE = ("at 100% data the source LM is the target LM, and λ log p_LM − λ_src log p_LM "
                 "is shallow fusion with λ − λ_src")


def build_cells(plan: Plan, fractions: Sequence[float], backbones: Sequence[str],
                methods: Sequence[str], seeds: Sequence[int] = (0,)) -> list[Cell]:
    """One cell per (fraction, backbone, seed, method), fraction-major, 'none' first within
    each; density ratio at 100% is N/A (the same LM twice)."""
    for p in fractions:
        if not 0 < p <= 100:
            raise LmfuseError(f"fraction {p:g} is not a percentage in (0, 100]")
    ordered = [m for m in METHODS if m in methods]
    cells = []
    for percent in fractions:
        for backbone in backbones:
            for seed in seeds:
                for method in ordered:
                    labels = {"fraction": percent, "backbone": backbone, "method": method,
                              "seed": seed}
                    cells.append(Cell(cell_key(percent, backbone, method, seed), labels,
                                      _cell_function(plan, percent, backbone, method, seed),
                                      not_applicable=not_applicable(percent, method),
                                      settings=grids_read_by(method)))
    return cells


def not_applicable(percent: float, method: str) -> str:
    """Why the cell is never run, or '' where it runs: density ratio with all the pairs."""
    return SAME_LM_TWICE if method == "density_ratio" and percent == 100 else ""


def _cell_function(plan: Plan, percent: float, backbone: str, method: str, seed: int):
    if method == "none":
        return lambda ctx: _plain_cell(ctx, plan, percent, backbone, seed)
    if method in DECODE_TIME:
        return lambda ctx: _decode_time_cell(ctx, plan, percent, backbone, method, seed)
    return lambda ctx: _trained_cell(ctx, plan, percent, backbone, method, seed)


def _plain_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str, seed: int
                ) -> dict[str, Any]:
    return plain_cell(ctx, _evaluation(ctx, plan), s2s_run(ctx, plan, percent, backbone, seed=seed),
                      cell_key(percent, backbone, "none", seed))


def _decode_time_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str,
                      method: str, seed: int) -> dict[str, Any]:
    lm = trained_lm(ctx, lm_run(ctx, plan, None))
    run = s2s_run(ctx, plan, percent, backbone, seed=seed)
    evaluation = _evaluation(ctx, plan)
    chosen_checkpoint(ctx, evaluation, run)  # the base model before the source LM, as listed
    check_reproduced(ctx, evaluation, run, cell_key(percent, backbone, "none", seed))
    source_lm = _source_lm(ctx, plan, percent) if method == "density_ratio" else None
    return decode_time_cell(ctx, evaluation, run, lm, method, plan.grids,
                            cell_key(percent, backbone, method, seed), source_lm)


def _trained_cell(ctx: RunContext, plan: Plan, percent: float, backbone: str,
                  method: str, seed: int) -> dict[str, Any]:
    lm = trained_lm(ctx, lm_run(ctx, plan, None))
    base = s2s_run(ctx, plan, percent, backbone, seed=seed)
    evaluation = _evaluation(ctx, plan)
    check_reproduced(ctx, evaluation, base, cell_key(percent, backbone, "none", seed))
    return trained_fusion_cell(
        ctx, evaluation, base,
        lambda step: s2s_run(ctx, plan, percent, backbone, method, seed, step), method, lm,
        cell_key(percent, backbone, method, seed))


def describe_task(plan: Plan, ctx: RunContext) -> str:
    """The parallel data in words, from the encoder-decoders' config."""
    config = _s2s_config(ctx, plan)
    data, train = config.data, config.train
    if data.corpus == "bible":
        task = (f"Bible style transfer {data.source.upper()} → {data.target.upper()} "
                "(translate view; Carlson et al. 2018's split)")
    else:
        task = f"{data.corpus} corpus, translate view (train {data.files.train})"
    if train.epochs and train.patience:
        watched = ("validation loss" if train.stop_metric == "nll" else
                   f"validation {train.stop_metric} of {train.eval_translate_sample} pairs")
        task += (f"; encoder-decoders train up to {train.epochs:g} epochs"
                 f"{_exceptions(plan.epochs_by_fraction)}, stopped once {watched} (every "
                 f"{train.eval_every} steps) has not improved {train.patience} times in a row"
                 f"{_exceptions(plan.patience_by_fraction)}")
    return task


def _exceptions(by_fraction: dict[float, dict[str, float]]) -> str:
    """', 4 (transformer) and 2 (rnn) at 100%' from {100: {'transformer': 4, 'rnn': 2}}."""
    return "".join(
        ", " + " and ".join(f"{value:g} ({backbone})" for backbone, value in values.items())
        + f" at {percent:g}%" for percent, values in by_fraction.items())


# ---------------------------------------------------------------------------------------------
# The report
#
#   <results>/fusion_study.md          the table, with budget, device, date, signatures,
#                                         the command, and each cell's reproducing commands
#   <results>/fusion_study.csv         one row per cell (failed cells: no numbers)
#   <results>/fusion_study_sweeps.csv  every validation point (λ or checkpoint) of every cell
#   <results>/fusion_study_bleu.png    test BLEU against parallel-data fraction, per method,
#                                         one panel per backbone
#   <results>/fusion_study_lambda.png  validation BLEU against λ, per decode-time method, one
#                                         panel per (backbone, fraction)
#   <results>/fusion_study_methods.png every method's test BLEU, each seed with its 95%
#                                         interval, one panel per (fraction, backbone)
#   <results>/fusion_study_ledger.json the ledger (lib.runner): what a fresh workdir resumes from

COLUMNS = ("fraction", "backbone", "method", "seed", "status", "weights", "step", "val_bleu",
           "val_pinc", "test_bleu", "test_bleu_ci", "delta_none", "p_none", "delta_copy",
           "p_copy", "test_chrf", "test_pinc", "test_length_ratio", "lm_perplexity",
           "val_perplexity", "train_steps", "train_epochs", "train_seconds", "wall_seconds",
           "error", "commands")
SWEEP_COLUMNS = ("fraction", "backbone", "method", "seed", "kind", "value", "chosen",
                 "val_bleu", "val_chrf", "val_pinc", "val_length_ratio", "val_perplexity")


def write_report(report: Report, task: str) -> list[Path]:
    """Writes every output (listed above); returns their paths."""
    out = report.results_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.csv", out / f"{NAME}_sweeps.csv",
             out / f"{NAME}_bleu.png", out / f"{NAME}_lambda.png", out / f"{NAME}_methods.png"]
    rows = [cell_row(r) for r in report.records]
    paths[0].write_text(markdown(report, task), encoding="utf-8")
    paths[1].write_text(tables.csv_text(COLUMNS, rows), encoding="utf-8")
    paths[2].write_text(tables.csv_text(SWEEP_COLUMNS, sweep_rows(report.records)), encoding="utf-8")
    plot_bleu(report.records, paths[3])
    plot_lambda(report.records, paths[4])
    plot_methods(report.records, ("fraction", "backbone"), paths[5])
    return paths


def _against(values: dict[str, Any], baseline: str) -> tuple[float | None, float | None]:
    compared = values["confidence"][baseline]
    return compared["system"]["bleu"] - compared["baseline"]["bleu"], tables.p_value(compared)


def cell_row(record: CellRecord) -> dict[str, Any]:
    v, ok = record.values, record.status == OK
    row = {**record.labels, "status": record.status, "error": record.error,
           "wall_seconds": round(record.seconds + v.get("attributed_seconds", 0.0), 1)}
    if ok:
        training = v.get("training") or {}
        delta_none, p_none = _against(v, "none")
        delta_copy, p_copy = _against(v, "copy")
        row.update(weights=tables.weights_text(v.get("weights")), step=v["step"],
                   val_bleu=v["val"]["bleu"], val_pinc=v["val"]["pinc"],
                   test_bleu=v["test"]["bleu"],
                   test_bleu_ci=v["confidence"]["copy"]["system"]["bleu_ci"],
                   delta_none=None if record.labels["method"] == "none" else delta_none,
                   p_none=None if record.labels["method"] == "none" else p_none,
                   delta_copy=delta_copy, p_copy=p_copy, test_chrf=v["test"]["chrf"],
                   test_pinc=v["test"]["pinc"], test_length_ratio=v["test"]["length_ratio"],
                   lm_perplexity=v["lm_perplexity"], val_perplexity=v["val_perplexity"],
                   train_steps=training.get("steps"), train_epochs=training.get("epochs"),
                   train_seconds=training.get("wall_seconds"),
                   commands=" && ".join(v["commands"]))
    return {k: tables.fmt(row.get(k)) for k in COLUMNS}


def sweep_rows(records: list[CellRecord]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        if record.status != OK:
            continue
        decode_time = record.labels["method"] in DECODE_TIME
        for swept in record.values["sweep"]:
            if decode_time:
                kind, value = "weights", tables.weights_text(swept["weights"])
                chosen = swept["weights"] == record.values["weights"]
            else:
                kind, value, chosen = "step", swept["step"], swept["step"] == record.values["step"]
            rows.append({k: tables.fmt(v) for k, v in {
                **record.labels, "kind": kind, "value": value, "chosen": chosen,
                "val_bleu": swept["val"]["bleu"], "val_chrf": swept["val"]["chrf"],
                "val_pinc": swept["val"]["pinc"],
                "val_length_ratio": swept["val"].get("length_ratio"),
                "val_perplexity": swept.get("val_perplexity")}.items()})
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown


def markdown(report: Report, task: str) -> str:
    lines = [
        f"# Fusion study ({report.study.budget} budget)",
        "",
        f"- Task: {task}",
        *tables.header_lines(report),
        *tables.protocol_lines(report),
        "- Decode-time methods fuse the `none` model's chosen checkpoint; deep and linear "
        "fusion start from that checkpoint too (`fusion.s2s_step`). Density ratio at 100% data is N/A: "
        f"{SAME_LM_TWICE}.",
        "- Steps / epochs / train s: the cell's model's training (epochs over its fraction's "
        "pairs); wall s: the cell's own work (training, checkpoint choice, weight sweep, "
        "decoding); `none` counts its encoder-decoder's training and checkpoint choice, which "
        "the decode-time cells then reuse; the LMs are listed below.",
        *copy_baseline_lines(report.records),
        "",
        "| fraction % | backbone | seed | method | choice | val BLEU | test BLEU | Δ none | "
        "Δ copy | chrF | PINC | len ratio | steps | epochs | train s | wall s |",
        "|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in report.records:
        labels = record.labels
        head = (f"| {labels['fraction']:g} | {labels['backbone']} | {labels['seed']} | "
                f"{labels['method']} ")
        if record.status != OK:
            lines.append(head + f"| {tables.not_finished(record)} |" + " |" * 11)
            continue
        v = record.values
        choice = f"step {v['step']}"
        if labels["method"] in DECODE_TIME:
            choice += f"; {tables.weights_text(v['weights'])}"
        cells = [choice, tables.score(record, "val", "bleu"), tables.bleu_interval(record),
                 tables.difference(record, "none"), tables.difference(record, "copy"),
                 *(tables.score(record, "test", k) for k in ("chrf", "pinc", "length_ratio")),
                 *tables.training_cells(record),
                 tables.fmt(round(record.seconds + v.get("attributed_seconds", 0.0), 1))]
        lines.append(head + "| " + " | ".join(cells) + " |")
    lines += ["", *tables.seed_summary_lines(report, ("fraction", "backbone", "method")),
              f"![each seed's test BLEU with its 95% interval, per method]({NAME}_methods.png)",
              "", f"![test BLEU against data fraction]({NAME}_bleu.png)", "",
              f"![validation BLEU against λ]({NAME}_lambda.png)", ""]
    lines += tables.shared_models_lines(report)
    lines += tables.commands_lines(report)
    return "\n".join(lines)


def copy_baseline(records: list[CellRecord]) -> dict[str, float] | None:
    """Test scores of the source copied as the output: every cell decodes the same verses, so
    any finished cell holds them. The bar a style-transfer system has to clear."""
    for record in records:
        if record.status == OK:
            test = record.values["test"]
            return {"bleu": test["copy_bleu"], "chrf": test["copy_chrf"]}
    return None


def copy_baseline_lines(records: list[CellRecord]) -> list[str]:
    copy = copy_baseline(records)
    if copy is None:
        return []
    return [f"- Copying the source as the output scores test BLEU {copy['bleu']:.2f} "
            f"(chrF {copy['chrf']:.2f}, PINC 0): the dotted line in the plot."]


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API renders with Agg; pyplot's global state is never touched)


def plot_bleu(records: list[CellRecord], path: Path) -> None:
    from matplotlib.figure import Figure

    ok = [r for r in records if r.status == OK]
    copy = copy_baseline(records)
    backbones = list(dict.fromkeys(r.labels["backbone"] for r in records)) or ["-"]
    fig = Figure(figsize=(5.5 * len(backbones), 4.2), layout="constrained")
    axes = fig.subplots(1, len(backbones), squeeze=False)[0]
    for ax, backbone in zip(axes, backbones, strict=True):
        methods = dict.fromkeys(r.labels["method"] for r in ok if r.labels["backbone"] == backbone)
        for method in methods:
            by_fraction: dict[float, list[float]] = {}
            for r in ok:
                if r.labels["backbone"] == backbone and r.labels["method"] == method:
                    by_fraction.setdefault(r.labels["fraction"], []).append(r.values["test"]["bleu"])
            fractions = sorted(by_fraction)
            spread = [protocol.mean_sd(by_fraction[f]) for f in fractions]  # over seeds
            # The baseline in black, decode-time fusion solid, trained fusion dashed.
            style = ({"color": "black", "linewidth": 2.2} if method == "none" else
                     {"linestyle": "-" if method in DECODE_TIME else "--"})
            ax.errorbar(fractions, [m for m, _ in spread], yerr=[sd for _, sd in spread],
                        marker="o", capsize=3, label=method, **style)
        if copy is not None:
            ax.axhline(copy["bleu"], color="gray", linestyle=":", label="copy source")
        fractions = sorted({r.labels["fraction"] for r in ok if r.labels["backbone"] == backbone})
        ax.set_xscale("log")
        if fractions:
            ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
            ax.minorticks_off()
        ax.set_xlabel("parallel data (% of training pairs)")
        ax.set_ylabel("test BLEU")
        ax.set_title(backbone)
        ax.grid(alpha=0.3)
        if methods:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished cells", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


def plot_lambda(records: list[CellRecord], path: Path) -> None:
    from matplotlib.figure import Figure

    ok = [r for r in records if r.status == OK and r.labels["method"] in DECODE_TIME]
    panels = sorted({(r.labels["backbone"], r.labels["fraction"]) for r in ok}) or [("-", 0)]
    backbones = list(dict.fromkeys(b for b, _ in panels))
    fractions = sorted({f for _, f in panels})
    fig = Figure(figsize=(4 * len(fractions), 3.4 * len(backbones)), layout="constrained")
    axes = fig.subplots(len(backbones), len(fractions), squeeze=False)
    for i, backbone in enumerate(backbones):
        for j, fraction in enumerate(fractions):
            ax = axes[i][j]
            cells = [r for r in ok if (r.labels["backbone"], r.labels["fraction"]) == (backbone, fraction)]
            for record in cells:
                # λ swept with every other weight at its chosen value (a slice of the grid).
                chosen = record.values["weights"]
                points = sorted((p["weights"]["lm"], p["val"]["bleu"])
                                for p in record.values["sweep"]
                                if all(p["weights"][k] == w for k, w in chosen.items()
                                       if k != "lm"))
                ax.plot(*zip(*points, strict=True), marker="o", label=record.labels["method"])
                ax.plot([chosen["lm"]], [record.values["val"]["bleu"]], marker="*",
                        markersize=12, color=ax.lines[-1].get_color())
            ax.set_title(f"{backbone}, {fraction:g}% data")
            ax.set_xlabel("λ (the other weights at their choice)")
            ax.set_ylabel("validation BLEU")
            ax.grid(alpha=0.3)
            if cells:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no decode-time cells", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# The command line


def build_parser() -> argparse.ArgumentParser:
    parser = study_cli.study_parser(NAME, __doc__)
    parser.add_argument("--fractions", nargs="+", type=float, default=None, metavar="PERCENT",
                        help="parallel-data fractions, %% of the training pairs (default 1 5 20 "
                             "100)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                        help=f"methods to run, of {' '.join(METHODS)} (default: all)")
    parser.add_argument("--backbones", nargs="+", choices=tuple(BACKBONES), default=None,
                        metavar="BACKBONE",
                        help=f"encoder-decoders, of {' '.join(BACKBONES)} (default: both)")
    study_cli.add_protocol_flags(parser, PROTOCOL, tuple(WEIGHT_GRIDS))
    return parser


def make_study(args: argparse.Namespace) -> Study:
    settings = study_cli.settings_from(args, defaults(args.budget))
    study_cli.check_protocol(settings)
    sizes = plan(args.budget, settings)
    cells = build_cells(sizes, settings["fractions"], settings["backbones"],
                        settings["methods"], settings["seeds"])
    return Study(
        name=NAME,
        budget=args.budget,
        settings=settings,
        cells=cells,
        report=lambda report: write_report(report, describe_task(sizes, report.context)),
        grid_settings=GRID,
        cell_settings=tuple(WEIGHT_GRIDS),
        check=lambda context: check_overrides(sizes, context),
    )


def main(argv: Sequence[str] | None = None) -> int:
    return study_cli.main(build_parser(), make_study, argv)


if __name__ == "__main__":
    sys.exit(main())
