"""Metrics: BLEU/chrF equal the sacrebleu CLI on Bible text, hand-computed PINC and ROUGE-L,
invariants, the copy-the-source baseline, the report layout and the error messages."""

import functools
import json
import os
import subprocess
import sys

import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfuse.errors import LmfuseError
from lmfuse.evaluate import format_report, pinc, rouge_l, score_translations, sentence_pinc

VERSES = "Ruth 1:1-1:22, Jonah 1:1-1:17"  # 39 verses


@functools.cache
def bible_triples() -> tuple[list[str], list[str], list[str]]:
    """(hypotheses, references, sources): KJV, ASV and Young's Literal, verse-aligned."""
    import pythonbible as bible

    ids = bible.convert_references_to_verse_ids(bible.get_references(VERSES))
    versions = (bible.Version.KING_JAMES, bible.Version.AMERICAN_STANDARD, bible.Version.YOUNGS)
    rows = [tuple(bible.get_verse_text(v, version=version) for version in versions) for v in ids]
    rows = [row for row in rows if all(row)]
    assert len(rows) >= 30
    return tuple(list(column) for column in zip(*rows, strict=True))


def sacrebleu_cli(tmp_path, hypotheses: list[str], references: list[str]) -> dict[str, dict]:
    """BLEU and chrF from the `sacrebleu` command line, by metric name, at 10 decimals."""
    ref_file, hyp_file = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref_file.write_text("".join(line + "\n" for line in references), encoding="utf-8")
    hyp_file.write_text("".join(line + "\n" for line in hypotheses), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "SACREBLEU_FORMAT"}  # it overrides -f
    out = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(ref_file), "-i", str(hyp_file),
         "-m", "bleu", "chrf", "-f", "json", "-w", "10"],
        capture_output=True, text=True, check=True, env=env,
    )
    return {result["name"]: result for result in json.loads(out.stdout)}


def test_bleu_and_chrf_equal_the_sacrebleu_command_line_on_bible_text(tmp_path):
    hypotheses, references, sources = bible_triples()
    scores = score_translations(hypotheses, references, sources)
    for prefix, system in (("", hypotheses), ("copy_", sources)):
        cli = sacrebleu_cli(tmp_path, system, references)
        assert scores[prefix + "bleu"] == pytest.approx(cli["BLEU"]["score"], abs=1e-9)
        assert scores[prefix + "chrf"] == pytest.approx(cli["chrF2"]["score"], abs=1e-9)
    assert scores["bleu_signature"] == cli["BLEU"]["signature"]
    assert scores["chrf_signature"] == cli["chrF2"]["signature"]
    assert scores["num_sentences"] == len(hypotheses)
    # KJV and ASV are close revisions of one text, so this is a high-overlap, non-trivial case.
    assert 50 < scores["bleu"] < 100 and 0 < scores["pinc"] < 100


def test_copy_baseline_scores_the_sources_as_the_system():
    hypotheses, references, sources = bible_triples()
    scores = score_translations(hypotheses, references, sources)
    assert scores["copy_pinc"] == 0.0
    assert scores["copy_bleu"] == sacrebleu.corpus_bleu(sources, [references]).score
    assert scores["copy_chrf"] == sacrebleu.corpus_chrf(sources, [references]).score
    assert scores["copy_rouge_l"] == rouge_l(sources, references)
    assert scores["pinc"] == pinc(sources, hypotheses)
    # Copying the references instead is perfect on every similarity metric.
    perfect = score_translations(references, references, sources)
    assert perfect["rouge_l"] == 100.0
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert json.loads(json.dumps(scores)) == scores  # written as JSON by the CLI


