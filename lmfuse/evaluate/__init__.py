"""Evaluation metrics for translation and style transfer (BLEU, chrF, ROUGE-L, PINC).

    scores = score_translations(hypotheses, references, sources)   # with the copy baseline
    print(format_report(scores, "test split"))
"""

from typing import Any

__all__ = ["format_report", "pinc", "rouge_l", "score_translations", "sentence_pinc"]


def __getattr__(name: str) -> Any:
    """The metrics load on first use: they import sacrebleu and rouge_score (NLTK), seconds
    that a command failing on its flags (`lmfuse.evaluate.fusion_setup`) should not pay."""
    if name in __all__:
        from lmfuse.evaluate import metrics

        return getattr(metrics, name)
    raise AttributeError(f"module 'lmfuse.evaluate' has no attribute {name!r}")
