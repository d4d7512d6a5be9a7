"""Encoder-decoders end to end through the CLI, as a user runs them: train on real KJV -> ASV
verse pairs, evaluate (BLEU, chrF, ROUGE-L, PINC, copy baseline, perplexity), translate files
with awkward lines, and get one-line errors for mistakes."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, tiny_lm_overrides, tiny_s2s_overrides

BACKBONES = ("s2s_transformer", "s2s_rnn")


@pytest.fixture(scope="module", params=BACKBONES)
def s2s_workdir(request, pair_corpus, tmp_path_factory):
    kind = request.param
    workdir = tmp_path_factory.mktemp(kind)
    config = "configs/s2s_transformer.py:tiny" if kind == "s2s_transformer" else "configs/s2s_rnn.py:tiny"
    result = run_cli(["train", "--config", config, "--workdir", str(workdir), "--no_progress",
                      *tiny_s2s_overrides(pair_corpus)])
    assert result.returncode == 0, result.stderr
    return workdir


def test_eval_reports_translation_metrics_with_the_copy_baseline(s2s_workdir):
    result = run_cli(["eval", "--workdir", str(s2s_workdir), "--split", "test", "--beam", "2"])
    assert result.returncode == 0, result.stderr
    report = json.loads((s2s_workdir / "eval_test.json").read_text())
    for key in ("bleu", "chrf", "rouge_l", "pinc", "copy_bleu", "copy_pinc", "perplexity",
                "bleu_signature"):
        assert key in report
    assert report["copy_pinc"] == 0.0
    # KJV -> ASV is nearly a copy task: copying the source scores far above an untrained model.
    assert report["copy_bleu"] > 60 > report["bleu"]
    assert report["num_sentences"] == 48  # Jonah: 48 verses
    hypotheses = (s2s_workdir / "eval_test_hypotheses.txt").read_text().split("\n")[:-1]
    assert len(hypotheses) == 48
    assert "copy source" in result.stdout and "BLEU" in result.stdout


def test_eval_on_a_seeded_sample_writes_its_ids_and_sacrebleu_intervals(s2s_workdir):
    args = ["eval", "--workdir", str(s2s_workdir), "--split", "test", "--beam", "1",
            "--sample", "20", "--seed", "3"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr
    report = json.loads((s2s_workdir / "eval_test.json").read_text())
    ids = (s2s_workdir / "eval_test_ids.txt").read_text().split("\n")[:-1]
    assert report["num_sentences"] == len(ids) == 20 and len(set(ids)) == 20
    assert all(i.startswith("line ") for i in ids) and ids != [f"line {n}" for n in range(1, 21)]
    confidence = report["confidence"]
    assert confidence["seed"] == 3 and confidence["copy"]["bleu_p"] is None
    assert abs(confidence["system"]["bleu"] - report["bleu"]) < 1e-6
    assert 0 <= confidence["system"]["bleu_p"] <= 1 and confidence["system"]["bleu_ci"] >= 0
    assert "paired bootstrap" in result.stdout
    assert run_cli(args).returncode == 0  # the same seed: the same sample
    assert (s2s_workdir / "eval_test_ids.txt").read_text().split("\n")[:-1] == ids
    bad = run_cli(["eval", "--workdir", str(s2s_workdir), "--split", "test", "--sample", "-1"])
    assert bad.returncode == 2 and "must be >= 0" in bad.stderr


def test_translate_a_sample_with_fusion_reports_intervals_against_none_and_copy(s2s_workdir):
    """ILME with μ = 0 is the model itself: its BLEU equals the plain decoding's, and both
    comparisons are sacrebleu's paired bootstrap on the same seeded sample."""
    result = run_cli(["translate", "--workdir", str(s2s_workdir), "--split", "test", "--beam", "2",
                      "--sample", "10", "--seed", "1", "--fusion", "ilme", "--ilm_weight", "0"])
    assert result.returncode == 0, result.stderr
    report = json.loads((s2s_workdir / "translate_test.json").read_text())
    ids = (s2s_workdir / "translate_test_ids.txt").read_text().split("\n")[:-1]
    assert len(ids) == report["num_sentences"] == 10
    confidence = report["confidence"]
    assert set(confidence) == {"none", "copy"}
    assert confidence["none"]["system"]["bleu"] == confidence["none"]["none"]["bleu"]
    assert abs(confidence["copy"]["system"]["bleu"] - report["bleu"]) < 1e-6
    assert "paired bootstrap vs none" in result.stdout
    some_file = str(s2s_workdir / "translate_test_ids.txt")
    wrong = run_cli(["translate", "--workdir", str(s2s_workdir), "--input", some_file,
                     "--sample", "3"])
    assert wrong.returncode == 2 and "use it with --split" in wrong.stderr


