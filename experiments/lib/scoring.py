"""A cell's decoding and scores: evaluation subsets, the checkpoint and λ chosen on validation,
the test decode at the choice, and the `lmfuse translate` commands that reproduce it.

    evaluation = Evaluation(200, ctx.workdir / 'eval')   the first 200 pairs of each split in
                                                         file order (0: the whole split)
    plain_cell(ctx, evaluation, run, key)                checkpoint chosen on validation BLEU
    decode_time_cell(ctx, evaluation, run, lm, 'shallow', (0.1, 0.3), key)
                                                         λ chosen on validation BLEU at the
                                                         plain model's chosen checkpoint

Decoding is `lmfuse translate`'s: the options from the workdir's decode config, the fusion
from `build_decode_fusion`, and the scores from `translate_and_score`. Selection uses
validation only; the test set is decoded once, at the choice. Every validation point is kept
in the cell's values ('sweep').
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from lib.runner import RunContext, write_json
from lib.runs import TrainRun, kept_steps
from lib.shared_models import artifacts, trained, validation_perplexity
from lmfuse.errors import LmfuseError
from lmfuse.evaluate.fusion_setup import FusionFlags

SCORE_KEYS = ("bleu", "chrf", "rouge_l", "pinc", "copy_bleu", "copy_chrf", "copy_pinc",
              "num_sentences")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    split: str
    limit: int  # 0: the whole split
    sources: tuple[str, ...]
    references: tuple[str, ...]

    @classmethod
    def first(cls, config: ml_collections.ConfigDict, split: str, limit: int) -> EvalSet:
        from lmfuse.evaluate.translation import split_pairs

        sources, references = split_pairs(config, split)
        if limit:
            sources, references = sources[:limit], references[:limit]
        if not sources:
            raise LmfuseError(f"the {split} split has no sentence pairs to evaluate on")
        return cls(split, limit, tuple(sources), tuple(references))

    @property
    def name(self) -> str:
        return f"{self.split}.first{self.limit}" if self.limit else self.split

    def write(self, directory: Path) -> tuple[Path, Path]:
        """The sources and references as files (`lmfuse translate --input` reads the first)."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / f"{self.name}.src", directory / f"{self.name}.ref"
        for path, lines in zip(paths, (self.sources, self.references), strict=True):
            text = "".join(line + "\n" for line in lines)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
        return paths


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A task's evaluation: its first `sentences` validation / test pairs (0: all), also
    written under `directory` as the files `lmfuse translate --input` reads."""

    sentences: int
    directory: Path

    def sets(self, ctx: RunContext, config: ml_collections.ConfigDict) -> dict[str, EvalSet]:
        """{'validation', 'test'}: the EvalSets of the config's data, made once per run."""
        def make():
            sets = {split: EvalSet.first(config, split, self.sentences)
                    for split in ("validation", "test")}
            for evalset in sets.values():
                evalset.write(self.directory)
            return sets

        return ctx.shared(f"eval_sets:{self.directory}", make)


# ---------------------------------------------------------------------------------------------
# Decoding and choosing


def load_step(workdir: str, step: int):
    """(model, unboxed params) of a workdir's checkpoint at `step`."""
    from flax import linen as nn

    from lmfuse.train.workdir import load_model

    model, params, _ = load_model(workdir, step)
    return model, nn.meta.unbox(params)


def decode_and_score(model, params, flags: FusionFlags, evalset: EvalSet) -> dict[str, Any]:
    """Beam-search the set (fused as `flags` say) and score it; 'hypotheses' holds the output."""
    from lmfuse.evaluate.fusion_setup import build_decode_fusion
    from lmfuse.evaluate.translation import TranslateOptions, translate_and_score

    options = TranslateOptions.from_config(model.config)
    # Rows are independent in beam search, so a smaller batch gives the same hypotheses.
    options = dataclasses.replace(options, batch_size=min(options.batch_size,
                                                          len(evalset.sources)))
    decoder, fused = build_decode_fusion(model, params, flags, options.max_new_tokens)
    out, scores = translate_and_score(decoder, fused, model.tokenizer, evalset.sources,
                                      evalset.references, options)
    scores["hypotheses"] = out.hypotheses
    return scores


def brief(scores: dict[str, Any]) -> dict[str, Any]:
    """The scores a result keeps (no hypotheses, no signatures: those are kept once)."""
    return {k: scores[k] for k in SCORE_KEYS}


