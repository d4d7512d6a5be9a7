"""A cell's decoding and scores under the evaluation protocol (`lmfuse.evaluate.protocol`):
seeded samples, selection on validation over grids that hold 0, one test decode at the choice,
sacrebleu's paired bootstrap against `none` and against copying the source, and the `lmfuse`
commands that reproduce each number.

    evaluation = Evaluation(500, 1000, 0, ctx.workdir / 'eval')
        validation: a seeded sample of 500 pairs over every book; test: 1000 (0: the split)
    plain_cell(ctx, evaluation, run, key)          checkpoint chosen on validation BLEU
    decode_time_cell(ctx, evaluation, run, lm, 'ilme', {'lm': (.1, .3), 'ilm': (.1,)}, key)
        every weight combination (each grid with 0 added) decoded on validation; the best one
        decodes test once

Decoding is `lmfuse translate`'s: the options from the workdir's decode config, the fusion
from `build_decode_fusion`, and the scores from `translate_and_score`. Selection reads the
validation sample only (a test asserts it); every validation point is kept in the cell's values
('sweep'). A candidate whose weights are all 0 is the plain model's own decode, so a selected
decode-time method never scores below `none` on validation.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from lib.runner import OK, Ledger, RunContext, write_json
from lib.runs import TrainRun, kept_steps, training_facts
from lib.shared_models import artifacts, trained, validation_perplexity
from lib.sweeps import METHOD_WEIGHTS, SweepLog, previous_sweep, weights_key
from lmfuse.errors import LmfuseError
from lmfuse.evaluate import protocol
from lmfuse.evaluate.fusion_setup import FusionFlags

SCORE_KEYS = ("bleu", "chrf", "rouge_l", "pinc", "length_ratio", "copy_bleu", "copy_chrf",
              "copy_pinc", "copy_length_ratio", "num_sentences")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A split's seeded sample (size 0: the whole split), in dataset order."""

    split: str
    size: int
    seed: int
    ids: tuple[str, ...]
    sources: tuple[str, ...]
    references: tuple[str, ...]

    @classmethod
    def sample(cls, config: ml_collections.ConfigDict, split: str, size: int, seed: int
               ) -> EvalSet:
        from lmfuse.evaluate.translation import split_examples

        ids, sources, references = split_examples(config, split)
        if not sources:
            raise LmfuseError(f"the {split} split has no sentence pairs to evaluate on")
        ids, (sources, references) = protocol.sample_split(ids, (sources, references), size,
                                                           seed)
        return cls(split, size, seed, tuple(ids), tuple(sources), tuple(references))

    @property
    def name(self) -> str:
        return f"{self.split}.sample{self.size}.seed{self.seed}" if self.size else self.split

    def write(self, directory: Path) -> dict[str, Path]:
        """Sources, references and ids as files, one line each, beside the results."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for kind, lines in (("src", self.sources), ("ref", self.references), ("ids", self.ids)):
            path = paths[kind] = directory / f"{self.name}.{kind}"
            text = "".join(line + "\n" for line in lines)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
        return paths

    def describe(self) -> dict[str, Any]:
        return {"split": self.split, "sample": self.size, "seed": self.seed,
                "pairs": len(self.sources)}


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A task's evaluation sets: seeded samples of validation (selection) and test (scores),
    written under `directory` with their ids."""

    validation_sample: int  # 0: the whole split
    test_sample: int  # 0: the whole split
    seed: int
    directory: Path

    def sets(self, ctx: RunContext, config: ml_collections.ConfigDict) -> dict[str, EvalSet]:
        """{'validation', 'test'}: the EvalSets of the config's data, made once per run."""
        def make():
            sizes = {"validation": self.validation_sample, "test": self.test_sample}
            sets = {split: EvalSet.sample(config, split, size, self.seed)
                    for split, size in sizes.items()}
            for evalset in sets.values():
                evalset.write(self.directory)
            return sets

        return ctx.shared(f"eval_sets:{self.directory}", make)

    def validation(self, ctx: RunContext, config: ml_collections.ConfigDict) -> EvalSet:
        """The selection set alone: what every choice reads."""
        return self.sets(ctx, config)["validation"]

    def test(self, ctx: RunContext, config: ml_collections.ConfigDict) -> EvalSet:
        """The scoring set: read once per cell, after every choice is made."""
        return self.sets(ctx, config)["test"]


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
    from lmfuse.evaluate.fusion_setup import build_decode_fusion, build_rescorer
    from lmfuse.evaluate.translation import TranslateOptions, translate_and_score

    options = TranslateOptions.from_config(model.config)
    # Rows are independent in beam search, so a smaller batch gives the same hypotheses.
    options = dataclasses.replace(options, batch_size=min(options.batch_size,
                                                          len(evalset.sources)))
    decoder, fused = build_decode_fusion(model, params, flags, options.max_new_tokens)
    rescorer = build_rescorer(model, flags, options.max_new_tokens)
    out, scores = translate_and_score(decoder, fused, model.tokenizer, evalset.sources,
                                      evalset.references, options, rescorer=rescorer)
    scores["hypotheses"] = out.hypotheses
    return scores


