"""A cell's decoding: evaluation subsets, the checkpoint and λ chosen on validation, the test
decode at the choice, and the `lmfuse translate` commands that reproduce it.

    evaluation = Evaluation(200, ctx.workdir / 'eval')
    plain_cell(ctx, evaluation, run, key)                 checkpoint chosen on validation BLEU
    decode_time_cell(ctx, evaluation, run, lm, 'shallow', (0.1, 0.3), key)
                                                          λ chosen on validation BLEU at the
                                                          plain model's chosen checkpoint

Selection uses validation only; the test set is decoded once, at the choice. Every validation
point is kept in the cell's values ('sweep').
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmfuse.experiments.artifacts import TrainRun, kept_steps
from lmfuse.experiments.ledger import write_json
from lmfuse.experiments.runner import RunContext
from lmfuse.experiments.shared_models import artifacts, trained


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A task's evaluation: its first `sentences` validation / test pairs (0: all), also
    written under `directory` as the files `lmfuse translate --input` reads."""

    sentences: int
    directory: Path

    def sets(self, ctx: RunContext, config) -> dict[str, Any]:
        """{'validation', 'test'}: EvalSets of the config's data, made once per run."""
        from lmfuse.experiments.evaluation import EvalSet

        def make():
            sets = {split: EvalSet.first(config, split, self.sentences)
                    for split in ("validation", "test")}
            for evalset in sets.values():
                evalset.write(self.directory)
            return sets

        return ctx.shared(f"eval_sets:{self.directory}", make)


def flags(method: str | None, lm: str | None = None, weight: float = 0.0,
          source_lm: TrainRun | None = None):
    """`lmfuse translate`'s fusion flags (method None: plain decoding)."""
    from lmfuse.decode.fusion_setup import FusionFlags

    if method is None:
        return FusionFlags()
    return FusionFlags(method, lm, weight, source_lm.workdir if source_lm else None)


def point(points: list[dict], field: str, value) -> dict:
    return next(p for p in points if p[field] == value)