def pick(points: Sequence[dict[str, Any]], metric: str = "bleu") -> dict[str, Any]:
    """The best point by validation `metric`; ties go to the earliest point (the smallest λ or
    checkpoint step, as the callers order them)."""
    if not points:
        raise LmfuseError("nothing to choose from: no validation points")
    best = points[0]
    for point in points[1:]:
        if point["val"][metric] > best["val"][metric]:
            best = point
    return best


def point(points: list[dict], field: str, value) -> dict:
    return next(p for p in points if p[field] == value)


def fusion_flags(method: str | None, lm: str | None = None, weight: float = 0.0,
                 source_lm: TrainRun | None = None) -> FusionFlags:
    """`lmfuse translate`'s fusion flags (method None: plain decoding). These studies still
    sweep one weight: density ratio's λ_src and ILME's μ are set to λ here, stated."""
    if method is None:
        return FusionFlags()
    return FusionFlags(method, lm, weight, source_lm.workdir if source_lm else None,
                       source_lm_weight=weight if method == "density_ratio" else None,
                       ilm_weight=weight if method == "ilme" else None)


def device_description() -> str:
    """The accelerator decoding runs on, as reports name it (a resumed grid may span several)."""
    import jax

    device = jax.devices()[0]
    return (f"{device.device_kind} ({device.platform}, {jax.device_count()} device(s), "
            f"JAX {jax.__version__})")


# ---------------------------------------------------------------------------------------------
# Cells


def selection(ctx: RunContext, evaluation: Evaluation, run: TrainRun) -> dict[str, Any]:
    """Every kept checkpoint of a trained run decoded on validation; the best by BLEU.
    Cached in the workdir (recomputed when its checkpoints or the evaluation set change)."""
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
        model, params = load_step(run.workdir, step)
        validation = evaluation.sets(ctx, model.config)["validation"]
        scores = decode_and_score(model, params, fusion_flags(None), validation)
        points.append({"step": step, "val": brief(scores),
                       "val_perplexity": validation_perplexity(model, params)})
    result = {"key": key, "points": points, "step": pick(points)["step"],
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
    step = chosen_checkpoint(ctx, evaluation, run)["step"]
    model, params = load_step(run.workdir, step)
    validation = evaluation.sets(ctx, model.config)["validation"]
    points = []
    for weight in lambdas:
        flags = fusion_flags(method, lm["workdir"], weight, source_lm)
        points.append({"lambda": weight,
                       "val": brief(decode_and_score(model, params, flags, validation))})
    chosen = pick(points)
    commands = [lm["command"], *([source_lm.command()] if source_lm else []), run.command()]
    values = finish(ctx, evaluation, run, step,
                    fusion_flags(method, lm["workdir"], chosen["lambda"], source_lm), chosen,
                    points, commands, key=key, loaded=(model, params))
    values["lm_perplexity"] = lm["perplexity"]
    return values


def finish(ctx: RunContext, evaluation: Evaluation, run: TrainRun, step: int,
           fusion: FusionFlags | None, chosen: dict, points: list[dict], commands: list[str],
           key: str, loaded=None) -> dict[str, Any]:
    """Decodes the test set at the choice; the cell's values, with its reproducing commands
    and the device it ran on."""
    model, params = loaded or load_step(run.workdir, step)
    sets = evaluation.sets(ctx, model.config)
    test = decode_and_score(model, params, fusion or fusion_flags(None), sets["test"])
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
        "test": brief(test),
        "lm_perplexity": None,
        "sweep": points,
        "eval_sentences": {s: len(sets[s].sources) for s in sets},
        "bleu_signature": test["bleu_signature"],
        "chrf_signature": test["chrf_signature"],
        "beam_size": test["beam_size"],
        "device": device_description(),
        "commands": [*dict.fromkeys(commands), *translate],
    }


def translate_command(ctx: RunContext, evaluation: Evaluation, workdir: str, step: int,
                      fusion: FusionFlags | None, evalset: EvalSet, key: str) -> str:
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
        if fusion.source_lm_weight is not None:
            args += ["--source_lm_weight", f"{fusion.source_lm_weight:g}"]
        if fusion.ilm_weight is not None:
            args += ["--ilm_weight", f"{fusion.ilm_weight:g}"]
    return shlex.join(args)
