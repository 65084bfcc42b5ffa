"""Packaging: the optimizer runs with only the core dependencies, every import is declared
in the extra of the package that makes it, and constraints.txt pins the declared ranges."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"velojax", "tasks", "meta_train", "eval", "tests", "benchmarks"}
# which extras each source tree may draw on (the core `dependencies` always)
EXTRAS_OF = {"velojax": (), "tasks": ("tasks",), "meta_train": ("train",), "eval": ("eval",), "tests": ("dev",)}
# import names whose distribution name differs, for when the distribution is not installed here
DISTRIBUTION_OF = {"tensorflow_datasets": "tensorflow-datasets", "orbax": "orbax-checkpoint", "yaml": "pyyaml"}
# heavy or optional packages that the optimizer must run without
NOT_CORE = ("flax", "orbax", "tensorflow_datasets", "tensorflow", "matplotlib", "tensorboardX", "scipy", "tqdm", "chex")

specifiers = pytest.importorskip("packaging.specifiers", reason="packaging is needed to read version ranges")
requirements = pytest.importorskip("packaging.requirements", reason="packaging is needed to read requirements")
utils = pytest.importorskip("packaging.utils", reason="packaging is needed to normalise names")


def _requirements(*extras: str) -> dict[str, object]:
    """The core requirements plus those of `extras`, self-references (velojax[x]) followed;
    keyed by normalised distribution name."""
    out = {}
    todo, seen = list(extras), set()
    for line in PYPROJECT["dependencies"]:
        req = requirements.Requirement(line)
        out[utils.canonicalize_name(req.name)] = req
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in PYPROJECT["optional-dependencies"][extra]:
            req = requirements.Requirement(line)
            if utils.canonicalize_name(req.name) == "velojax":
                todo += sorted(req.extras)
            else:
                out[utils.canonicalize_name(req.name)] = req
    return out


def _third_party_imports(tree: str) -> dict[str, list[tuple[str, bool]]]:
    """Top-level import name -> [(file:line, at module level)] for every non-stdlib,
    non-first-party import under `tree`."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted((ROOT / tree).rglob("*.py")):
        module = ast.parse(path.read_text(), str(path))
        top_level = {id(node) for node in module.body}
        for node in ast.walk(module):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    found.setdefault(top, []).append((where, id(node) in top_level))
    return found


@functools.cache
def _installed_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # scans every installed distribution: once


def _distributions(import_name: str) -> set[str]:
    installed = _installed_distributions().get(import_name, [])
    names = set(installed) | {DISTRIBUTION_OF.get(import_name, import_name)}
    return {utils.canonicalize_name(n) for n in names}


@pytest.mark.parametrize("tree", sorted(EXTRAS_OF))
def test_every_import_is_declared_in_its_packages_extra(tree):
    declared = _requirements(*EXTRAS_OF[tree])
    undeclared = {
        name: [where for where, _ in places][:3]
        for name, places in _third_party_imports(tree).items()
        if not _distributions(name) & set(declared)
    }
    assert not undeclared, f"{tree}/ imports packages its extra {EXTRAS_OF[tree]} does not declare: {undeclared}"


def test_each_extra_includes_the_extras_of_the_packages_it_imports():
    for tree, extras in EXTRAS_OF.items():
        imported = set()
        for path in (ROOT / tree).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
                elif isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
        declared = set(_requirements(*extras))
        for other in sorted(imported & set(EXTRAS_OF) - {tree, "tests"}):
            missing = set(_requirements(*EXTRAS_OF[other])) - declared
            assert not missing, f"{tree}/ imports {other}/ but its extras {extras} lack {sorted(missing)}"


def test_the_core_imports_only_the_core_dependencies():
    core = set(_requirements())
    assert core == {"jax", "jaxlib", "optax", "numpy", "msgpack"}
    module_level = {name for name, places in _third_party_imports("velojax").items() if any(top for _, top in places)}
    assert module_level <= {"jax", "optax", "numpy", "msgpack"}, module_level
    assert "jax" in module_level and "msgpack" in module_level  # the scan sees real imports


def test_constraints_pin_every_declared_dependency_inside_its_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        name = utils.canonicalize_name(match[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match[2]
    declared = _requirements(*PYPROJECT["optional-dependencies"])
    assert "velojax" not in pins
    for name, req in declared.items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier, f"pyproject.toml gives {name} no version range"
        assert pins[name] in req.specifier, f"{name}=={pins[name]} is outside the declared range {req.specifier}"
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower == [pins[name]], f"{name}: the lower bound {lower} is not the tested version {pins[name]}"
        assert any(s.operator == "<" for s in req.specifier), f"{name} has no upper bound"


def test_readme_and_ci_install_the_tested_set():
    readme = (ROOT / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines() if "pip install" in line and "apt-get" in line]
    assert len(commands) == 2, commands
    assert all("pip install -c constraints.txt -e " in c for c in commands), commands
    assert commands[1].endswith('-e ".[dev]" && python -m pytest')
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == commands[1], "the last line of .ci/run must be exactly the README's test command"


def test_package_data_ships_weights_types_and_licence():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    assert data["*"] == ["py.typed"] and "*.msgpack" in data["velojax.weights"]
    for package in ("velojax", "tasks", "meta_train", "eval"):
        assert (ROOT / package / "py.typed").is_file(), f"{package}/py.typed is missing"
    assert PYPROJECT["license"] == "Apache-2.0" and "LICENSE" in PYPROJECT["license-files"]
    for name in PYPROJECT["license-files"]:
        assert (ROOT / name).is_file(), f"license-files names {name}, which does not exist"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


_CORE_ONLY_RUN = """
import importlib.abc, json, sys, tempfile
BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked: the optimizer must not need it", name=name)
        return None

sys.meta_path.insert(0, Block())
try:
    import flax
    blocks = False
except ModuleNotFoundError:
    blocks = True
import time; t0 = time.time()
import jax, jax.numpy as jnp, numpy as np, optax
from velojax import checkpoint, optimizer, shipped

tx = optimizer.velo(10, weights="small_v1")
params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3)}


@jax.jit  # one compilation instead of many op-by-op ones
def train_step(params, state):
    loss, grads = jax.value_and_grad(lambda p: jnp.sum((p["w"] + p["b"] - 0.5) ** 2))(params)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state, loss


state, losses = tx.init(params), []
for step in range(2):
    params, state, loss = train_step(params, state)
    losses.append(float(loss))
meta, _ = shipped.load_shipped("small_v1")
with tempfile.TemporaryDirectory() as tmp:
    path = checkpoint.save_weights(f"{tmp}/params", meta, gen_id="core", step=2)
    back = checkpoint.load_weights(path)
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(back)))
print(json.dumps({
    "losses": losses, "finite": all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params)),
    "moved": float(jnp.max(jnp.abs(params["w"] - jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)))),
    "round_trip_exact": same and jax.tree.structure(meta) == jax.tree.structure(back),
    "blocks": blocks, "seconds": time.time() - t0,
    "loaded": sorted({m.split(".")[0] for m in sys.modules} & BLOCKED),
}))
"""


def test_the_optimizer_runs_without_any_optional_package():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CORE_ONLY_RUN), ",".join(NOT_CORE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["blocks"] and out["loaded"] == [], out
    assert out["finite"] and out["round_trip_exact"]
    assert all(0 < loss < 1e3 for loss in out["losses"]), out["losses"]
    assert out["moved"] > 0, "two VeLO steps left the parameters unchanged"
