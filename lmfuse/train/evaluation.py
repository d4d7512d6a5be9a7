"""Perplexity and accuracy of a model on a whole split (or its first batches)."""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np

from lmfuse.data import corpora
from lmfuse.data.pipeline import PipelineOptions, make_dataset
from lmfuse.errors import LmfuseError
from lmfuse.train import sharding
from lmfuse.train.trainer import Model

# What `evaluate` counts rather than measures: the same at every evaluation of a split, so
# training logs them once (as text), not as curves.
COUNT_KEYS = ("tokens", "words", "chars", "docs")


def text_units(config: ml_collections.ConfigDict, split: str) -> dict[str, int]:
    """Words and characters of a split (each document also ends with EOS, counted as one)."""
    words = chars = docs = 0
    for example in corpora.load_examples(config, split, in_memory=True).dataset:  # a whole pass
        if example is None:
            continue
        text = example.get("text", example.get("target", ""))
        words += len(text.split()) + 1
        chars += len(text) + 1
        docs += 1
    return {"words": words, "chars": chars, "docs": docs}


def evaluate(trainer: Model, params, split: str = "validation", max_batches: int = 0) -> dict:
    """Perplexity per token, per word and per character over the whole split, and next-token
    (masked-token for an MLM) accuracy."""
    config = trainer.config
    options = PipelineOptions.from_config(config, split)
    examples = corpora.load_examples(config, split, in_memory=not max_batches).dataset
    dataset = make_dataset(examples, trainer.tokenizer, options)
    per_process = options.batch_size // jax.process_count()
    nll_sum, tokens, correct = 0.0, 0.0, 0.0
    with sharding.activate(trainer.mesh, trainer.rules):
        for index, batch in enumerate(dataset):
            if max_batches and index >= max_batches:
                break
            batch = _pad_rows(batch, per_process)  # the last batch keeps the compiled shape
            sums = trainer.eval_step(params, sharding.global_batch(batch, trainer.mesh, trainer.rules))
            nll_sum += float(sums["nll_sum"])
            tokens += float(sums["tokens"])
            correct += float(sums["correct"])
    if not tokens:  # else a perplexity of 1 over nothing, and a division by zero per word
        raise LmfuseError(f"the {split} split has no tokens to score; check data.files.{split} "
                          "(or data.corpus) in the workdir's config")
    result = {"nll": nll_sum / max(tokens, 1.0), "tokens": tokens,
              "accuracy": correct / max(tokens, 1.0),
              "perplexity": math.exp(min(nll_sum / max(tokens, 1.0), 50.0))}
    every_token_scored = trainer.objective.name == "lm" or config.data.view == "translate"
    if not max_batches and every_token_scored:  # per word / char: the whole text is scored
        units = text_units(config, split)
        for unit in ("words", "chars"):
            result[f"perplexity_per_{unit[:-1]}"] = math.exp(min(nll_sum / units[unit], 50.0))
        result.update(units)
    return result


def split_counts(result: dict) -> tuple[dict, dict]:
    """(metrics, counts) of an `evaluate` result: the counts are its COUNT_KEYS."""
    metrics = {k: v for k, v in result.items() if k not in COUNT_KEYS}
    return metrics, {k: result[k] for k in COUNT_KEYS if k in result}


def _pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    missing = rows - batch["inputs"].shape[0]
    if missing <= 0:
        return batch
    return {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