def brief(scores: dict[str, Any]) -> dict[str, Any]:
    """The scores a result keeps (no hypotheses, no signatures: those are kept once)."""
    return {k: scores[k] for k in SCORE_KEYS}


def pick(points: Sequence[dict[str, Any]], metric: str = "bleu") -> dict[str, Any]:
    """The best point by validation `metric`; ties go to the earliest point (the smallest
    checkpoint step, as the callers order them)."""
    if not points:
        raise LmfuseError("nothing to choose from: no validation points")
    best = points[0]
    for candidate in points[1:]:
        if candidate["val"][metric] > best["val"][metric]:
            best = candidate
    return best


def point(points: list[dict], field: str, value) -> dict:
    return next(p for p in points if p[field] == value)


def fusion_flags(method: str | None, lm: str | None = None,
                 weights: Mapping[str, float] | None = None,
                 source_lm: TrainRun | None = None) -> FusionFlags:
    """`lmfuse translate`'s fusion flags for `weights` ({'lm', 'source_lm', 'ilm',
    'length_reward'}); method None, or every weight 0, is plain decoding."""
    weights = dict(weights or {})
    if method is None or not any(weights.values()):
        return FusionFlags()
    unknown = set(weights) - set(METHOD_WEIGHTS[method])
    if unknown:
        raise LmfuseError(f"{method} takes no weight {sorted(unknown)[0]!r}")
    return FusionFlags(
        method, lm, weights.get("lm", 0.0), source_lm.workdir if source_lm else None,
        source_lm_weight=weights.get("source_lm", 0.0) if method == "density_ratio" else None,
        ilm_weight=weights.get("ilm", 0.0) if method == "ilme" else None,
        length_reward=weights.get("length_reward", 0.0),
    )


def device_description() -> str:
    """The accelerator decoding runs on, as reports name it (a resumed grid may span several).
    On CPU also the processor: XLA's CPU kernels differ in the last bits between processors,
    so a model trained again on another one comes out slightly otherwise."""
    import jax

    device = jax.devices()[0]
    text = f"{device.device_kind} ({device.platform}, {jax.device_count()} device(s), " \
           f"JAX {jax.__version__}"
    if device.platform == "cpu":
        from lmfuse.train.provenance import cpu_model

        text += f"; {cpu_model()}"
    return text + ")"


# ---------------------------------------------------------------------------------------------
# Choosing a checkpoint, and the plain model's test decode (every fused cell's baseline)


def selection(ctx: RunContext, evaluation: Evaluation, run: TrainRun) -> dict[str, Any]:
    """The checkpoint a cell uses. A run with early stopping: the checkpoint with the best
    value of its stop metric (early stopping's own choice: validation loss, or the BLEU of
    its training-time validation sample), decoded on the validation sample for its scores. Otherwise every kept checkpoint is decoded there and the best by BLEU is chosen.
    Cached in the workdir (recomputed when its checkpoints or the sample change)."""
    from lmfuse.train.loop import training_record

    steps = kept_steps(run.workdir)
    best_loss = (training_record(run.workdir) or {}).get("best_validation_step")
    if run.load().train.patience and best_loss in steps:
        steps = [best_loss]
    key = {"steps": steps, "validation_sample": evaluation.validation_sample,
           "seed": evaluation.seed}
    cache = Path(run.workdir) / "selection.json"
    if cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored
    start = time.perf_counter()
    points = []
    for step in steps:
        model, params = load_step(run.workdir, step)
        validation = evaluation.validation(ctx, model.config)
        scores = decode_and_score(model, params, FusionFlags(), validation)
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


