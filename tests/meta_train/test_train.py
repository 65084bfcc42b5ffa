import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import checkpointing, configs, train
from meta_train.config import MetaTrainConfig, Phase
from tests.conftest import REPO
from tests.meta_train.helpers import TINY_RUN
from velojax.checkpoint import load_weights


@pytest.mark.parametrize("name", configs.names())
def test_configs_round_trip_through_json(name):
    config = configs.get(name)
    assert MetaTrainConfig.from_json(config.to_json()) == config
    assert config.total_steps > 0 and config.network().lstm_hidden_size == config.lstm_hidden_size


def test_overrides_are_typed_and_checked():
    config = configs.get("tiny_cpu").with_overrides(["meta_lr=1e-2", "steps=7", "num_pairs=4", "sign_delta=none"])
    assert config.meta_lr == 0.01 and config.num_pairs == 4 and config.sign_delta is None
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


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole = train.train(TINY_RUN, tmp_path / "whole", progress=False)
    train.train(TINY_RUN, tmp_path / "split", progress=False, stop_after=3)
    assert checkpointing.Checkpointer(tmp_path / "split" / "checkpoints").latest_step() == 3
    split = train.train(TINY_RUN, tmp_path / "split", progress=False)
    assert whole == split and np.isfinite(whole["eval_after"])
    a, b = (load_weights(tmp_path / d / "theta", TINY_RUN.network()) for d in ("whole", "split"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and (tmp_path / "whole" / "meta_loss.png").stat().st_size > 1000


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


def _cli(workdir: Path) -> list[str]:
    overrides = ["steps=6", "min_length=10", "max_length=20", "num_pairs=2", "chunk=5", "recompute_batches=2",
                 "lstm_hidden_size=8", "param_inits=2", "checkpoint_every=1", "eval_pairs=2", "eval_length=10",
                 "batch_size=8"]  # fmt: skip
    command = [sys.executable, "-m", "meta_train", "--config", "tiny_cpu", "--workdir", str(workdir), "--no-progress"]
    return command + overrides


def test_sigkilled_run_resumes_bit_identically(tmp_path):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    subprocess.run(_cli(tmp_path / "whole"), env=env, cwd=REPO, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "2").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.0))  # somewhere in later steps (or a save)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(_cli(killed), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = configs.get("tiny_cpu").with_overrides(["lstm_hidden_size=8", "param_inits=2"]).network()
    a, b = (load_weights(tmp_path / d / "theta", config) for d in ("whole", "killed"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
