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


# Which of our packages each package may import (docs/architecture.md): dependencies point
# one way, core ← tasks ← meta_train, eval; eval reads θ from meta_train's workdirs.
ALLOWED = {
    "velojax": {"velojax"},
    "tasks": {"velojax", "tasks"},
    "meta_train": {"velojax", "tasks", "meta_train"},
    "eval": {"velojax", "tasks", "meta_train", "eval"},
}


def _imported_packages(path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package):
    wrong = {
        str(path.relative_to(REPO)): sorted(bad)
        for path in sorted((REPO / package).rglob("*.py"))
        if (bad := _imported_packages(path) - ALLOWED[package])
    }
    assert not wrong, f"{package} must not import {wrong}"
