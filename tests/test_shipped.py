"""The learned-optimizer weights shipped in the package: lookup by name, integrity, manifest,
and a quality check against tuned Adam on a held-out task."""

import dataclasses
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from tasks import small_fixed
from tasks.base import train_scan
from velojax import optimizer, shipped
from velojax.checkpoint import CheckpointError
from velojax.meta_params import check_meta_params, config_from_meta_params


def test_available_weights_lists_small_v1_newest_first():
    names = optimizer.available_weights()
    assert "small_v1" in names
    versions = [shipped.manifest(n)["version"] for n in names]
    assert versions == sorted(versions, reverse=True)


@pytest.mark.parametrize("name", shipped.available_weights())
def test_shipped_file_matches_its_manifest(name):
    manifest = shipped.manifest(name)
    path = shipped.shipped_path(name)
    assert shipped.sha256_of(path) == manifest["sha256"]
    assert path.stat().st_size <= 2 * 1024 * 1024
    meta, config = shipped.load_shipped(name)
    check_meta_params(meta, config)
    assert dataclasses.asdict(config) == {k: (tuple(v) if isinstance(v, list) else v)
                                          for k, v in manifest["network"].items()}  # fmt: skip
    assert config_from_meta_params(meta).lstm_hidden_size == manifest["network"]["lstm_hidden_size"]
    training = manifest["training"]
    assert training["command"].startswith("python -m meta_train") and training["config"]["name"]
    assert manifest["good_for"] and manifest["not_for"] and manifest["evaluation"]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(meta))


def test_velo_loads_shipped_weights_by_name():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    tx = optimizer.velo(10, weights="small_v1")
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params, value=jnp.float32(1.0))
    assert float(updates["w"][0, 0]) < 0  # a descent step on a positive gradient


def test_a_string_that_is_not_a_shipped_name_is_a_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        optimizer.velo(10, weights=str(tmp_path / "small_v1"))
    with pytest.raises(KeyError, match="no shipped weights named 'nope'"):
        shipped.manifest("nope")


def test_a_corrupted_shipped_file_is_refused(tmp_path, monkeypatch):
    for f in ("small_v1.msgpack", "small_v1.json", "__init__.py"):
        shutil.copy(shipped.weights_dir() / f, tmp_path / f)
    data = bytearray((tmp_path / "small_v1.msgpack").read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "small_v1.msgpack").write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "weights_dir", lambda: tmp_path)
    shipped._manifests.cache_clear()
    try:
        with pytest.raises(CheckpointError, match="sha256"):
            shipped.load_shipped("small_v1")
        manifest = json.loads((tmp_path / "small_v1.json").read_text())
        manifest["name"] = "other"
        (tmp_path / "small_v1.json").write_text(json.dumps(manifest))
        shipped._manifests.cache_clear()
        with pytest.raises(CheckpointError, match="does not match the file name"):
            shipped.available_weights()
    finally:
        shipped._manifests.cache_clear()


QUALITY_TASK = "ImageMLP_Shapes16_Relu32x32_bs128"
ADAM_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@jax.numpy_dtype_promotion("standard")
def test_shipped_weights_beat_the_best_of_five_adam_learning_rates_on_a_held_out_task():
    """Mean training loss over the last 10% of steps, 2 seeds, same batches for all. The task
    is one where the evaluation (docs/small_v1) has small_v1 ahead of LR-tuned Adam (about
    2x); the test guards that the shipped weights stay ahead there, not that they beat
    Adam in general (they do not)."""
    assert QUALITY_TASK in small_fixed.HELDOUT
    family, steps = tasks.get(QUALITY_TASK), small_fixed.HELDOUT_STEPS[QUALITY_TASK]
    seeds = [0, 1]
    batches = [family.stacked_batches(np.random.default_rng(s), "train", steps) for s in seeds]

    def tail_loss(run) -> float:
        losses = [run(jax.random.PRNGKey(s), b) for s, b in zip(seeds, batches)]
        return float(np.mean([np.mean(np.asarray(x)[-steps // 10 :]) for x in losses]))

    learned = tail_loss(
        jax.jit(lambda key, b: train_scan(family, optimizer.velo(steps, weights="small_v1"), key, b)[2])
    )
    adam_run = jax.jit(lambda lr, key, b: train_scan(family, optax.adam(lr), key, b)[2])  # one compile for all lrs
    adam = {lr: tail_loss(functools.partial(adam_run, jnp.float32(lr))) for lr in ADAM_LRS}
    best_lr = min(adam, key=adam.get)
    assert best_lr not in (ADAM_LRS[0], ADAM_LRS[-1]), adam  # the grid brackets Adam's best
    assert learned < adam[best_lr], (learned, adam)
