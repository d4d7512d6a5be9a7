"""Redrawing a study's intervals from the outputs its cells kept: a seeded draw comes back to
the digit, an unseeded one is replaced by the seeded one, and nothing is redrawn on outputs
that are not the ones the record scored."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import redraw_confidence
from lib.runner import OK, CellRecord, Ledger
from lib.scoring import EvalSet, compare
from synthetic_outputs import edited, sentences

NAME = "test.sample40.seed0"


@pytest.fixture
def study(tmp_path: Path):
    rng = random.Random(0)
    references = sentences(rng, 40)
    sources = edited(references, rng, 0.5)
    outputs = {"none": edited(references, rng, 0.4), "shallow": edited(references, rng, 0.3),
               "deep": edited(references, rng, 0.35)}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / f"{NAME}.src").write_text("\n".join(sources) + "\n")
    (tmp_path / "eval" / f"{NAME}.ref").write_text("\n".join(references) + "\n")
    test = EvalSet("test", 40, 0, (), tuple(sources), tuple(references))
    ledger = Ledger(tmp_path)
    for method, hypotheses in outputs.items():
        (ledger.cells).mkdir(exist_ok=True)
        (ledger.cells / f"f5-{method}.test.hyp").write_text("\n".join(hypotheses) + "\n")
        values = {"confidence": compare(hypotheses, outputs["none"], test, 0),
                  "eval_sets": {"test": {"split": "test", "sample": 40, "seed": 0}}}
        ledger.write(CellRecord(f"f5-{method}", {"fraction": 5, "method": method}, OK, 1.0,
                                values))
    # A reproducing command's scores sit beside the records; they are not records.
    (ledger.cells / "f5-shallow.test.json").write_text(json.dumps({"bleu": 1.0}))
    return tmp_path, ledger, test, outputs


def test_a_seeded_draw_comes_back_to_the_digit(study, capsys):
    workdir, ledger, _, _ = study
    stored = {key: ledger.read(key).values for key in ("f5-none", "f5-shallow", "f5-deep")}
    assert redraw_confidence.main(["--workdir", str(workdir), "--write"]) == 0
    assert "0 of 3 cells changed" in capsys.readouterr().out
    assert {key: ledger.read(key).values for key in stored} == stored


def test_an_unseeded_draw_is_replaced_by_the_seeded_one(study, capsys):
    workdir, ledger, test, outputs = study
    record = ledger.read("f5-shallow")
    unseeded = json.loads(json.dumps(record.values["confidence"]))
    unseeded["none"]["system"]["bleu_ci"] += 0.07
    unseeded["copy"]["system"]["bleu_p"] = 0.052
    ledger.write(dataclasses.replace(record, values={**record.values, "confidence": unseeded}))

    assert redraw_confidence.main(["--workdir", str(workdir)]) == 0  # compares only
    assert ledger.read("f5-shallow").values["confidence"] == unseeded
    assert redraw_confidence.main(["--workdir", str(workdir), "--write"]) == 0
    assert "1 of 3 cells changed" in capsys.readouterr().out
    assert ledger.read("f5-shallow").values["confidence"] == compare(
        outputs["shallow"], outputs["none"], test, 0)


def test_outputs_that_are_not_the_scored_ones_are_never_redrawn(study, capsys):
    workdir, ledger, _, outputs = study
    record = ledger.read("f5-deep")
    changed = json.loads(json.dumps(record.values["confidence"]))
    changed["none"]["system"]["bleu_ci"] += 0.07
    ledger.write(dataclasses.replace(record, values={**record.values, "confidence": changed}))
    (ledger.cells / "f5-deep.test.hyp").write_text("\n".join(outputs["shallow"]) + "\n")
    (ledger.cells / "f5-shallow.test.hyp").unlink()

    assert redraw_confidence.main(["--workdir", str(workdir), "--write"]) == 0
    out = capsys.readouterr().out
    assert "kept: its kept outputs do not give its stored BLEU" in out
    assert "kept: its test outputs were not kept" in out
    assert ledger.read("f5-deep").values["confidence"] == changed


def test_a_workdir_without_results_is_one_line_and_exit_2(tmp_path: Path, capsys):
    assert redraw_confidence.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no finished cells" in err
