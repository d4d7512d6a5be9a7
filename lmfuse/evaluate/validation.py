"""BLEU and chrF curves while an encoder-decoder trains: the `extra_eval` hook of the loop.

    hook = translation_hook(config)        # None: not a translate-view encoder-decoder, or off
    train(config, workdir, extra_eval=hook)  # validation/bleu, validation/chrf at each evaluation

The loop (`lmfuse.train.loop`) cannot decode or score (the layers point the other way), so
`lmfuse train` hands it this hook. At each evaluation it beam-searches a seeded sample of
`train.eval_translate_sample` validation pairs (`protocol.sample_split` with the config's
seed: every book represented, the same pairs every time) with the config's `decode` settings
and the model alone, as `lmfuse translate` would without fusion, and scores them with
sacrebleu (`translate_and_score`). The sample and the decoder are made at the first call and
reused, so later evaluations recompile nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ml_collections

from lmfuse.errors import LmfuseError

if TYPE_CHECKING:
    from lmfuse.train.trainer import Trainer

# The metrics the hook returns (logged as validation/<name>).
METRICS = ("bleu", "chrf")


def translates(config: ml_collections.ConfigDict) -> bool:
    """Whether a config trains an encoder-decoder (or a model fused from one) on pairs."""
    from lmfuse.models.registry import SEQ2SEQ_NAMES

    return config.model.name in SEQ2SEQ_NAMES and config.data.view == "translate"


def translation_hook(config: ml_collections.ConfigDict
                     ) -> Callable[[Trainer, Any, int], dict[str, float]] | None:
    """The loop's `extra_eval` for a translate-view encoder-decoder config: (trainer, params,
    step) -> {'bleu': ..., 'chrf': ...} on the validation sample. None when the config trains
    anything else or sets train.eval_translate_sample=0. Reads nothing until the first call."""
    size = config.train.eval_translate_sample
    if size < 0:
        raise LmfuseError(f"train.eval_translate_sample={size} must be >= 0 (validation pairs "
                          "decoded for BLEU and chrF at each evaluation; 0: none)")
    if not size or not translates(config):
        return None
    prepared: dict[str, Any] = {}

    def score(trainer: Trainer, params: Any, step: int) -> dict[str, float]:
        from flax import linen as nn

        from lmfuse.evaluate.translation import translate_and_score

        if not prepared:
            prepared.update(_prepare(trainer, size))
        _, scores = translate_and_score(prepared["decoder"], nn.meta.unbox(params),
                                        trainer.tokenizer, prepared["sources"],
                                        prepared["references"], prepared["options"])
        return {name: float(scores[name]) for name in METRICS}

    return score


def _prepare(trainer: Trainer, size: int) -> dict[str, Any]:
    """The seeded validation sample, the decode options and the model's plain DecodeStep."""
    from lmfuse.evaluate import protocol
    from lmfuse.evaluate.fusion_setup import FusionFlags, build_decode_fusion
    from lmfuse.evaluate.translation import TranslateOptions, split_examples
    from lmfuse.schema import decode_config

    config = trainer.config
    if "decode" not in config:  # a config of its own without the seq2seq presets' group
        config = ml_collections.ConfigDict({**config.to_dict(), "decode": decode_config()})
    ids, sources, references = split_examples(config, "validation")
    _, (sources, references) = protocol.sample_split(ids, (sources, references), size,
                                                     config.seed)
    if not sources:
        raise LmfuseError("the validation split has no pairs to translate; check "
                          "data.files.validation, or set train.eval_translate_sample=0")
    options = TranslateOptions.from_config(config)
    # The plain model: FusionFlags() fuses nothing, so no parameters are added or loaded.
    decoder, _ = build_decode_fusion(trainer, None, FusionFlags(), options.max_new_tokens)
    return {"sources": sources, "references": references, "options": options,
            "decoder": decoder}
