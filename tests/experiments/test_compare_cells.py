"""experiments/compare_cells.py refuses a cell that has not written its test outputs, in one
line with the fix, and exits 2."""

from __future__ import annotations

import compare_cells


def test_a_cell_without_outputs_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    assert compare_cells.main(["--workdir", str(tmp_path), "--baseline", "f1-transformer-none",
                               "f1-transformer-deep"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cell 'f1-transformer-none' has no test outputs" in err and "run it first" in err
