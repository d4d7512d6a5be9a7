"""Translating many lines with an encoder-decoder (or any fused seq2seq DecodeStep), and
scoring them: the one path `lmfuse eval`, `lmfuse translate`, the demo and the studies share.

    options = TranslateOptions.from_config(config, beam_size=4)   # 0 / None: the config's
    sources, references = split_pairs(config, 'test')
    out, scores = translate_and_score(decoder, params, tokenizer, sources, references, options)
    out = translate_lines(decoder, params, tokenizer, lines, options)    # no references

Lines are encoded with the model's tokenizer, cut to the model's source length (and counted),
and decoded by beam search in batches of similar length (longest first), padded to one of a
few widths (powers of two up to the source length, a width too few batches would use merged
into the next wider one), with one output buffer for all, so a few compiled programs serve
them all.
Empty lines give empty outputs without decoding, and output line i always belongs to input
line i. Characters outside the vocabulary reach the model as bytes (the tokenizer's byte
fallback), so no input can fail to encode. With `progress`, a bar (or, off a terminal, a
plain line every few seconds: `lmfuse.progress`) counts the lines translated.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmfuse.data.tokenizer import Tokenizer
from lmfuse.decode import DecodeStep, beam_search
from lmfuse.decode.beam import compile_beam_search, ranking_alpha
from lmfuse.decode.rescoring import Rescorer
from lmfuse.errors import LmfuseError
from lmfuse.evaluate.metrics import copy_scores, score_translations
from lmfuse.progress import progress_bar
from lmfuse.schema import decode_config
from lmfuse.tokens import BOS_ID, EOS_ID, PAD_ID


@dataclasses.dataclass(frozen=True)
class TranslateOptions:
    beam_size: int = 4
    alpha: float = 0.6
    max_source_tokens: int = 128  # source length the model was trained with, counting EOS
    max_new_tokens: int = 128
    batch_size: int = 64
    progress: bool = False
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size twice in a hypothesis
    # A line's translation has at most max_len_a * |source| + max_len_b tokens (both counting
    # EOS; fairseq's --max-len-a/b), and never more than max_new_tokens. 0 and 0: no limit but
    # max_new_tokens.
    max_len_a: float = 0.0
    max_len_b: int = 0

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        *,
        beam_size: int = 0,
        alpha: float | None = None,
        max_new_tokens: int = 0,
        batch_size: int = 0,
        progress: bool = False,
        no_repeat_ngram_size: int | None = None,
        max_len_a: float | None = None,
        max_len_b: int | None = None,
    ) -> TranslateOptions:
        """A workdir config's decoding settings; a given value (non-zero, not None) wins."""
        decode = config.decode
        if no_repeat_ngram_size is None:  # workdirs trained before the key existed: off
            no_repeat_ngram_size = decode.get("no_repeat_ngram_size", 0)
        # Workdirs trained before the keys existed decode with today's defaults.
        defaults = decode_config()
        max_len_a = decode.get("max_len_a", defaults.max_len_a) if max_len_a is None else max_len_a
        max_len_b = decode.get("max_len_b", defaults.max_len_b) if max_len_b is None else max_len_b
        return cls(
            beam_size=beam_size or decode.beam_size,
            alpha=decode.alpha if alpha is None else alpha,
            max_source_tokens=config.data.max_length,
            max_new_tokens=max_new_tokens or decode.max_new_tokens or config.data.max_length,
            batch_size=batch_size or decode.batch_size,
            progress=progress,
            no_repeat_ngram_size=no_repeat_ngram_size,
            max_len_a=max_len_a,
            max_len_b=max_len_b,
        )

    def new_token_limit(self, source_tokens: int) -> int:
        """New tokens (EOS included) a line with this many source tokens (EOS included) may get."""
        if self.max_len_a <= 0 and self.max_len_b <= 0:
            return self.max_new_tokens
        return max(1, min(self.max_new_tokens, math.ceil(self.max_len_a * source_tokens
                                                          + self.max_len_b)))


@dataclasses.dataclass
class Translations:
    hypotheses: list[str]
    truncated: int  # lines whose source was cut to max_source_tokens
    empty: int  # empty input lines (empty output)


def split_pairs(config: ml_collections.ConfigDict, split: str) -> tuple[list[str], list[str]]:
    """(sources, references) of a translate-view split, in dataset order."""
    _, sources, references = split_examples(config, split)
    return sources, references


def split_examples(config: ml_collections.ConfigDict, split: str
                   ) -> tuple[list[str], list[str], list[str]]:
    """(ids, sources, references) of a translate-view split, in dataset order; ids name each
    pair (`corpora.example_ids`: 'Judges 1:1' for a verse)."""
    from lmfuse.data import corpora  # TFDS loads only when a split is read

    if config.data.view != "translate":
        raise LmfuseError(f"--split needs a translate-view workdir, this one has {config.data.view!r}")
    ids, sources, references = [], [], []
    all_ids = corpora.example_ids(config, split)
    dataset = corpora.load_examples(config, split, in_memory=True).dataset  # a whole pass
    # By index: iterating a Grain MapDataset skips the None (filtered) examples, which would
    # shift every id after the first of them.
    for example_id, index in zip(all_ids, range(len(dataset)), strict=True):
        example = dataset[index]
        if example is not None:
            ids.append(example_id)
            sources.append(example["source"])
            references.append(example["target"])
    return ids, sources, references


