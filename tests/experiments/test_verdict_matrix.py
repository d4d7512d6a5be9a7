"""experiments/verdict_matrix.py: one table of every method against its own `none` per
backbone and fraction, merged from several study ledgers (the first that has a seed's cell
wins, later ones fill gaps and are marked), the verdict by the report's rule; ledgers scored
on other samples, or files that are not ledgers, are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import verdict_matrix

SETTINGS = {"sample_seed": 0, "test_sample": 1000, "val_sample": 500}


def cell(fraction: float, backbone: str, method: str, seed: int, bleu: float,
         none_bleu: float, p: float | None = 0.001) -> dict:
    against = {"system": {"bleu": bleu, "bleu_p": p}, "baseline": {"bleu": none_bleu}}
    if p is None:
        against["identical"] = True
    return {"key": f"f{fraction:g}-{backbone}-{method}-s{seed}", "status": "ok",
            "labels": {"fraction": fraction, "backbone": backbone, "method": method,
                       "seed": seed},
            "values": {"test": {"bleu": bleu},
                       "confidence": {"none": against,
                                      "copy": {"baseline": {"bleu": 29.88}}}}}


def write_ledger(path: Path, cells: list[dict], settings: dict = SETTINGS) -> Path:
    path.write_text(json.dumps({"identity": {"settings": settings}, "files": {},
                                "cells": {c["key"]: c for c in cells}}))
    return path


def rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {r[0]: r[1:] for r in table}  # the header row under 'method'


@pytest.fixture
def ledgers(tmp_path: Path) -> tuple[Path, Path]:
    main = [cell(5, "rnn", "none", s, 20.0 + s, 20.0 + s, None) for s in (0, 1, 2)]
    main += [cell(5, "rnn", "shallow", s, 21.0 + s, 20.0 + s) for s in (0, 1)]
    main += [cell(5, "rnn", "cold", s, 19.0 + s, 20.0 + s) for s in (0, 1, 2)]
    main += [cell(5, "rnn", "ilme", 0, 23.0, 20.0), cell(5, "rnn", "ilme", 1, 21.5, 21.0, 0.2)]
    main += [cell(100, "rnn", "none", 0, 40.0, 40.0, None),
             cell(100, "rnn", "shallow", 0, 40.0, 40.0, None)]
    # the sub-study: its own seed-1 shallow cell must not replace the main one; seed 2 fills
    sub = [cell(5, "rnn", "shallow", 1, 30.0, 21.5), cell(5, "rnn", "shallow", 2, 24.5, 22.0)]
    return (write_ledger(tmp_path / "main.json", main),
            write_ledger(tmp_path / "sub.json", sub))


def test_first_ledger_wins_later_ones_fill_and_are_marked(ledgers, capsys):
    assert verdict_matrix.main([str(p) for p in ledgers]) == 0
    table = rows(capsys.readouterr().out)
    assert list(table["method"]) == ["rnn 5%", "rnn 100%"]
    # seeds 0, 1 from the main ledger (+1, +1), seed 2 from the sub-study (+2.5)
    assert table["shallow"][0] == "+1.50 **gain** (2 + 1†)"
    assert table["none (test BLEU)"] == ["21.00 (3)", "40.00 (1)"]


def test_verdicts_follow_the_reports_rule(ledgers, capsys):
    verdict_matrix.main([str(p) for p in ledgers])
    table = rows(capsys.readouterr().out)
    assert table["cold"][0] == "-1.00 **loss** (3)"
    assert table["ilme"][0] == "+1.75 no verdict (2)"  # seed 1 is not significant
    assert table["shallow"][1] == "+0.00 (1)"  # one seed: its mean, no word
    # density ratio with all the pairs is N/A by construction; a cell never run is a dash
    assert table["density_ratio"] == ["–", "N/A"]
    assert "lm_prior" not in table  # no entry in any column: no row


def test_write_replaces_its_block_and_keeps_the_rest(ledgers, tmp_path):
    page = tmp_path / "findings.md"
    page.write_text("# Findings\n\nIntro.\n\n## The answer so far\n\nReading.\n\n## Next\n\nMore.\n")
    args = [*map(str, ledgers), "--write", str(page)]
    assert verdict_matrix.main(args) == 0
    first = page.read_text()
    assert first.index("Reading.") < first.index("| shallow |") < first.index("## Next")
    assert verdict_matrix.main(args) == 0
    assert page.read_text() == first  # a rerun rewrites the same block, nothing more
    assert first.count("<!-- verdict_matrix:begin fusion_study -->") == 1


def test_ledgers_of_other_samples_are_refused(ledgers, tmp_path, capsys):
    other = write_ledger(tmp_path / "other.json", [cell(5, "rnn", "none", 0, 20.0, 20.0, None)],
                         {**SETTINGS, "test_sample": 500})
    assert verdict_matrix.main([str(ledgers[0]), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the ledgers were scored with other evaluation settings")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", ["not json", "[]", '{"cells": {}}'])
def test_a_file_that_is_not_a_ledger_gets_one_line(tmp_path, capsys, content):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    assert verdict_matrix.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fusion_study_ledger.json" in err


def test_the_committed_findings_hold_the_table_the_ledgers_give(tmp_path):
    """The findings page's table is what the committed ledgers give today."""
    root = Path(__file__).resolve().parents[2]
    findings = root / "experiments/results/fusion_study_findings.md"
    text = findings.read_text()
    begin = "<!-- verdict_matrix:begin fusion_study -->"
    block = text.split(begin, 1)[1].split("<!-- verdict_matrix:end", 1)[0].strip("\n")
    command = [line for line in block.splitlines() if "verdict_matrix.py" in line]
    assert command, "the block names the command that wrote it"
    paths = [root / p for p in block.split("verdict_matrix.py", 1)[1].replace("\\", " ").split()
             if p.endswith(".json")]
    ledgers = [verdict_matrix.read_ledger(p) for p in paths]
    cells = verdict_matrix.merged_cells(ledgers)
    settings = ledgers[0]["identity"]["settings"]
    assert block == verdict_matrix.block([p.relative_to(root) for p in paths], cells,
                                         settings).strip("\n")
