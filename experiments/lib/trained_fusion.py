"""Trained fusion as a study's cell (configs/fusion.py:<method>), shared by the studies.

    base = s2s_run(...)                                  # the plain encoder-decoder (`none`)
    trained_fusion_cell(ctx, evaluation, base, lambda step: fused_run(..., step), lm, key)

Deep and linear fusion fine-tune a few weights on the plain model: they start from its
checkpoint chosen on validation (`fusion.s2s_step`), at their config's learning rate, for the
study's steps (`recipe`). Cold, simple and LM-prior fusion train from scratch like the plain
model. Either way the fused model's checkpoint is chosen on validation as the plain model's
is, and its test decode is compared with the plain model's (the cell's `none`).

A control is a study method that trains as an lmfuse method with one switch (`CONTROLS`):
`deep_no_lm` is deep fusion with the LM's state zeroed (`fusion.lm_ablated`), the same steps
of the same output layer with nothing from the LM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lib.runner import RunContext
from lib.runs import TrainRun, ensure_trained, override
from lib.scoring import Evaluation, chosen_checkpoint, finish, point, selection
from lmfuse.models.fusion import PRETRAINED_S2S  # start from the plain encoder-decoder

# study method: (the lmfuse fusion method it trains as, the overrides that make it a control)
CONTROLS = {"deep_no_lm": ("deep", (("fusion.lm_ablated", True),))}


def fusion_method(method: str) -> str:
    """The lmfuse fusion method (`fusion.method`) a study method trains as."""
    return CONTROLS[method][0] if method in CONTROLS else method


def recipe(fusion_spec: str, method: str, steps: int) -> tuple[str, ...]:
    """Overrides of a trained fusion's training: for deep and linear fusion the learning rate
    of `fusion_spec` (configs/fusion.py:<method>[,variant]) and, if `steps`, a step budget
    that replaces the epoch budget and its early stopping. Nothing for the others."""
    if fusion_method(method) not in PRETRAINED_S2S:
        return ()
    from lmfuse.config import load_config

    rate = load_config(fusion_spec).optimizer.learning_rate
    budget = (override("train.steps", steps), override("train.epochs", 0),
              override("train.patience", 0), override("train.eval_every", 0)) if steps else ()
    return (override("optimizer.learning_rate", rate), *budget)


def fusion_overrides(method: str, lm_workdir: str, base_workdir: str, base_step: int = 0
                     ) -> tuple[str, ...]:
    """What makes an encoder-decoder run a trained fusion: the method and its LM, and (deep,
    linear) the plain model and checkpoint it starts from (0: its newest); a control's switch."""
    trains_as = fusion_method(method)
    overrides = (override("fusion.method", trains_as), override("fusion.lm_workdir", lm_workdir))
    overrides += tuple(override(key, value) for key, value in CONTROLS.get(method, ("", ()))[1])
    if trains_as in PRETRAINED_S2S:
        overrides += (override("fusion.s2s_workdir", base_workdir),)
        if base_step:
            overrides += (override("fusion.s2s_step", base_step),)
    return overrides


def trained_fusion_cell(ctx: RunContext, evaluation: Evaluation, base: TrainRun,
                        fused_run: Callable[[int], TrainRun], method: str, lm: dict[str, Any],
                        key: str) -> dict[str, Any]:
    """Trains `fused_run(base_step)` (base_step: the plain model's chosen checkpoint, for the
    methods that start from it; 0 for the others), chooses its checkpoint on validation and
    decodes test once, compared with `base`'s plain decode."""
    commands = [lm["command"]]
    base_step = chosen_checkpoint(ctx, evaluation, base)["step"]  # `none`: the baseline
    starts_from_base = fusion_method(method) in PRETRAINED_S2S
    if starts_from_base:
        commands.append(base.command())
    run = fused_run(base_step if starts_from_base else 0)
    ensure_trained(run)  # the cell's own training
    chosen = selection(ctx, evaluation, run)
    values = finish(ctx, evaluation, run, chosen["step"], None,
                    point(chosen["points"], "step", chosen["step"]), chosen["points"],
                    [*commands, run.command()], key=key, baseline=base)
    values["lm_perplexity"] = lm["perplexity"]
    return values
