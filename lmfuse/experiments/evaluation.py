"""Decoding and scoring for experiments: evaluation subsets, fused decoding, selection.

    EvalSet.first(config, 'validation', 200)  the first 200 pairs of the split in file order
                                              (0: the whole split)
    decode_and_score(trainer, params, flags, evalset)
        -> score_translations(...) of the beam-search hypotheses, plus the hypotheses
    pick(points, 'bleu')                      the point with the best validation score
    device_description()                      the accelerator, for reports

Decoding is `lmfuse translate`'s: the same options from the workdir's decode config, the same
fusion setup (`build_decode_fusion`), the same scores.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from lmfuse.decode.fusion_setup import FusionFlags
from lmfuse.errors import LmfuseError


@dataclasses.dataclass(frozen=True)
class EvalSet:
    split: str
    limit: int  # 0: the whole split
    sources: tuple[str, ...]
    references: tuple[str, ...]

    @classmethod
    def first(cls, config: ml_collections.ConfigDict, split: str, limit: int) -> EvalSet:
        from lmfuse.decode.cli_translate import split_pairs

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


def decode_options(config: ml_collections.ConfigDict, sentences: int):
    """`lmfuse translate`'s options for a workdir's config; batches no larger than needed."""
    from lmfuse.decode.cli_translate import options_from

    flags = argparse.Namespace(beam=0, alpha=None, max_len=0, batch_size=0)
    options = options_from(config, flags, progress=False)
    # Rows are independent in beam search, so a smaller batch gives the same hypotheses.
    return dataclasses.replace(options, batch_size=min(options.batch_size, sentences))


def decode_and_score(trainer, params, flags: FusionFlags, evalset: EvalSet) -> dict[str, Any]:
    """Beam-search the set (fused as `flags` say) and score it; 'hypotheses' holds the output."""
    from lmfuse.decode.fusion_setup import build_decode_fusion
    from lmfuse.decode.translate import translate_lines
    from lmfuse.evaluate.metrics import score_translations

    options = decode_options(trainer.config, len(evalset.sources))
    decoder, fused = build_decode_fusion(trainer, params, flags, options.max_new_tokens)
    out = translate_lines(decoder, fused, trainer.tokenizer, evalset.sources, options)
    scores = score_translations(out.hypotheses, evalset.references, evalset.sources)
    scores.update(beam_size=options.beam_size, alpha=options.alpha, hypotheses=out.hypotheses)
    return scores


def load_step(workdir: str, step: int):
    """(trainer, unboxed params) of a workdir's checkpoint at `step`."""
    from flax import linen as nn

    from lmfuse.train.workdir import load_trained

    trainer, state, _ = load_trained(workdir, step)
    return trainer, nn.meta.unbox(state.params)


def validation_perplexity(trainer, params) -> float:
    """Per-token perplexity over the whole validation split (`lmfuse eval`'s number)."""
    from lmfuse.train.loop import evaluate

    return float(evaluate(trainer, params, "validation")["perplexity"])


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


SCORE_KEYS = ("bleu", "chrf", "rouge_l", "pinc", "copy_bleu", "copy_chrf", "copy_pinc",
              "num_sentences")


def brief(scores: dict[str, Any]) -> dict[str, Any]:
    """The scores a result keeps (no hypotheses, no signatures: those are kept once)."""
    return {k: scores[k] for k in SCORE_KEYS}


def device_description() -> str:
    """The accelerator decoding runs on, as reports name it (a resumed grid may span several)."""
    import jax

    device = jax.devices()[0]
    return (f"{device.device_kind} ({device.platform}, {jax.device_count()} device(s), "
            f"JAX {jax.__version__})")