def test_translate_keeps_one_output_line_per_input_line(s2s_workdir, tmp_path):
    lines = [
        "In the beginning God created the heaven and the earth.",
        "",  # empty: empty output, no decoding
        "   ",
        " ".join(["and the LORD spake unto Moses"] * 40),  # far beyond 48 tokens: truncated
        "Jonah 🐋 said: 你好, ¿qué? ▁x\tend",  # outside the vocabulary: byte fallback
        "And Jonah rose up.",
    ]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    result = run_cli(["translate", "--workdir", str(s2s_workdir), "--input", str(source),
                      "--output", str(out), "--beam", "2", "--max_len", "12"])
    assert result.returncode == 0, result.stderr
    outputs = out.read_text(encoding="utf-8").split("\n")
    assert outputs[-1] == "" and len(outputs) - 1 == len(lines)
    assert outputs[1] == outputs[2] == ""
    assert all(outputs[i] for i in (0, 3, 4, 5))  # a trained-a-little model still emits words
    assert "1 source line(s)" in result.stderr and "truncated" in result.stderr
    again = run_cli(["translate", "--workdir", str(s2s_workdir), "--input", str(source),
                     "--beam", "2", "--max_len", "12"])
    assert again.stdout == out.read_text(encoding="utf-8")  # deterministic, stdout by default


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fusion", "deepish", "--lm", "x"], "unknown fusion method 'deepish'"),
        (["--fusion", "shallow"], "needs --lm"),
        (["--fusion", "rescore"], "needs --lm"),
        (["--fusion", "density_ratio", "--lm", "x", "--source_lm", "y"], "needs --source_lm_weight"),
        (["--fusion", "ilme"], "needs --ilm_weight"),
        (["--fusion", "rescore", "--lm", "x", "--source_lm", "y"], "--source_lm is for"),
        (["--lm", "x"], "--lm needs --fusion"),
        (["--fusion", "shallow", "--lm", "x", "--ilm_weight", "0.2"], "--ilm_weight is for"),
        (["--fusion", "shallow", "--lm", "/nonexistent/lm"], "no checkpoints in workdir"),
    ],
)
def test_fusion_flag_mistakes_are_one_line_errors(s2s_workdir, flags, message):
    result = run_cli(["translate", "--workdir", str(s2s_workdir), "--split", "test", *flags])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr


@pytest.fixture(scope="module")
def language_model(text_corpus, tmp_path_factory):
    """A 2-step LM on monolingual text: its own tokenizer, not the encoder-decoders'."""
    lm = tmp_path_factory.mktemp("lm")
    trained = run_cli(["train", "--config", "configs/lm_transformer.py:tiny", "--workdir", str(lm),
                       "--no_progress", *tiny_lm_overrides(text_corpus, **{"train.steps": 2,
                                                                          "train.checkpoint_every": 2})])
    assert trained.returncode == 0, trained.stderr
    return lm


@pytest.mark.parametrize("method", ["shallow", "rescore"])
def test_an_lm_of_another_vocabulary_is_refused(s2s_workdir, language_model, method):
    result = run_cli(["translate", "--workdir", str(s2s_workdir), "--split", "test",
                      "--fusion", method, "--lm", str(language_model)])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "vocab mismatch" in result.stderr


def test_translate_refuses_a_language_model_workdir(language_model):
    result = run_cli(["translate", "--workdir", str(language_model), "--split", "test"])
    assert result.returncode == 2
    assert "translate needs an encoder-decoder" in result.stderr


@pytest.mark.parametrize("mu, reward, monotone", [(0.0, 0.0, True), (0.3, 0.0, False),
                                                  (0.0, 0.5, False)])
def test_a_zero_weight_removes_its_term_from_beam_ranking_too(s2s_workdir, mu, reward, monotone):
    """ILME with μ = 0 and no reward scores tokens <= 0: beam search ranks it as the plain
    model (GNMT), not by the raw sum that positive scores need (lmfuse/decode/beam.py)."""
    from flax import linen as nn

    from lmfuse.decode.beam import ranking_alpha
    from lmfuse.evaluate.fusion_setup import FusionFlags, build_decode_fusion
    from lmfuse.train.workdir import load_model

    model, params, _ = load_model(s2s_workdir)
    flags = FusionFlags("ilme", ilm_weight=mu, length_reward=reward)
    decoder, _ = build_decode_fusion(model, nn.meta.unbox(params), flags, 8)
    assert decoder.monotone is monotone
    assert ranking_alpha(decoder, 0.6) == (0.6 if monotone else 0.0)