@pytest.mark.parametrize(
    "source, hypothesis, expected",
    [
        ("the cat sat on the mat", "the cat sat on the mat", 0.0),
        ("the cat sat on the mat", "a dog lay by one rug", 100.0),
        # 1-grams: {the, cat, lay, on, mat}, 4 in the source         -> 1 - 4/5 = 0.2
        # 2-grams: {the cat, cat lay, lay on, on the, the mat}, 3 in -> 1 - 3/5 = 0.4
        # 3-grams: {the cat lay, cat lay on, lay on the, on the mat}, 1 in -> 1 - 1/4 = 0.75
        # 4-grams: {the cat lay on, cat lay on the, lay on the mat}, 0 in  -> 1
        # (0.2 + 0.4 + 0.75 + 1) / 4 = 0.5875
        ("the cat sat on the mat", "the cat lay on the mat", 58.75),
        # Sets, not counts: 1-gram {the} is in the source (0); {the the} and {the the the} are
        # not (1, 1); there is no 4-gram, so that order is skipped: (0 + 1 + 1) / 3.
        ("the", "the the the", 200 / 3),
        # Two words: 1-grams {cat, sat} with cat shared -> 0.5; 2-gram {cat sat} new -> 1.
        ("the cat", "cat sat", 75.0),
        ("the cat sat", "cat", 0.0),  # only order 1 exists, and it is all copied
        ("the cat sat", "dog", 100.0),
        ("the cat sat", "", 0.0),  # an empty hypothesis says nothing new
        ("the cat sat", "   ", 0.0),
        ("", "the cat", 100.0),
        # Lowercased and 13a-tokenised: case and attached punctuation are not paraphrase.
        ("And he said, Go.", "and he said , go .", 0.0),
    ],
)
def test_sentence_pinc_hand_computed(source, hypothesis, expected):
    assert sentence_pinc(source, hypothesis) == pytest.approx(expected, abs=1e-12)


def test_pinc_max_order_and_corpus_mean():
    # max_order=1 keeps only the unigram term: {the, cat, lay, on, mat}, 4 shared -> 20.
    unigrams_only = sentence_pinc("the cat sat on the mat", "the cat lay on the mat", max_order=1)
    assert unigrams_only == pytest.approx(20.0)
    sources = ["the cat sat on the mat", "the cat sat", "the"]
    hypotheses = ["the cat lay on the mat", "dog", "the the the"]
    assert pinc(sources, hypotheses) == pytest.approx((58.75 + 100.0 + 200 / 3) / 3)
    with pytest.raises(LmfuseError, match="max_order must be at least 1, got 0"):
        sentence_pinc("a", "b", max_order=0)


def test_rouge_l_is_the_sentence_average_of_lcs_f_measures():
    # "a b c d" vs "a c d": LCS 3, P 3/4, R 1, F 6/7.  "x y" vs "x z": LCS 1, F 1/2.
    # Sentence average (6/7 + 1/2) / 2 = 19/28; pooling the LCS over sentences would give
    # P 4/6, R 4/5, F 8/11 instead.
    assert rouge_l(["a b c d", "x y"], ["a c d", "x z"]) == pytest.approx(100 * 19 / 28)


def test_rouge_l_tells_case_apart_like_bleu_and_chrf_unless_asked_to_lowercase():
    hypotheses, references, _ = bible_triples()
    shouted = [reference.upper() for reference in references]
    assert rouge_l(references, references) == 100.0
    # Only one-letter words such as "I" and "a" keep their case upper-cased, and numbers.
    assert rouge_l(shouted, references) < 10.0
    assert rouge_l(shouted, references, lowercase=True) == 100.0
    bleu = sacrebleu.corpus_bleu(shouted, [references]).score
    assert bleu < 10.0  # BLEU agrees: upper-casing is not a copy
    scores = score_translations(shouted, references, shouted, rouge_lowercase=True)
    assert scores["rouge_l"] == scores["copy_rouge_l"] == 100.0
    assert score_translations(shouted, references, shouted)["rouge_l"] == rouge_l(shouted, references)
    # The same words as rouge_score's own tokenizer, only case kept: lower-case text agrees.
    lowered = [reference.lower() for reference in references]
    assert rouge_l(lowered, references, lowercase=True) == 100.0
    # The words are the same, so lowercasing can only add matches.
    assert rouge_l(hypotheses, references) <= rouge_l(hypotheses, references, lowercase=True)


