"""Corpus metrics for translation and style transfer: BLEU, chrF, ROUGE-L, PINC.

    hypotheses [S] str, references [S] str, sources [S] str      (one line per sentence)
      -> score_translations(...) -> {
           'bleu', 'chrf', 'rouge_l', 'pinc',                       model vs references, x100
           'copy_bleu', 'copy_chrf', 'copy_rouge_l', 'copy_pinc',   sources vs references, x100
           'bleu_signature', 'chrf_signature',                      sacrebleu signatures (str)
           'num_sentences'}                                          S
      -> format_report(scores, title) -> aligned text table + signatures

All scores are on a 0-100 scale, and every value is a plain float, int or str, so the dict
can be written as JSON as it is.

- BLEU and chrF are sacrebleu's corpus scores with its default settings (13a tokenizer,
  exponential smoothing, chrF with character order 6 and no word n-grams), so they equal
  `sacrebleu REF -i HYP -m bleu chrf` and their signatures say exactly what was computed.
- ROUGE-L is rouge_score's `rougeL` F-measure (sentence-level longest common subsequence, no
  stemming), computed per sentence pair and averaged over sentences. It is not the
  summary-level `rougeLsum`. Like BLEU and chrF it is case-sensitive: words are rouge_score's
  (runs of ASCII letters and digits) without its lowercasing, so "LORD" and "Lord" differ;
  `lowercase=True` (`rouge_lowercase` of `score_translations`) is rouge_score's own tokenizer.
- PINC (Chen & Dolan 2011; reported for style transfer on the Bible by Carlson et al. 2018)
  measures how much of a hypothesis is *new* relative to its source, so it is the counterweight
  to BLEU: copying the source scores PINC 0 however high its BLEU is.

        PINC(s, c) = 1/N' * sum_{n in orders} (1 - |ngrams_n(s) & ngrams_n(c)| / |ngrams_n(c)|)

  with n-gram *sets*, n = 1 .. max_order (4). Corpus PINC is the mean over sentences, x100.
  Choices the definition leaves open:
  * Tokenisation: lowercase, then sacrebleu's 13a tokenizer (the word boundaries the BLEU
    here uses). PINC is defined over words; splitting on whitespace alone would make 'said,'
    and 'said' different words, and Bible text is dense with such punctuation and with
    capitalised sentence starts, so whitespace tokens would count mere punctuation and case
    changes as paraphrase.
  * Orders the hypothesis is too short to have (a 2-word hypothesis has no 3- or 4-grams) are
    skipped: the mean is over the N' orders with at least one hypothesis n-gram. An empty
    hypothesis has no orders at all and scores PINC 0 (nothing new was said).
"""

from __future__ import annotations

import functools
import re
import statistics
from collections.abc import Sequence

from rouge_score import rouge_scorer, tokenizers
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.bleu import BLEUScore
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from lmfuse.errors import LmfuseError

PINC_MAX_ORDER = 4

# Report rows and columns: (label, key prefix) and (header, score key).
_ROWS = (("model", ""), ("copy source", "copy_"))
_COLUMNS = (("BLEU", "bleu"), ("chrF", "chrf"), ("ROUGE-L", "rouge_l"), ("PINC", "pinc"),
            ("len", "length_ratio"))


def sentence_pinc(source: str, hypothesis: str, max_order: int = PINC_MAX_ORDER) -> float:
    """PINC of one hypothesis against its source, x100 (see the module docstring)."""
    if max_order < 1:
        raise LmfuseError(f"PINC max_order must be at least 1, got {max_order}")
    source_tokens = _pinc_tokens(source)
    hypothesis_tokens = _pinc_tokens(hypothesis)
    novelty = []
    for n in range(1, max_order + 1):
        hypothesis_ngrams = _ngram_set(hypothesis_tokens, n)
        if not hypothesis_ngrams:  # too short for this order (and every higher one)
            break
        shared = hypothesis_ngrams & _ngram_set(source_tokens, n)
        novelty.append(1.0 - len(shared) / len(hypothesis_ngrams))
    return 100.0 * statistics.fmean(novelty) if novelty else 0.0


def pinc(
    sources: Sequence[str], hypotheses: Sequence[str], max_order: int = PINC_MAX_ORDER
) -> float:
    """Corpus PINC, x100: the mean of `sentence_pinc` over aligned sentence pairs."""
    _check_aligned(sources=sources, hypotheses=hypotheses)
    return statistics.fmean(
        sentence_pinc(source, hypothesis, max_order)
        for source, hypothesis in zip(sources, hypotheses, strict=True)
    )


def rouge_l(hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = False) -> float:
    """ROUGE-L F-measure x100, computed per sentence and averaged over sentences; case-sensitive
    unless `lowercase` (see the module docstring)."""
    _check_aligned(hypotheses=hypotheses, references=references)
    scorer = _rouge_l_scorer(lowercase)
    return 100.0 * statistics.fmean(
        scorer.score(reference, hypothesis)["rougeL"].fmeasure  # rouge_score takes target first
        for hypothesis, reference in zip(hypotheses, references, strict=True)
    )


