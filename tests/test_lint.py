"""The code passes the project's ruff and mypy configurations (pyproject.toml)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          cwd=ROOT)


def test_ruff_finds_nothing():
    run = _run("ruff", "check", str(ROOT))
    assert run.returncode == 0, run.stdout + run.stderr


def test_mypy_finds_nothing_in_daskseg():
    run = _run("mypy", "daskseg")
    assert run.returncode == 0, run.stdout + run.stderr