def test_format_report_aligns_model_and_copy_rows_under_the_headers():
    hypotheses, references, sources = bible_triples()
    scores = score_translations(hypotheses, references, sources)
    scores["beam_size"] = 4  # callers add extra keys; the report ignores them
    lines = format_report(scores, "kjv -> asv").splitlines()
    assert lines[0] == f"kjv -> asv ({len(hypotheses)} sentences)"
    header, model, copy = lines[1:4]
    assert model.startswith("model ") and copy.startswith("copy source ")
    columns = {"BLEU": "bleu", "chrF": "chrf", "ROUGE-L": "rouge_l", "PINC": "pinc"}
    for name, key in columns.items():
        end = header.index(name) + len(name)  # numbers are right-aligned under their header
        for row, prefix in ((model, ""), (copy, "copy_")):
            cell = row[:end].split()[-1]
            assert cell == f"{scores[prefix + key]:.2f}"
    assert lines[4:] == [f"BLEU signature: {scores['bleu_signature']}",
                         f"chrF signature: {scores['chrf_signature']}"]


def test_mismatched_lengths_raise_one_line_errors_naming_the_counts():
    with pytest.raises(LmfuseError, match="got 2 hypotheses, 3 references, 2 sources") as info:
        score_translations(["a", "b"], ["a", "b", "c"], ["a", "b"])
    assert "\n" not in str(info.value)
    with pytest.raises(LmfuseError, match="got 1 sources, 2 hypotheses"):
        pinc(["a"], ["a", "b"])
    with pytest.raises(LmfuseError, match="nothing to score"):
        score_translations([], [], [])


def sentences(alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789") -> st.SearchStrategy[str]:
    """Non-empty sentences of ASCII words, so every tokenizer here finds at least one word."""
    word = st.text(alphabet, min_size=1, max_size=6)
    return st.lists(word, min_size=1, max_size=12).map(" ".join)


any_text = st.text(max_size=60)  # unicode, punctuation and whitespace included


@settings(max_examples=200, deadline=None)
@given(source=any_text, hypothesis=any_text, max_order=st.integers(1, 6))
def test_pinc_is_a_percentage_and_zero_for_a_copy(source, hypothesis, max_order):
    assert 0.0 <= sentence_pinc(source, hypothesis, max_order) <= 100.0
    assert sentence_pinc(source, source, max_order) == 0.0
    assert pinc([source, hypothesis], [source, hypothesis], max_order) == 0.0


@settings(max_examples=100, deadline=None)
@given(source=sentences("abcdefghijklm"), hypothesis=sentences("nopqrstuvwxyz"))
def test_pinc_counts_new_words_not_case(source, hypothesis):
    assert sentence_pinc(source, hypothesis) == 100.0  # no word of the hypothesis is in the source
    assert sentence_pinc(source.upper(), source) == 0.0


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(sentences(), min_size=1, max_size=5))
def test_rouge_l_of_identical_text_is_100(texts):
    assert rouge_l(texts, texts) == 100.0


def test_length_ratio_is_hypothesis_over_reference_tokens_for_model_and_copy():
    references = ["and it came to pass", "he said unto them"]
    hypotheses = ["and it came", "he said unto them go away"]
    sources = ["and it was so that it came to pass", "he spake unto them"]
    scores = score_translations(hypotheses, references, sources)
    assert scores["length_ratio"] == pytest.approx((3 + 6) / (5 + 4))
    assert scores["copy_length_ratio"] == pytest.approx((9 + 4) / (5 + 4))
    assert "len" in format_report(scores, "x").splitlines()[1]