def score_translations(
    hypotheses: Sequence[str],
    references: Sequence[str],
    sources: Sequence[str],
    rouge_lowercase: bool = False,
) -> dict:
    """BLEU, chrF, ROUGE-L and PINC of the hypotheses, and of copying the source instead.

    The copy-the-source row is the baseline a style-transfer model has to beat: on the Bible,
    where versions share most of their words, copying already scores a high BLEU.
    `rouge_lowercase` makes ROUGE-L case-insensitive (`rouge_l`'s `lowercase`).
    """
    _check_aligned(hypotheses=hypotheses, references=references, sources=sources)
    metrics = reference_metrics(tuple(references))
    bleu, bleu_signature, length_ratio = _sacrebleu_score(metrics["BLEU"], hypotheses)
    chrf, chrf_signature, _ = _sacrebleu_score(metrics["chrF"], hypotheses)
    copy = copy_scores(tuple(sources), tuple(references), rouge_lowercase)
    return {
        "bleu": bleu,
        "chrf": chrf,
        "rouge_l": rouge_l(hypotheses, references, rouge_lowercase),
        "pinc": pinc(sources, hypotheses),
        **{key: copy[key] for key in ("copy_bleu", "copy_chrf", "copy_rouge_l", "copy_pinc")},
        # Hypothesis / reference length in BLEU's tokens: a fused system that wins by
        # shortening or lengthening its outputs shows here.
        "length_ratio": length_ratio,
        "copy_length_ratio": copy["copy_length_ratio"],
        "bleu_signature": bleu_signature,
        "chrf_signature": chrf_signature,
        "num_sentences": len(hypotheses),
    }


@functools.lru_cache(maxsize=2)
def copy_scores(sources: tuple[str, ...], references: tuple[str, ...],
                rouge_lowercase: bool = False) -> dict[str, float]:
    """The copy-the-source baseline of `score_translations` ('copy_bleu', 'copy_chrf',
    'copy_rouge_l', 'copy_pinc', 'copy_length_ratio'): the same for every system scored on
    these pairs (a sweep's points, a study's cells), so computed once."""
    _check_aligned(sources=sources, references=references)
    metrics = reference_metrics(references)
    copy_bleu, _, copy_length_ratio = _sacrebleu_score(metrics["BLEU"], sources)
    copy_pinc = pinc(sources, sources)
    assert copy_pinc == 0.0, f"PINC of the source against itself must be 0, got {copy_pinc}"
    return {
        "copy_bleu": copy_bleu,
        "copy_chrf": _sacrebleu_score(metrics["chrF"], sources)[0],
        "copy_rouge_l": rouge_l(sources, references, rouge_lowercase),
        "copy_pinc": copy_pinc,
        "copy_length_ratio": copy_length_ratio,
    }


def format_report(scores: dict, title: str) -> str:
    """`scores` from `score_translations` as an aligned table, then the sacrebleu signatures.

    Keys other than the ones `score_translations` returns (beam size, step, ...) are ignored.
    """
    label_width = max(len(label) for label, _ in _ROWS)
    widths = [max(len(header), 6) for header, _ in _COLUMNS]  # 6 fits '100.00'
    header = "  ".join(f"{name:>{w}}" for (name, _), w in zip(_COLUMNS, widths, strict=True))
    lines = [f"{title} ({scores['num_sentences']} sentences)", f"{'':<{label_width}}  {header}"]
    for label, prefix in _ROWS:
        cells = "  ".join(
            f"{scores[prefix + key]:>{w}.2f}" for (_, key), w in zip(_COLUMNS, widths, strict=True)
        )
        lines.append(f"{label:<{label_width}}  {cells}")
    lines.append(f"BLEU signature: {scores['bleu_signature']}")
    lines.append(f"chrF signature: {scores['chrf_signature']}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=2)
def reference_metrics(references: tuple[str, ...]) -> dict[str, BLEU | CHRF]:
    """sacrebleu's BLEU and chrF (default settings) holding these references' n-grams, read
    once for every system scored against them (the model, the copy, the paired bootstrap's
    resamples): reading the references was a quarter of scoring a split."""
    return {"BLEU": BLEU(references=[list(references)]),
            "chrF": CHRF(references=[list(references)])}


def _sacrebleu_score(metric: BLEU | CHRF, hypotheses: Sequence[str]
                     ) -> tuple[float, str, float | None]:
    """(score, signature, hypothesis/reference length ratio; BLEU only, else None) against
    the references `metric` holds (`reference_metrics`)."""
    score = metric.corpus_score(list(hypotheses), None)
    ratio = None
    if isinstance(score, BLEUScore):
        ratio = float(score.sys_len / score.ref_len) if score.ref_len else 0.0
    return float(score.score), str(metric.get_signature()), ratio


class CaseKeepingTokenizer(tokenizers.Tokenizer):
    """rouge_score's default tokenization, runs of ASCII letters and digits, without its
    lowercasing: ROUGE-L then tells case apart, as BLEU and chrF do."""

    _WORD = re.compile(r"[A-Za-z0-9]+")

    def tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text)


@functools.cache
def _rouge_l_scorer(lowercase: bool) -> rouge_scorer.RougeScorer:
    tokenizer = None if lowercase else CaseKeepingTokenizer()  # None: rouge_score's, lowercasing
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=tokenizer)


@functools.cache
def _tokenizer_13a() -> Tokenizer13a:
    return Tokenizer13a()


def _pinc_tokens(text: str) -> list[str]:
    return _tokenizer_13a()(text.lower()).split()


def _ngram_set(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _check_aligned(**columns: Sequence[str]) -> None:
    """One line per sentence in every column, and at least one sentence."""
    counts = {name: len(lines) for name, lines in columns.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{count} {name}" for name, count in counts.items())
        raise LmfuseError(f"metrics need one line per sentence in each input, got {listed}")
    if not next(iter(counts.values())):
        raise LmfuseError(f"nothing to score: 0 {' / '.join(counts)} given")
