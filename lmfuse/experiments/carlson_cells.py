"""The cells of the Carlson et al. 2018 table: (row, method) -> scores.

Rows are the paper's version pairs (source -> target on its split; 'public' pairs every other
English version with the target). Models, as `lmfuse train` runs (workdirs under the
experiment's workdir):

    s2s_<row>       the row's encoder-decoder: configs/carlson/<row>.py (full size), or the
                    plan's smaller config with data.source / data.target set to the row's
    lm_<target>     configs/lm_transformer.py on the target version's train text
                    (data.versions=<target>): one per target version, shared by its rows

Methods: 'none' decodes s2s_<row> at its checkpoint chosen on validation BLEU; 'shallow' fuses
lm_<target> into that checkpoint with the λ of the grid that scores the best validation BLEU
(`cell_decoding`). On other corpora (the user's files, e.g. --config.data.corpus=text) every
row reads those files and the LM trains on their target side (`shared_models.corpus_plan`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmfuse.errors import LmfuseError
from lmfuse.experiments.artifacts import TrainRun, override
from lmfuse.experiments.cell_decoding import Evaluation, decode_time_cell, plain_cell
from lmfuse.experiments.runner import Cell, RunContext
from lmfuse.experiments.shared_models import (
    cadence,
    check_user_overrides,
    corpus_plan,
    pin_tokenizer,
    text_lm_data,
    trained_lm,
    user_config,
    user_overrides,
)

# The paper's rows, in its order: key (configs/carlson/<key>.py) -> (source, target).
ROWS = {
    "kjv_asv": ("kjv", "asv"),
    "public_asv": ("public", "asv"),
    "bbe_asv": ("bbe", "asv"),
    "ylt_bbe": ("ylt", "bbe"),
    "public_bbe": ("public", "bbe"),
    "ylt_asv": ("ylt", "asv"),
}
METHODS = ("none", "shallow")


@dataclasses.dataclass(frozen=True)
class Plan:
    """A budget's sizes (the experiment file sets them)."""

    s2s_config: str  # '{row}' is replaced by the row's key, e.g. 'configs/carlson/{row}.py'
    lm_config: str
    lm_overrides: tuple[str, ...]
    s2s_overrides: tuple[str, ...]
    checkpoints: int  # kept per encoder-decoder, chosen among on validation BLEU
    lambdas: tuple[float, ...]
    eval_sentences: int  # first N validation / test pairs in file order (0: all)

    def s2s_spec(self, row: str) -> str:
        return self.s2s_config.format(row=row)


def cell_key(row: str, method: str) -> str:
    return f"{row}-{method}"


def check_grid(rows, methods) -> None:
    for name, valid, given in (("row", ROWS, rows), ("method", METHODS, methods)):
        for value in given:
            if value not in valid:
                raise LmfuseError(f"unknown {name} {value!r}; choose from {', '.join(valid)}")


def build_cells(plan: Plan, rows, methods) -> list[Cell]:
    """One cell per (row, method), in the paper's row order, 'none' first within a row."""
    check_grid(rows, methods)
    cells = []
    for row in (r for r in ROWS if r in rows):
        source, target = ROWS[row]
        for method in (m for m in METHODS if m in methods):
            labels = {"row": row, "source": source, "target": target, "method": method}
            cells.append(Cell(cell_key(row, method), labels, _cell_function(plan, row, method)))
    return cells


def check_overrides(plan: Plan, rows, context: RunContext) -> None:
    """Every --config override names a key of some config here and has a valid value."""
    check_user_overrides(context, [(plan.lm_config, plan.lm_overrides)]
                         + [(plan.s2s_spec(row), plan.s2s_overrides) for row in rows])


def _cell_function(plan: Plan, row: str, method: str):
    if method == "none":
        return lambda ctx: plain_cell(ctx, _evaluation(ctx, plan, row), s2s_run(ctx, plan, row),
                                      cell_key(row, method))
    return lambda ctx: _fused_cell(ctx, plan, row, method)


def _fused_cell(ctx: RunContext, plan: Plan, row: str, method: str) -> dict[str, Any]:
    lm = trained_lm(ctx, lm_run(ctx, plan, row))
    return decode_time_cell(ctx, _evaluation(ctx, plan, row), s2s_run(ctx, plan, row), lm,
                            method, plan.lambdas, cell_key(row, method))


def _evaluation(ctx: RunContext, plan: Plan, row: str) -> Evaluation:
    return Evaluation(plan.eval_sentences, ctx.workdir / "eval" / row)


# ---------------------------------------------------------------------------------------------
# The runs: configs and overrides (budget sizes, then the user's, then what defines the run)


def s2s_run(ctx: RunContext, plan: Plan, row: str) -> TrainRun:
    """The row's encoder-decoder."""
    spec = plan.s2s_spec(row)
    base = plan.s2s_overrides
    user = user_overrides(ctx, spec, base)
    source, target = ROWS[row]
    defining = (override("data.source", source), override("data.target", target))
    overrides = (*base, *cadence(spec, (*base, *user), plan.checkpoints), *user,
                 *pin_tokenizer(_data(ctx, plan, row)), *defining)
    return TrainRun(spec, str(ctx.workdir / f"s2s_{row}"), overrides)


def lm_run(ctx: RunContext, plan: Plan, row: str) -> TrainRun:
    """The LM of the row's target version (the same run for every row with that target)."""
    target = ROWS[row][1]
    user = user_overrides(ctx, plan.lm_config, plan.lm_overrides)
    data = _data(ctx, plan, row)
    defining = (override("data.versions", target),) if data["bible"] else text_lm_data(data)
    return TrainRun(plan.lm_config, str(ctx.workdir / f"lm_{target}"),
                    (*plan.lm_overrides, *user, *pin_tokenizer(data), *defining))


def _data(ctx: RunContext, plan: Plan, row: str) -> dict[str, Any]:
    """The Bible, or the user's files (the same for every row: --config overrides are global,
    so the first row asking decides)."""
    return corpus_plan(ctx, lambda: user_config(ctx, plan.s2s_spec(row), plan.s2s_overrides))


def describe_task(plan: Plan, rows, ctx: RunContext) -> str:
    """The data in words."""
    data = user_config(ctx, plan.s2s_spec(rows[0]), plan.s2s_overrides).data
    if data.corpus == "bible":
        return ("Bible style transfer on Carlson et al. 2018's split (translate view); "
                "'public' pairs every other English version with the target, verse by verse")
    return f"{data.corpus} corpus, translate view (train {data.files.train}), for every row"
