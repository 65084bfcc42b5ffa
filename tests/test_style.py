"""The code passes the project's ruff lint and format configuration (pyproject.toml)."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO

PATHS = ["velojax", "tasks", "meta_train", "eval", "tests", "benchmarks"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([ruff, *command, *PATHS], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