def translate_and_score(
    decoder: DecodeStep,
    params: Any,
    tokenizer: Tokenizer,
    sources: Sequence[str],
    references: Sequence[str],
    options: TranslateOptions,
    rescorer: Rescorer | None = None,
) -> tuple[Translations, dict[str, Any]]:
    """Beam-searches every source and scores the best hypotheses against the references:
    `score_translations` (BLEU, chrF, ROUGE-L, PINC, the copy-the-source baseline and the
    signatures) with the beam size and length penalty that made them. A `rescorer` re-ranks
    each n-best list before the best is taken (LM rescoring)."""
    # The copy baseline needs no hypotheses: it is scored on the host while the device decodes
    # (`copy_scores` keeps it for the next system scored on these pairs).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        copy = pool.submit(copy_scores, tuple(sources), tuple(references))
        out = translate_lines(decoder, params, tokenizer, sources, options, rescorer=rescorer)
        copy.result()  # (its error, if any, raised here)
    scores = score_translations(out.hypotheses, references, sources)
    # The exponent the beam really ranked by: 0 (the raw sum) for a non-monotone fused decoder.
    scores.update(beam_size=options.beam_size, alpha=ranking_alpha(decoder, options.alpha))
    return out, scores


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
    rescorer: Rescorer | None = None,
) -> Translations:
    """Best beam-search hypothesis for every line, in order (after `rescorer`, if given)."""
    sources, truncated = encode_sources(tokenizer, lines, options.max_source_tokens)
    # Longest first, so that each batch holds lines of similar length: its beams finish
    # together (the search exits early) and its columns are padded only to its bucket width.
    todo = sorted((i for i, ids in enumerate(sources) if ids is not None),
                  key=lambda i: -len(sources[i]))
    hypotheses = [""] * len(lines)
    rows = options.batch_size
    bar = progress_bar(len(todo), desc="translate", unit="verse", disable=not options.progress)
    chunks = [todo[start : start + rows] for start in range(0, len(todo), rows)]
    # Every batch has `rows` rows and one of a few column widths: a compiled program per
    # width, not per batch. Padding is masked, so the width does not change the output.
    widths = batch_widths([len(sources[chunk[0]]) for chunk in chunks], options.max_source_tokens,
                          MIN_BATCHES_PER_WIDTH)
    batches = [_beam_batch(sources, chunk, width, options) for chunk, width in zip(chunks, widths,
                                                                                  strict=True)]
    search = {"beam_size": options.beam_size, "max_new_tokens": options.max_new_tokens,
              "alpha": options.alpha, "processors": processors,
              "no_repeat_ngram_size": options.no_repeat_ngram_size}
    # Each width's program compiles in the background, in order of first use, while the
    # device decodes the batches before it: compiling is the host's work, on another core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as compiler:
        first: dict[int, tuple[dict[str, jax.Array], np.ndarray]] = {}
        for width, batch in zip(widths, batches, strict=True):
            first.setdefault(width, batch)
        compiled = {width: compiler.submit(compile_beam_search, decoder, params, batch,
                                           row_limits=limits, **search)
                    for width, (batch, limits) in first.items()}
        for chunk, width, (batch, limits) in zip(chunks, widths, batches, strict=True):
            compiled[width].result()  # compiled, or its error raised here
            out = beam_search(decoder, params, batch, row_limits=limits, **search)
            if rescorer is not None:
                out = rescorer(batch["prompt"], out, options.alpha)
            best = np.asarray(out.tokens[:, 0])
            for row, index in enumerate(chunk):
                # A generated newline (byte fallback can produce one) would break the lines.
                text = tokenizer.decode(_until_eos(best[row]))
                hypotheses[index] = " ".join(text.splitlines())
            bar.update(len(chunk))
    bar.close()
    return Translations(hypotheses, truncated, len(lines) - len(todo))


def _beam_batch(sources: list[list[int] | None], chunk: list[int], width: int,
                options: TranslateOptions) -> tuple[dict[str, jax.Array], np.ndarray]:
    """A batch of `options.batch_size` rows (the lines `chunk` of `sources`, padded to
    `width` columns) and its rows' new-token limits."""
    rows = options.batch_size
    inputs = np.full((rows, width), PAD_ID, np.int32)
    for row, index in enumerate(chunk):
        inputs[row, : len(sources[index])] = sources[index]
    batch = {"inputs": jnp.asarray(inputs), "prompt": jnp.full((rows, 1), BOS_ID, jnp.int32)}
    # Each line's own limit, in one buffer of max_new_tokens for every batch: the search
    # grows its cache in phases and exits when its rows are done, so a short batch pays
    # nothing for the buffer's length, and a second buffer size would be a second program
    # per width. Padding rows get the smallest limit, so they never keep the loop running.
    limits = np.ones(rows, np.int32)
    limits[: len(chunk)] = [options.new_token_limit(len(sources[i])) for i in chunk]
    return batch, limits


# A width fewer batches than this would use is merged into the next wider one: compiling a
# program (seconds, on a CPU) costs more than padding a couple of short batches.
MIN_BATCHES_PER_WIDTH = 3


def batch_widths(longest: Sequence[int], max_tokens: int,
                 min_batches: int = MIN_BATCHES_PER_WIDTH) -> list[int]:
    """Column width of each batch from the length of its longest line: its `bucket_width`,
    or the next wider width in use when fewer than `min_batches` batches would have its own
    (the widest width in use is always kept)."""
    widths = [bucket_width(n, max_tokens) for n in longest]
    counts = collections.Counter(widths)
    kept = sorted({w for w, n in counts.items() if n >= min_batches} | {max(widths, default=0)})
    return [next(k for k in kept if k >= w) for w in widths]


def bucket_width(length: int, max_tokens: int, smallest: int = 16) -> int:
    """The smallest power of two >= `length` (at least `smallest`), capped at `max_tokens`."""
    width = smallest
    while width < length:
        width *= 2
    return min(width, max_tokens)


def _until_eos(ids: np.ndarray) -> list[int]:
    ids = ids.tolist()
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else [i for i in ids if i != PAD_ID]
