"""A fused cell is compared with the plain model its `none` row scored: where that model was
trained again and came out otherwise (another processor, changed code), the cell is refused in
one line instead of being compared with a model no row shows."""

from __future__ import annotations

import pytest
from lib.runner import FAILED, OK, CellRecord, Ledger, RunContext
from lib.runs import TrainRun
from lib.scoring import check_reproduced

from lmfuse.errors import LmfuseError

NONE_KEY = "f5-transformer-none"


@pytest.fixture
def setup(tmp_path):
    run = TrainRun("configs/s2s_transformer.py:tiny", str(tmp_path / "s2s_transformer_f5"))
    ledger = Ledger(tmp_path)
    ledger.cells.mkdir()

    def context(step: int, bleu: float) -> RunContext:
        # The retrained model's checkpoint choice and validation scores, as the study caches them.
        points = [{"step": s, "val": {"bleu": bleu if s == step else 0.0}} for s in (150, 350)]
        memo = {f"selection:{run.workdir}": {"step": step, "points": points}}
        return RunContext(tmp_path, "cpu", {}, (), memo=memo)

    def row(status: str = OK, step: int = 350, bleu: float = 17.3141) -> None:
        ledger.write(CellRecord(NONE_KEY, {"method": "none"}, status, 1.0,
                                {"step": step, "val": {"bleu": bleu}} if status == OK else {}))

    return run, context, row


def test_the_same_model_passes(setup):
    run, context, row = setup
    row()
    check_reproduced(context(350, 17.31412), None, run, NONE_KEY)


def test_without_a_none_row_the_model_is_the_cells_own(setup):
    run, context, row = setup
    check_reproduced(context(150, 8.37), None, run, NONE_KEY)  # no row at all
    row(status=FAILED)
    check_reproduced(context(150, 8.37), None, run, NONE_KEY)


@pytest.mark.parametrize(("step", "bleu"), [(150, 17.3141), (350, 17.71)])
def test_another_checkpoint_or_another_score_is_refused_in_one_line(setup, step, bleu):
    run, context, row = setup
    row()
    with pytest.raises(LmfuseError) as refused:
        check_reproduced(context(step, bleu), None, run, NONE_KEY)
    message = str(refused.value)
    assert "\n" not in message
    assert (f"s2s_transformer_f5, trained again here, chooses step {step} with validation BLEU "
            f"{bleu:.2f}, where its row {NONE_KEY} has step 350 and 17.31") in message
    assert "new --workdir and --results" in message
