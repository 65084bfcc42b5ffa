"""`python -m eval` as a user runs it: help, one-line errors (exit 2) before any work, the
cluster flags, `--baselines published`; and (slow) a real two-process run."""

import json
import os
import socket
import subprocess
import sys

import pytest

from eval import baselines, cli
from eval.published import ADAM_ENVELOPES
from tests.conftest import REPO
from velojax import cli_common

CLUSTER_FLAGS = ("--distributed", "--coordinator", "--num-processes", "--process-id")


def _eval(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eval", *argv], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu")


def test_help_lists_the_demo_the_cluster_flags_and_published():
    done = _eval("--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "python -m eval demo" in text and "several processes (jax.distributed)" in text
    assert all(flag in text for flag in CLUSTER_FLAGS)
    assert "'published'" in text and "eval/published/speedup_over_adam.npz" in text


def test_a_missing_baselines_file_is_one_line_and_exit_2(tmp_path):
    done = _eval("--baselines", "/nonexistent", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr == "python -m eval: error: no baselines file at /nonexistent\n"
    assert not (tmp_path / "out").exists()  # failed before any work


def test_coordinator_without_num_processes_is_a_clear_error(tmp_path):
    done = _eval("--coordinator", "127.0.0.1:1", "--process-id", "0", "--out", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "python -m eval: error: --coordinator needs --num-processes and --process-id (or --distributed to detect them)"
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--coordinator=h:1", "--num-processes=2"], "--coordinator needs --num-processes and --process-id"),
        (["--num-processes=2", "--process-id=0"], "need --coordinator HOST:PORT"),
        (["--coordinator=h:1", "--num-processes=0", "--process-id=0"], "--num-processes must be >= 1, got 0"),
        (["--coordinator=h:1", "--num-processes=2", "--process-id=2"], r"--process-id must be in 0\.\.1, got 2"),
    ],
)
def test_inconsistent_cluster_flags_are_refused_before_joining(flags, message, monkeypatch):
    import jax

    monkeypatch.setattr(jax.distributed, "initialize", lambda *a: pytest.fail("joined a cluster"))
    with pytest.raises(ValueError, match=message):
        cli_common.join_cluster(cli.parser().parse_args(["--out=x", *flags]))


def test_cluster_flags_reach_jax_distributed(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
    cli_common.join_cluster(cli.parser().parse_args(["--out=x"]))
    assert calls == []  # no flags: one process, nothing joined
    flags = ["--out=x", "--coordinator=10.0.0.1:1234", "--num-processes=4", "--process-id=3"]
    cli_common.join_cluster(cli.parser().parse_args(flags))
    cli_common.join_cluster(cli.parser().parse_args(["--out=x", "--distributed"]))  # detected from the environment
    assert calls == [("10.0.0.1:1234", 4, 3), (None, None, None)]


def test_published_names_the_shipped_adam_envelopes():
    assert baselines.reference_file("published") == ADAM_ENVELOPES
    published = baselines.load_reference("published")
    assert len(published) == 75 and {b.source for b in published.values()} == {"reference:speedup_over_adam.npz"}
    assert cli.parser().parse_args(["--out=x", "--baselines=published"]).baselines == "published"
    with pytest.raises(FileNotFoundError, match="no baselines file at /nonexistent"):
        baselines.reference_file("/nonexistent")


@pytest.mark.slow  # two CLI processes form a cluster and train a task each: ~30 s on 2 cores
def test_two_processes_split_the_tasks_and_process_0_reports_both(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tasks_ = "ImageMLP_FashionMnist8_Relu32,ImageMLPAE_FashionMnist_128x32x128_bs128"
    argv = ["--optimizer=adam", "--grid=1e-2", "--suite=tiny", f"--tasks={tasks_}", "--steps=5", "--eval-every=5",
            "--batch-size=8", "--final-eval-batches=2", "--competitors=none", "--baselines=published",
            "--no-progress", f"--out={tmp_path}", f"--coordinator=127.0.0.1:{port}", "--num-processes=2"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "eval", *argv, f"--process-id={k}"],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for k in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert f"report: {tmp_path / 'report.md'}" in outs[0] and "process 1: results written" in outs[1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["families"]["adam"]["all"]["n"] == 2
    assert "2 tasks run by this command (2 process(es))" in summary["notes"][0]
