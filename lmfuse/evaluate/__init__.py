"""Evaluation metrics for translation and style transfer (BLEU, chrF, ROUGE-L, PINC).

    scores = score_translations(hypotheses, references, sources)   # with the copy baseline
    print(format_report(scores, "test split"))
"""

from lmfuse.evaluate.metrics import (
    format_report,
    pinc,
    rouge_l,
    score_translations,
    sentence_pinc,
)

__all__ = ["format_report", "pinc", "rouge_l", "score_translations", "sentence_pinc"]
