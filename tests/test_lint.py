"""The tree passes ruff's lint and format checks, and vulture finds no dead
code in the library (rules for both in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


pytestmark = pytest.mark.skipif(
    _ruff("--version").returncode != 0 and shutil.which("ruff") is None,
    reason="ruff is not installed: pip install -e '.[test]'",
)


def test_lint_is_clean():
    done = _ruff("check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_format_is_clean():
    done = _ruff("format", "--no-cache", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr + "\nrun: ruff format ."


def test_the_library_has_no_dead_code():
    done = subprocess.run([sys.executable, "-m", "vulture"], cwd=REPO, capture_output=True, text=True)
    if "No module named vulture" in done.stderr:
        pytest.skip("vulture is not installed: pip install -e '.[test]'")
    assert done.returncode == 0, done.stdout + done.stderr
