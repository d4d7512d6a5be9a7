"""experiments/compare_cells.py: any cells against one of them, and every cell of a method
against its control cell (same fraction, backbone and seed), with a verdict over seeds by the
report's rule; outputs that are not the scored ones are never compared, and bad input is
refused in one line."""

from __future__ import annotations

import random
from pathlib import Path

import compare_cells
import pytest
import sacrebleu
from lib.runner import OK, CellRecord, Ledger
from lib.scoring import EvalSet, compare
from synthetic_outputs import edited, sentences

NAME = "test.sample60.seed0"


def bleu(lines: list[str], references: list[str]) -> float:
    return sacrebleu.corpus_bleu(lines, [references]).score


@pytest.fixture
def study(tmp_path: Path):
    """Seeds 0-2 at 5%: the method's outputs much closer to the references than its control's;
    seed 3 has no control cell."""
    rng = random.Random(0)
    references = sentences(rng, 60)
    sources = edited(references, rng, 0.5)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / f"{NAME}.src").write_text("\n".join(sources) + "\n")
    (tmp_path / "eval" / f"{NAME}.ref").write_text("\n".join(references) + "\n")
    test = EvalSet("test", 60, 0, (), tuple(sources), tuple(references))
    ledger = Ledger(tmp_path)
    ledger.cells.mkdir()
    outputs = {}
    for seed in range(4):
        for method, rate in (("deep", 0.1), ("deep_no_lm", 0.45)):
            if method == "deep_no_lm" and seed == 3:
                continue
            key = f"f5-transformer-{method}-s{seed}"
            outputs[key] = edited(references, rng, rate)
            (ledger.cells / f"{key}.test.hyp").write_text("\n".join(outputs[key]) + "\n")
            values = {"confidence": compare(outputs[key], outputs[key], test, 0),
                      "eval_sets": {"test": {"split": "test", "sample": 60, "seed": 0}},
                      "test": {"bleu": bleu(outputs[key], references)}}
            labels = {"fraction": 5.0, "backbone": "transformer", "method": method, "seed": seed}
            ledger.write(CellRecord(key, labels, OK, 1.0, values))
    return tmp_path, ledger, references, outputs


def test_each_method_cell_is_compared_with_its_own_control(study):
    workdir, _, references, outputs = study
    rows = {row["key"]: row for row in compare_cells.compare_with_control(workdir, "deep",
                                                                         "deep_no_lm")}
    assert sorted(rows) == [f"f5-transformer-deep-s{seed}" for seed in range(4)]
    for seed in range(3):
        row = rows[f"f5-transformer-deep-s{seed}"]
        assert row["control_key"] == f"f5-transformer-deep_no_lm-s{seed}"
        assert row["method"]["bleu"] == pytest.approx(
            bleu(outputs[row["key"]], references))
        assert row["control"]["bleu"] == pytest.approx(
            bleu(outputs[row["control_key"]], references))
        assert row["method"]["bleu"] > row["control"]["bleu"] and row["method"]["bleu_p"] < 0.05
    assert rows["f5-transformer-deep-s3"] == {
        "key": "f5-transformer-deep-s3", "control_key": None, "why": "its control has not run",
        "labels": {"fraction": 5.0, "backbone": "transformer", "method": "deep", "seed": 3}}


def test_the_table_calls_a_gain_over_the_compared_seeds_and_lists_the_rest(study, capsys):
    workdir, _, _, _ = study
    output = workdir / "controls.md"
    assert compare_cells.main(["--workdir", str(workdir), "--method", "deep", "--control",
                               "deep_no_lm", "--output", str(output)]) == 0
    text = output.read_text()
    assert text.splitlines()[0] == "# deep against its control, deep_no_lm"
    assert "--method deep --control deep_no_lm" in text
    assert "| 5 | transformer | 3 | not compared: its control has not run |" in text
    assert "| 5 | transformer | 3 | " in text.split("Over seeds")[1]
    assert text.split("Over seeds")[1].rstrip().endswith("| gain |")
    assert capsys.readouterr().out.strip() in text


def test_the_pairs_can_be_limited_to_a_slice(study, capsys):
    """--fractions / --backbones keep the method cells with those labels, and their verdict."""
    workdir, ledger, references, _ = study
    outputs = edited(references, random.Random(1), 0.1)
    (ledger.cells / "f1-rnn-deep.test.hyp").write_text("\n".join(outputs) + "\n")
    values = {"eval_sets": {"test": {"split": "test", "sample": 60, "seed": 0}},
              "test": {"bleu": bleu(outputs, references)}}
    ledger.write(CellRecord("f1-rnn-deep", {"fraction": 1.0, "backbone": "rnn", "method": "deep",
                                           "seed": 0}, OK, 1.0, values))
    every = compare_cells.compare_with_control(workdir, "deep", "deep_no_lm")
    assert len(every) == 5
    for where, keys in (({"fraction": [5.0]}, 4), ({"backbone": ["rnn"]}, 1),
                        ({"fraction": [5.0], "backbone": ["rnn"]}, 0),
                        ({"fraction": [1.0, 5.0], "backbone": []}, 5)):
        assert len(compare_cells.compare_with_control(workdir, "deep", "deep_no_lm", where)) == keys
    assert compare_cells.main(["--workdir", str(workdir), "--method", "deep", "--control",
                               "deep_no_lm", "--fractions", "5", "--backbones", "transformer"]) == 0
    out = capsys.readouterr().out.rstrip()
    assert "| 1 | rnn |" not in out
    assert out.splitlines()[-1].startswith("| 5 | transformer | 3 |") and out.endswith("| gain |")
    with pytest.raises(SystemExit):
        compare_cells.main(["--workdir", str(workdir), "--baseline", "a", "b", "--fractions", "5"])


def test_outputs_that_do_not_give_the_stored_bleu_are_not_compared(study):
    workdir, ledger, references, outputs = study
    key = "f5-transformer-deep-s1"  # re-made from its commands, say, and not reproduced
    (ledger.cells / f"{key}.test.hyp").write_text("\n".join(references) + "\n")
    rows = {row["key"]: row for row in compare_cells.compare_with_control(workdir, "deep",
                                                                         "deep_no_lm")}
    assert rows[key]["why"] == f"{key}'s kept outputs do not give its stored test BLEU"
    lines = compare_cells.control_table(list(rows.values()), "deep", "deep_no_lm")
    over_seeds = lines[lines.index("| fraction % | backbone | seeds | Δ mean | verdict |") + 2]
    assert over_seeds.startswith("| 5 | transformer | 2 |")


def test_a_pair_of_cells_is_compared_by_key(study, capsys):
    workdir, _, _, _ = study
    assert compare_cells.main(["--workdir", str(workdir), "--baseline",
                               "f5-transformer-deep_no_lm-s0", "f5-transformer-deep-s0"]) == 0
    out = capsys.readouterr().out
    assert "| f5-transformer-deep-s0 |" in out and "| f5-transformer-deep_no_lm-s0 |" in out


def test_a_cell_without_outputs_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    assert compare_cells.main(["--workdir", str(tmp_path), "--baseline", "f1-transformer-none",
                               "f1-transformer-deep"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cell 'f1-transformer-none' has no test outputs" in err and "run it first" in err


@pytest.mark.parametrize("args", [["--method", "deep"], ["--baseline", "a", "--control", "b"]])
def test_half_a_mode_is_a_usage_error(tmp_path, args):
    with pytest.raises(SystemExit) as stop:
        compare_cells.main(["--workdir", str(tmp_path), *args])
    assert stop.value.code == 2
