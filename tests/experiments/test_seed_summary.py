"""The report's "Over seeds" table: a method's verdict against `none` is called only across
seeds, so a cell run on one seed shows its mean but no gain or loss, however large."""

from __future__ import annotations

import types

from lib.runner import OK, CellRecord
from lib.tables import seed_summary_lines

from lmfuse.evaluate import protocol


def record(method: str, seed: int, bleu: float, none_bleu: float, p: float) -> CellRecord:
    confidence = {"system": {"bleu": bleu, "bleu_p": p}, "baseline": {"bleu": none_bleu}}
    return CellRecord(key=f"{method}-s{seed}", labels={"method": method, "seed": seed},
                      status=OK, seconds=1.0,
                      values={"test": {"bleu": bleu}, "confidence": {"none": confidence}})


def summary(records: list[CellRecord]) -> dict[str, list[str]]:
    lines = seed_summary_lines(types.SimpleNamespace(records=records), ("method",))
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ")][1:]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


NONE = {0: 17.31, 1: 17.70, 2: 17.82}


def test_a_method_run_on_one_seed_gets_no_verdict_however_large_its_gain():
    records = [record("none", s, b, b, 1.0) for s, b in NONE.items()]
    records += [record("shallow", s, NONE[s] + 1.2, NONE[s], 0.001) for s in NONE]
    records.append(record("ilme", 0, NONE[0] + 2.84, NONE[0], 0.001))
    rows = summary(records)
    assert rows["shallow"][0] == "3" and rows["shallow"][-1] == "gain"
    assert rows["shallow"][1] == "18.81 ± 0.27"
    assert rows["ilme"][0] == "1"
    assert rows["ilme"][1] == "20.15" and rows["ilme"][2] == "+2.84"
    assert rows["ilme"][-1] == protocol.ONE_SEED


def test_two_seeds_are_enough_to_call_a_loss():
    records = [record("none", s, NONE[s], NONE[s], 1.0) for s in (0, 1)]
    records += [record("simple_postnorm", s, NONE[s] - 0.9, NONE[s], 0.003) for s in (0, 1)]
    assert summary(records)["simple_postnorm"][-1] == "loss"