def plain_test(ctx: RunContext, evaluation: Evaluation, run: TrainRun) -> dict[str, Any]:
    """The plain model's test decode at its chosen checkpoint (scores and hypotheses): the
    `none` row, and the baseline of every fused row of its group. Cached in the model's own
    workdir, so a model trained again (its workdir gone) is decoded again."""
    def make():
        step = chosen_checkpoint(ctx, evaluation, run)["step"]
        model, params = load_step(run.workdir, step)
        test = evaluation.test(ctx, model.config)
        cache = Path(run.workdir) / f"test.step{step}.{test.name}.json"
        if cache.is_file():
            return json.loads(cache.read_text(encoding="utf-8"))
        scores = decode_and_score(model, params, FusionFlags(), test)
        write_json(cache, scores)
        return scores

    return ctx.shared(f"plain_test:{run.workdir}", make)


# BLEU within this is the same outputs (records rebuilt from tables keep four or five decimals)
REPRODUCED = 1e-3


def check_reproduced(ctx: RunContext, evaluation: Evaluation, run: TrainRun, none_key: str
                     ) -> None:
    """A fused cell is compared with the plain model its `none` cell scored. Where that model
    was trained again (its workdir gone) and came out otherwise (another processor's floating
    point, changed code), the cell would be compared with a model no row shows: refused. Read
    from the checkpoint choice and its validation scores, so test is still decoded only once
    every choice is made."""
    record = Ledger(ctx.workdir).read(none_key)
    if record is None or record.status != OK or "step" not in record.values:
        return  # no row yet: the cell's own `none` is this model
    chosen = chosen_checkpoint(ctx, evaluation, run)
    step = chosen["step"]
    bleu = point(chosen["points"], "step", step)["val"]["bleu"]
    stored_step, stored_bleu = record.values["step"], record.values["val"]["bleu"]
    if step != stored_step or abs(bleu - stored_bleu) > REPRODUCED:
        raise LmfuseError(
            f"the plain model in {Path(run.workdir).name}, trained again here, chooses step "
            f"{step} with validation BLEU {bleu:.2f}, where its row {none_key} has step "
            f"{stored_step} and {stored_bleu:.2f} (another processor's floating point?): run "
            "this cell with its own none in a new --workdir and --results")


# ---------------------------------------------------------------------------------------------
# Cells


def plain_cell(ctx: RunContext, evaluation: Evaluation, run: TrainRun, key: str
               ) -> dict[str, Any]:
    """The encoder-decoder on its own, at its chosen checkpoint."""
    chosen = chosen_checkpoint(ctx, evaluation, run)
    step = chosen["step"]
    values = finish(ctx, evaluation, run, step, None, point(chosen["points"], "step", step),
                    chosen["points"], commands=[run.command()], key=key, baseline=run)
    # The model is shared (other cells decode it), but training and choosing it is this
    # cell's work: its wall time counts them (as first measured, so reruns agree).
    seconds = artifacts(ctx).get(Path(run.workdir).name, {}).get("train_seconds", 0.0)
    values["attributed_seconds"] = round(seconds + chosen.get("seconds", 0.0), 1)
    return values


def decode_time_cell(ctx: RunContext, evaluation: Evaluation, run: TrainRun, lm: dict[str, Any],
                     method: str, grids: Mapping[str, Sequence[float]], key: str,
                     source_lm: TrainRun | None = None) -> dict[str, Any]:
    """`run`'s chosen checkpoint fused at decode time with `lm` (trained_lm's dict): every
    combination of the grids' weights (0 added to each) decoded on the validation sample, the
    best by BLEU decoded on test."""
    chosen_step = chosen_checkpoint(ctx, evaluation, run)
    step = chosen_step["step"]
    model, params = load_step(run.workdir, step)
    validation = evaluation.validation(ctx, model.config)
    plain_val = point(chosen_step["points"], "step", step)["val"]
    points: list[dict[str, Any]] = []
    commands = [lm["command"], *([source_lm.command()] if source_lm else []), run.command()]
    previous = previous_sweep(ctx, step, commands)
    log = SweepLog(ctx.workdir / "cells" / f"{key}.sweep.jsonl", step, commands)
    known = {**previous["points"], **log.read()}

    def score(weights: dict[str, float]) -> float:
        flags = fusion_flags(method, lm["workdir"], weights, source_lm)
        val = plain_val if flags.method is None else known.get(weights_key(weights))
        if val is None:
            val = brief(decode_and_score(model, params, flags, validation))
            log.append(weights, val)
        points.append({"weights": weights, "val": val})
        return val["bleu"]

    weights, _ = protocol.select_on_validation(
        {name: grids.get(name, ()) for name in METHOD_WEIGHTS[method]}, score)
    chosen = next(p for p in points if p["weights"] == weights)
    if previous["values"] is not None and previous["values"]["weights"] == weights:
        return {**previous["values"], "sweep": points}  # same choice: its test decode holds
    values = finish(ctx, evaluation, run, step, fusion_flags(method, lm["workdir"], weights,
                                                             source_lm),
                    chosen, points, commands, key=key, loaded=(model, params), baseline=run)
    values.update(weights=weights, lm_perplexity=lm["perplexity"])
    return values


