"""Expected failures of the command lines, run as a user runs them (subprocesses): one
`prog: error: ...` line, exit 2, no traceback; and a normal offline run prints no warning."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(module: str, *argv: str, **env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env)
    env.pop("VELOJAX_WEIGHTS", None)
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _error_lines(done: subprocess.CompletedProcess, prog: str) -> list[str]:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return [line for line in done.stderr.splitlines() if line.startswith(f"{prog}: error: ")]


def test_eval_without_the_official_weights_offline(tmp_path):
    done = _run("eval", "--suite", "tiny", "--out", str(tmp_path / "out"),
                VELOJAX_OFFLINE="1", VELOJAX_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    (line,) = _error_lines(done, "python -m eval")
    assert "pretrained VeLO weights are not available" in line and "fetch-weights" in line
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out" / "results").exists()


def test_meta_train_with_a_missing_init_theta(tmp_path):
    done = _run("meta_train", "--config", "tiny_cpu", "--workdir", str(tmp_path / "w"), "--init-theta", "/nonexistent")
    assert _error_lines(done, "python -m meta_train") == [
        "python -m meta_train: error: no VeLO checkpoint at /nonexistent"
    ]


def test_tasks_calibration_without_the_dataset(tmp_path):
    done = _run("tasks", "sample", "--phase", "1", "-n", "2", "--calibrate",
                VELOJAX_CACHE_DIR=str(tmp_path), VELOJAX_FASHION_MNIST_DIR=str(tmp_path / "none"))  # fmt: skip
    (line,) = _error_lines(done, "python -m tasks")
    assert "Fashion-MNIST is not on disk" in line and "apt-get install dataset-fashion-mnist" in line


@pytest.mark.parametrize("argv", [("tasks", "sample", "--phase", "1", "-n", "20")])
def test_an_offline_run_prints_no_warning(argv, tmp_path):
    """A plain offline run prints rows and nothing on stderr that warns (the tfds probe itself:
    tests/tasks/test_data.py)."""
    done = _run(*argv, TFDS_DATA_DIR=str(tmp_path / "tfds"), VELOJAX_CACHE_DIR=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WARNING" not in done.stderr and "Warning" not in done.stderr, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) >= 20


def test_tasks_sample_help_describes_every_flag_with_examples():
    done = _run("tasks", "sample", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "curriculum phase" in text and "how many tasks (default: 20)" in text and "the draws are a function" in text
    assert "examples:" in text and text.count("python -m tasks sample") >= 4