def selection(ctx: RunContext, evaluation: Evaluation, run: TrainRun) -> dict[str, Any]:
    """Every kept checkpoint of a trained run decoded on validation; the best by BLEU.
    Cached in the workdir (recomputed when its checkpoints or the evaluation set change)."""
    from lmfuse.experiments import evaluation as ev

    steps = kept_steps(run.workdir)
    key = {"steps": steps, "eval_sentences": evaluation.sentences}
    cache = Path(run.workdir) / "selection.json"
    if cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored
    start = time.perf_counter()
    points = []
    for step in steps:
        trainer, params = ev.load_step(run.workdir, step)
        validation = evaluation.sets(ctx, trainer.config)["validation"]
        scores = ev.decode_and_score(trainer, params, flags(None), validation)
        points.append({"step": step, "val": ev.brief(scores),
                       "val_perplexity": ev.validation_perplexity(trainer, params)})
    result = {"key": key, "points": points, "step": ev.pick(points)["step"],
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(cache, result)
    return result


def chosen_checkpoint(ctx: RunContext, evaluation: Evaluation, run: TrainRun) -> dict[str, Any]:
    """A shared encoder-decoder, trained and its checkpoint chosen once per run."""
    def make():
        trained(ctx, run)
        return selection(ctx, evaluation, run)

    return ctx.shared(f"selection:{run.workdir}", make)


def plain_cell(ctx: RunContext, evaluation: Evaluation, run: TrainRun, key: str
               ) -> dict[str, Any]:
    """The encoder-decoder on its own, at its chosen checkpoint."""
    chosen = chosen_checkpoint(ctx, evaluation, run)
    step = chosen["step"]
    values = finish(ctx, evaluation, run, step, None, point(chosen["points"], "step", step),
                    chosen["points"], commands=[run.command()], key=key)
    # The model is shared (other cells decode it), but training and choosing it is this
    # cell's work: its wall time counts them (as first measured, so reruns agree).
    seconds = artifacts(ctx).get(Path(run.workdir).name, {}).get("train_seconds", 0.0)
    values["attributed_seconds"] = round(seconds + chosen.get("seconds", 0.0), 1)
    return values


def decode_time_cell(ctx: RunContext, evaluation: Evaluation, run: TrainRun, lm: dict[str, Any],
                     method: str, lambdas: Sequence[float], key: str,
                     source_lm: TrainRun | None = None) -> dict[str, Any]:
    """`run`'s chosen checkpoint fused at decode time with `lm` (trained_lm's dict), at the λ
    of `lambdas` with the best validation BLEU."""
    from lmfuse.experiments import evaluation as ev

    step = chosen_checkpoint(ctx, evaluation, run)["step"]
    trainer, params = ev.load_step(run.workdir, step)
    validation = evaluation.sets(ctx, trainer.config)["validation"]
    points = []
    for weight in lambdas:
        scores = ev.decode_and_score(trainer, params, flags(method, lm["workdir"], weight,
                                                            source_lm), validation)
        points.append({"lambda": weight, "val": ev.brief(scores)})
    chosen = ev.pick(points)
    commands = [lm["command"], *([source_lm.command()] if source_lm else []), run.command()]
    values = finish(ctx, evaluation, run, step,
                    flags(method, lm["workdir"], chosen["lambda"], source_lm), chosen, points,
                    commands, key=key, loaded=(trainer, params))
    values["lm_perplexity"] = lm["perplexity"]
    return values


def finish(ctx: RunContext, evaluation: Evaluation, run: TrainRun, step: int, fusion,
           chosen: dict, points: list[dict], commands: list[str], key: str, loaded=None
           ) -> dict[str, Any]:
    """Decodes the test set at the choice; the cell's values, with its reproducing commands
    and the device it ran on."""
    from lmfuse.experiments import evaluation as ev

    trainer, params = loaded or ev.load_step(run.workdir, step)
    sets = evaluation.sets(ctx, trainer.config)
    test = ev.decode_and_score(trainer, params, fusion or flags(None), sets["test"])
    hypotheses = ctx.workdir / "cells" / f"{key}.test.hyp"
    hypotheses.parent.mkdir(parents=True, exist_ok=True)
    hypotheses.write_text("".join(h + "\n" for h in test["hypotheses"]), encoding="utf-8")
    translate = [translate_command(ctx, evaluation, run.workdir, step, fusion, sets[split], key)
                 for split in ("validation", "test")]
    return {
        "step": step,
        "lambda": fusion.lm_weight if fusion else None,
        "val": chosen["val"],
        "val_perplexity": chosen.get("val_perplexity"),
        "test": ev.brief(test),
        "lm_perplexity": None,
        "sweep": points,
        "eval_sentences": {s: len(sets[s].sources) for s in sets},
        "bleu_signature": test["bleu_signature"],
        "chrf_signature": test["chrf_signature"],
        "beam_size": test["beam_size"],
        "device": ev.device_description(),
        "commands": [*dict.fromkeys(commands), *translate],
    }


def translate_command(ctx: RunContext, evaluation: Evaluation, workdir: str, step: int, fusion,
                      evalset, key: str) -> str:
    """The `lmfuse translate` line that decodes `evalset` as the cell did."""
    args = ["lmfuse", "translate", "--workdir", workdir, "--step", str(step)]
    if evalset.limit:
        source = evaluation.directory / f"{evalset.name}.src"
        output = ctx.workdir / "cells" / f"{key}.{evalset.split}.hyp"
        args += ["--input", str(source), "--output", str(output)]
    else:
        args += ["--split", evalset.split]
    if fusion is not None:
        args += ["--fusion", fusion.method, "--lm", fusion.lm,
                 "--lm_weight", f"{fusion.lm_weight:g}"]
        if fusion.source_lm:
            args += ["--source_lm", fusion.source_lm]
    return shlex.join(args)
