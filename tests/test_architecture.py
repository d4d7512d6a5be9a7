"""The package's shape holds: dependencies point one way (the import-linter contracts in
setup.cfg), no module outgrows a reader, and the training loop reads top to bottom."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES = 400
MAX_LOOP_LINES = 200


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root` with the repository's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "setup.cfg"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True)


def test_import_contracts_are_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_model_importing_the_trainer_breaks_the_contracts(tmp_path):
    """The contracts can fail: one wrong arrow in a copy of the package is reported."""
    shutil.copytree(REPO / "lmfuse", tmp_path / "lmfuse",
                    ignore=shutil.ignore_patterns("__pycache__"))
    layers = tmp_path / "lmfuse" / "models" / "layers.py"
    layers.write_text(layers.read_text() + "\nimport lmfuse.train.trainer  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "lmfuse.models.layers -> lmfuse.train.trainer" in result.stdout


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "lmfuse").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_training_loop_fits_on_a_few_screens():
    assert len((REPO / "lmfuse" / "train" / "loop.py").read_text().splitlines()) <= MAX_LOOP_LINES
