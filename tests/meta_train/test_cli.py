"""`python -m meta_train export` through its command line: the θ written, the line it prints,
one-line errors (exit 2) and its help."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from meta_train import workdir
from meta_train.__main__ import main as meta_train_main
from tests.conftest import REPO
from tests.meta_train.helpers import subprocess_env
from velojax.checkpoint import load_weights, save_weights

SMALL_V1 = REPO / "docs" / "small_v1" / "training" / "workdir"  # checkpoint 60, best θ at 60, no theta_at/


def _export(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "meta_train", "export", *args]
    return subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=120)


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A copy of the small_v1 workdir with a θ file beside checkpoint 60 that differs from the
    checkpoint's (halved), so which one the export read shows in the values."""
    path = Path(shutil.copytree(SMALL_V1, tmp_path_factory.mktemp("cli") / "run"))
    theta, _, _ = workdir.weights(path, step=60)
    save_weights(workdir.step_theta_path(path, 60), jax.tree.map(lambda x: x / 2, theta), step=60)
    return path


def test_export_of_a_step_writes_that_steps_theta_and_says_so(run, tmp_path):
    out = tmp_path / "w.msgpack"
    done = _export("--workdir", str(run), "--step", "60", "--to", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == f"exported {run}: the θ of the requested step (step 60) to {out}\n"
    _assert_equal(load_weights(out), load_weights(workdir.step_theta_path(run, 60)))  # the θ file, not orbax's


def test_export_without_a_step_takes_evals_choice_into_a_directory(run, tmp_path, capsys):
    assert meta_train_main(["export", "--workdir", str(run), "--to", f"{tmp_path}/new/"]) in (0, None)
    out = capsys.readouterr().out
    assert "the best θ by validation (step 60, val_meta_loss 0.9569)" in out
    assert out.strip().endswith(f"to {tmp_path}/new/params")
    _assert_equal(load_weights(tmp_path / "new"), load_weights(run / "best_theta"))


def test_errors_are_one_line_and_exit_2(tmp_path):
    done = _export("--workdir", str(tmp_path / "nope"), "--to", str(tmp_path / "w"))
    assert done.returncode == 2 and done.stdout == ""
    assert (
        done.stderr
        == f"python -m meta_train export: error: {tmp_path / 'nope'} is not a meta_train workdir (no config.json)\n"
    )


@pytest.mark.parametrize(
    "case, message",
    [("no step", "no θ of step 7 (kept: [60])"), ("parent is a file", "cannot write")],
)
def test_other_errors_name_the_problem(run, tmp_path, case, message):
    """(In-process: the one-line, exit-2 printing is the subprocess test's above.)"""
    args = {
        "no step": ["--workdir", str(run), "--step", "7", "--to", str(tmp_path / "w")],
        "parent is a file": ["--workdir", str(run), "--to", str(run / "config.json" / "w")],
    }[case]
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        meta_train_main(["export", *args])


def test_help_has_a_description_and_examples(capsys):
    with pytest.raises(SystemExit):
        meta_train_main(["export", "--help"])
    text = capsys.readouterr().out
    assert "best by\nvalidation" in text and "examples:\n  python -m meta_train export --workdir" in text
    assert "--step S" in text and "--to PATH" in text
    with pytest.raises(SystemExit):  # the training command's help points to it
        meta_train_main(["--help"])
    assert "python -m meta_train export --workdir runs/tiny" in capsys.readouterr().out
