"""``python -m pipeline --help`` stays fast: cli.py is wiring only, so no heavy library is imported before a command
runs its stage (each command imports its modules inside its body)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

HEAVY = {"torch", "transformers", "spacy", "pyarrow"}  # seconds of imports between them


def imported_packages(*args: str, cwd: Path = REPO_ROOT, stdin: bytes | None = None) -> tuple[set[str], bytes]:
    """Top-level packages imported by ``python -m pipeline ARGS`` (from ``-X importtime``), and its stdout."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr[-3000:]
    modules = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return {module.split(".")[0] for module in modules}, result.stdout


@pytest.mark.parametrize("args", [["--help"], ["bench", "score", "--help"]])
def test_help_imports_no_heavy_library(args):
    packages, stdout = imported_packages(*args)
    assert b"Usage" in stdout
    assert "pipeline" in packages and "typer" in packages  # the parse worked
    assert not packages & HEAVY
