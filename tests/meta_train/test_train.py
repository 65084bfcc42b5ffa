import json
import random
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import checkpointing, configs, train
from meta_train.config import FullESConfig, MetaTrainConfig, Phase
from meta_train.tensorboard_log import HELD_OUT_TAG
from tests.conftest import REPO
from tests.meta_train.helpers import TINY_OVERRIDES, TINY_RUN, cli, read_scalars, run_cluster, subprocess_env
from velojax import files
from velojax.checkpoint import load_weights


@pytest.mark.parametrize("name", configs.names())
def test_configs_round_trip_through_json(name):
    config = configs.get(name)
    assert MetaTrainConfig.from_json(config.to_json()) == config
    assert config.total_steps > 0 and config.network().lstm_hidden_size == config.lstm_hidden_size


def test_a_format_1_config_is_migrated_and_its_workdir_not_resumed(tmp_path):
    """A config.json written before the nested estimator (format 1: flat estimator fields)
    loads as the same run's config; resuming its workdir is refused with a clear error,
    as the named key streams would not continue the same run."""
    old = {k: v for k, v in configs.get("tiny_cpu_pes").to_dict().items() if k not in ("format", "estimator")}
    del old["eval_recompute_batches"]
    old.update(estimator="pes", num_pairs=8, chunk=25, trunc_length=50, recompute_batches=10, loss_type="avg")
    migrated = MetaTrainConfig.from_dict(old)
    assert migrated == configs.get("tiny_cpu_pes")  # loss_type dropped (PES has none), sign_delta 1.0 kept
    no_kind = {k: v for k, v in old.items() if k not in ("estimator", "trunc_length")}
    assert MetaTrainConfig.from_dict(no_kind).estimator == FullESConfig(
        num_pairs=8, chunk=25, recompute_batches=10, loss_type="avg"
    )  # configs saved before PES existed
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(checkpointing.CheckpointError, match="format 1, written before the named key streams"):
        train.train(migrated, tmp_path, progress=False)
    with pytest.raises(ValueError, match="newer than this velojax"):
        MetaTrainConfig.from_dict({**configs.get("tiny_cpu").to_dict(), "format": 99})


def test_overrides_are_typed_and_checked():
    config = configs.get("tiny_cpu").with_overrides(
        ["meta_lr=1e-2", "steps=7", "estimator.num_pairs=4", "estimator.sign_delta=none", "eval_length=30",
         "estimator.length_multiple=5"]
    )  # fmt: skip
    assert config.meta_lr == 0.01 and config.estimator.num_pairs == 4 and config.estimator.sign_delta is None
    assert config.eval_length == 30 and config.estimator.length_multiple == 5  # ints, not floats, for `int | None`
    assert [p.steps for p in config.phases] == [7] and config.total_steps == 7
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        configs.get("tiny_cpu").with_overrides(["nope=1"])
    with pytest.raises(ValueError, match="field=value"):
        configs.get("tiny_cpu").with_overrides(["meta_lr"])
    with pytest.raises(KeyError, match="no meta-training config"):
        configs.get("huge")
    with pytest.raises(ValueError, match="exactly one of"):
        Phase(steps=1, min_length=1, max_length=2)


def test_meta_optimizer_clips_accumulates_and_skips_nonfinite():
    config = MetaTrainConfig(name="t", phases=TINY_RUN.phases, meta_lr=0.1, accumulate=2, clip=3.0)
    tx = train.meta_optimizer(config)
    theta = {"w": jnp.zeros(3)}
    state = tx.init(theta)
    upd, state = tx.update({"w": jnp.array([100.0, -1.0, 0.0])}, state, theta)
    assert np.all(np.asarray(upd["w"]) == 0)  # accumulating
    upd, state = tx.update({"w": jnp.array([1.0, -1.0, 0.0])}, state, theta)
    # mean of clipped gradients (2, -1, 0), then Adam's first step: -lr * sign.
    np.testing.assert_allclose(upd["w"], [-0.1, 0.1, 0.0], atol=1e-6)
    upd, state = tx.update({"w": jnp.array([np.nan, 1.0, 1.0])}, state, theta)
    assert np.all(np.asarray(upd["w"]) == 0) and int(state.total_notfinite) == 1


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> tuple[dict, dict]:
    """(summary, θ) of an uninterrupted TINY_RUN in this process (2 forced devices)."""
    workdir = tmp_path_factory.mktemp("whole")
    with jax.numpy_dtype_promotion("standard"):
        summary = train.train(TINY_RUN, workdir, progress=False)
    assert (workdir / "meta_loss.png").stat().st_size > 1000
    assert [p for p in workdir.rglob("*") if "tmp" in p.name] == []  # every write renamed into place
    assert sorted(p.name for p in (workdir / "theta_at").iterdir()) == ["2", "3", "4"]  # keep_checkpoints=3
    scalars, purges = read_scalars(workdir / "tensorboard")
    assert scalars == _jsonl_scalars(workdir, summary) and purges == []
    return summary, load_weights(workdir / "theta", TINY_RUN.network())


