"""`lmfuse --version` names the installed package's version."""

from __future__ import annotations

import subprocess
import sys

import lmfuse


def test_version_prints_the_package_version_and_exits_0():
    result = subprocess.run([sys.executable, "-m", "lmfuse.cli", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"lmfuse {lmfuse.__version__}"
