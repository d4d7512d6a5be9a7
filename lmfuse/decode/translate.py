"""Translating many lines with an encoder-decoder (or any fused seq2seq DecodeStep).

Lines are encoded with the model's tokenizer, cut to the model's source length (and counted),
and decoded by beam search in fixed-shape batches, so one compiled program serves every batch.
Empty lines give empty outputs without decoding, and output line i always belongs to input
line i. Characters outside the vocabulary reach the model as bytes (the tokenizer's byte
fallback), so no input can fail to encode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lmfuse.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from lmfuse.decode.beam import beam_search
from lmfuse.decode.step import DecodeStep


@dataclasses.dataclass(frozen=True)
class TranslateOptions:
    beam_size: int = 4
    alpha: float = 0.6
    max_source_tokens: int = 128  # source length the model was trained with, counting EOS
    max_new_tokens: int = 128
    batch_size: int = 64
    progress: bool = False


@dataclasses.dataclass
class Translations:
    hypotheses: list[str]
    truncated: int  # lines whose source was cut to max_source_tokens
    empty: int  # empty input lines (empty output)


def encode_sources(
    tokenizer: Tokenizer, lines: Sequence[str], max_tokens: int
) -> tuple[list[list[int] | None], int]:
    """Source ids + EOS per line (None for an empty line) and how many were truncated."""
    sources: list[list[int] | None] = []
    truncated = 0
    for ids, line in zip(tokenizer.encode_batch(lines), lines, strict=True):
        if not line.strip():
            sources.append(None)
            continue
        if len(ids) > max_tokens - 1:
            ids, truncated = ids[: max_tokens - 1], truncated + 1
        sources.append([*ids, EOS_ID])
    return sources, truncated


def translate_lines(
    decoder: DecodeStep,
    params: Any,
    tokenizer: Tokenizer,
    lines: Sequence[str],
    options: TranslateOptions,
    processors: Sequence = (),
) -> Translations:
    """Best beam-search hypothesis for every line, in order."""
    sources, truncated = encode_sources(tokenizer, lines, options.max_source_tokens)
    todo = [i for i, ids in enumerate(sources) if ids is not None]
    hypotheses = [""] * len(lines)
    rows = options.batch_size
    starts = range(0, len(todo), rows)
    for start in tqdm(starts, desc="translate", unit="batch", disable=not options.progress):
        chunk = todo[start : start + rows]
        # Every batch has the same shape (padded rows and columns): one compiled program.
        inputs = np.full((rows, options.max_source_tokens), PAD_ID, np.int32)
        for row, index in enumerate(chunk):
            inputs[row, : len(sources[index])] = sources[index]
        batch = {
            "inputs": jnp.asarray(inputs),
            "prompt": jnp.full((rows, 1), BOS_ID, jnp.int32),
        }
        out = beam_search(
            decoder, params, batch, beam_size=options.beam_size,
            max_new_tokens=options.max_new_tokens, alpha=options.alpha, processors=processors,
        )
        best = np.asarray(out.tokens[:, 0])
        for row, index in enumerate(chunk):
            # A generated newline (byte fallback can produce one) would break the line mapping.
            text = tokenizer.decode(_until_eos(best[row]))
            hypotheses[index] = " ".join(text.splitlines())
    return Translations(hypotheses, truncated, len(lines) - len(todo))


def _until_eos(ids: np.ndarray) -> list[int]:
    ids = ids.tolist()
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else [i for i in ids if i != PAD_ID]