def _jsonl_scalars(workdir: Path, summary: dict) -> dict[str, dict[int, float]]:
    """metrics.jsonl and the held-out meta-losses as TensorBoard would show them (float32)."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    tags = {k for r in rows for k, v in r.items() if k != "step" and not isinstance(v, str)}
    want = {tag: {r["step"]: f32(r[tag]) for r in rows} for tag in tags}
    want[HELD_OUT_TAG] = {0: f32(summary["eval_before"]), summary["steps"]: f32(summary["eval_after"])}
    return want


def _assert_same(theta, workdir: Path, exact: bool = True):
    other = load_weights(workdir / "theta", TINY_RUN.network())
    for x, y in zip(jax.tree.leaves(theta), jax.tree.leaves(other)):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, whole_run):
    train.train(TINY_RUN, tmp_path, progress=False, stop_after=3)
    assert checkpointing.Checkpointer(tmp_path / "checkpoints").latest_step() == 3
    split = train.train(TINY_RUN, tmp_path, progress=False)
    summary, theta = whole_run
    timeless = lambda d: {k: v for k, v in d.items() if k != "wall_time_s"}  # noqa: E731
    assert timeless(split) == timeless(summary) and np.isfinite(summary["eval_after"])
    assert split["wall_time_s"] > 0
    _assert_same(theta, tmp_path)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    scalars, purges = read_scalars(tmp_path / "tensorboard")  # the second file purges from step 4
    assert purges == [4] and scalars == _jsonl_scalars(tmp_path, split)


def test_another_config_in_the_same_workdir_is_refused(tmp_path):
    train.train(TINY_RUN, tmp_path, progress=False, stop_after=1)
    other = TINY_RUN.with_overrides(["meta_lr=0.5"])
    with pytest.raises(checkpointing.CheckpointError, match="different config"):
        train.train(other, tmp_path, progress=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    train.train(TINY_RUN, tmp_path, progress=False, stop_after=1)
    for f in (tmp_path / "checkpoints" / "1").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(checkpointing.CheckpointError, match="corrupt or from a different config"):
        train.train(TINY_RUN, tmp_path, progress=False)


def test_config_summary_and_metrics_survive_a_failed_write(tmp_path, monkeypatch):
    """A write that fails (disk full, or a kill) leaves the old file whole, or none: never a
    torn config.json, which would make every rerun refuse the workdir."""
    summary, metrics = tmp_path / "summary.json", tmp_path / "metrics.jsonl"
    train._write_summary(summary, {"steps": 1}, lead=True)
    train._write_metrics(metrics, [{"step": 1}])

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for write in (lambda: train._write_summary(summary, {"steps": 2}, lead=True),
                  lambda: train._write_metrics(metrics, [{"step": 1}, {"step": 2}]),
                  lambda: train._check_config(TINY_RUN, fresh)):  # fmt: skip
        with pytest.raises(OSError, match="No space"):
            write()
    assert json.loads(summary.read_text()) == {"steps": 1} and train._read_metrics(metrics, 9) == [{"step": 1}]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fresh", "metrics.jsonl", "summary.json"]  # no temp files
    monkeypatch.undo()
    train._check_config(TINY_RUN, fresh)
    assert MetaTrainConfig.from_json((fresh / "config.json").read_text()) == TINY_RUN


def _cli(workdir: Path) -> list[str]:
    return cli("tiny_cpu", workdir, TINY_OVERRIDES + ["eval_pairs=0"])  # evaluation does not change θ


def test_sigkilled_run_resumes_bit_identically(tmp_path, whole_run):
    env = subprocess_env(devices=2)  # this process's mesh
    proc = subprocess.Popen(_cli(tmp_path), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "1").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.2))  # somewhere in a later step (or a save)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "theta").exists()  # it was cut short
    done = subprocess.run(_cli(tmp_path), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same(whole_run[1], tmp_path)


@pytest.mark.slow  # two CLI processes compile multi-process programs: ~90 s cold on 2 cores
def test_two_processes_make_the_one_process_update(tmp_path, whole_run):
    """Two processes on 127.0.0.1 (1 CPU device each) form one 2-device mesh; their θ
    equals that of this process with 2 devices (up to summation order)."""
    outs = run_cluster(_cli(tmp_path))
    assert "2 device(s) in 2 process(es)" in outs[0]
    _assert_same(whole_run[1], tmp_path, exact=False)


@pytest.mark.slow  # a VeLO-size network on the recipe's task distribution: ~100 s on 2 cores
def test_velo_phase1_runs_offline_on_mock_data(tmp_path):
    """The reference recipe's phase 1 (VeLO-size θ, its task distribution, tfds datasets
    replaced by mock examples) runs two outer steps through the CLI and writes its outputs."""
    overrides = ["steps=2", "estimates_per_step=1", "accumulate=1", "min_length=10", "max_length=20",
                 "estimator.recompute_batches=2", "eval_recompute_batches=2", "eval_pairs=2",
                 "eval_length=10"]  # fmt: skip
    done = subprocess.run(cli("velo_phase1", tmp_path, overrides) + ["--mock-data"], env=subprocess_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["theta_norm"]) for r in rows)
    theta = load_weights(tmp_path / "theta", configs.get("velo_phase1").network())
    assert sum(x.size for x in jax.tree.leaves(theta)) > 2_000_000  # the VeLO-size network