def finish(ctx: RunContext, evaluation: Evaluation, run: TrainRun, step: int,
           fusion: FusionFlags | None, chosen: dict, points: list[dict], commands: list[str],
           key: str, baseline: TrainRun, loaded=None) -> dict[str, Any]:
    """Decodes the test sample at the choice and compares it with `baseline`'s plain decode
    and with copying the source; the cell's values, with its reproducing commands and the
    device it ran on."""
    from lmfuse.train.workdir import load_workdir_config

    sets = evaluation.sets(ctx, load_workdir_config(run.workdir))
    if run == baseline and (fusion is None or fusion.method is None):
        test = plain_test(ctx, evaluation, run)  # decoded once, shared with the fused cells
    else:
        model, params = loaded or load_step(run.workdir, step)
        test = decode_and_score(model, params, fusion or FusionFlags(), sets["test"])
    hypotheses = ctx.workdir / "cells" / f"{key}.test.hyp"
    hypotheses.parent.mkdir(parents=True, exist_ok=True)
    hypotheses.write_text("".join(h + "\n" for h in test["hypotheses"]), encoding="utf-8")
    confidence = compare(test["hypotheses"], plain_test(ctx, evaluation, baseline)["hypotheses"],
                         sets["test"], evaluation.seed)
    translate = translate_command(ctx, run.workdir, step, fusion, sets["test"], key)
    return {
        "step": step,
        "weights": None,
        "val": chosen["val"],
        "val_perplexity": chosen.get("val_perplexity"),
        "test": brief(test),
        "confidence": confidence,
        "lm_perplexity": None,
        "training": training_facts(run.workdir),
        "sweep": points,
        "eval_sets": {s: sets[s].describe() for s in sets},
        "bleu_signature": test["bleu_signature"],
        "chrf_signature": test["chrf_signature"],
        "beam_size": test["beam_size"],
        "device": device_description(),
        "commands": [*dict.fromkeys(commands), translate],
    }


def compare(hypotheses: Sequence[str], plain: Sequence[str], test: EvalSet, seed: int
            ) -> dict[str, Any]:
    """sacrebleu's paired bootstrap of the cell's test output against the plain model's
    ('none') and against the sources copied ('copy'): BLEU / chrF, 95% intervals, p-values."""
    systems = {"system": list(hypotheses), "none": list(plain), "copy": list(test.sources)}
    result = {}
    for baseline in ("none", "copy"):
        report = protocol.paired_bootstrap(systems, test.references, baseline, seed=seed)
        # The same output line for line has no difference to test (sacrebleu's bootstrap
        # still prints a p-value for it).
        identical = systems["system"] == systems[baseline]
        result[baseline] = {"system": report["system"], "baseline": report[baseline],
                            "identical": identical}
    return result


def translate_command(ctx: RunContext, workdir: str, step: int, fusion: FusionFlags | None,
                      evalset: EvalSet, key: str) -> str:
    """The `lmfuse translate` line that decodes and scores `evalset` as the cell did (its
    sample, the checkpoint, the fusion and its weights), writing the cell's hypotheses."""
    output = ctx.workdir / "cells" / f"{key}.{evalset.split}.hyp"
    args = ["lmfuse", "translate", "--workdir", workdir, "--step", str(step),
            "--split", evalset.split]
    if evalset.size:
        args += ["--sample", str(evalset.size)]
    args += ["--seed", str(evalset.seed), "--output", str(output)]
    if fusion is not None and fusion.method is not None:
        args += ["--fusion", fusion.method, "--lm", fusion.lm,
                 "--lm_weight", f"{fusion.lm_weight:g}"]
        if fusion.source_lm:
            args += ["--source_lm", fusion.source_lm]
        if fusion.source_lm_weight is not None:
            args += ["--source_lm_weight", f"{fusion.source_lm_weight:g}"]
        if fusion.ilm_weight is not None:
            args += ["--ilm_weight", f"{fusion.ilm_weight:g}"]
        if fusion.length_reward:
            args += ["--length_reward", f"{fusion.length_reward:g}"]
    return shlex.join(args)
