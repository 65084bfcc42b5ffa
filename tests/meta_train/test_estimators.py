import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import data_feed, estimators
from meta_train.es import perturbation
from meta_train.estimators import FullES
from meta_train.sharding import default_mesh
from tasks.key_streams import stream
from tests.conftest import REPO
from tests.meta_train.helpers import (
    QUADRATIC,
    SGD,
    SMALL_NET,
    KeyedQuadratic,
    SometimesNaN,
    WithoutAntithetic,
    small_es,
    subprocess_env,
)


def test_antithetic_pairs_share_task_init_and_data():
    es = small_es(loss_type="avg")
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    mesh = default_mesh(es.num_pairs)
    programs = estimators._programs(es, QUADRATIC, mesh, True)
    task_keys = jax.random.split(jax.random.PRNGKey(1), es.num_pairs)
    pert_keys = jax.random.split(jax.random.PRNGKey(2), es.num_pairs)
    cfgs, runs = programs.init(theta, task_keys, pert_keys, jnp.int32(10))
    params = np.asarray(runs.params["w"])  # [pairs, 2, dim]
    np.testing.assert_array_equal(params[:, 0], params[:, 1])
    assert len({p.tobytes() for p in params[:, 0]}) == es.num_pairs  # each pair its own task
    batches = data_feed.stacked(QUADRATIC, data_feed.pair_rngs(jax.random.PRNGKey(3), es.num_pairs), "train", 5)
    keys = data_feed.pair_keys(jax.random.PRNGKey(4), es.num_pairs, 5)
    runs, losses = programs.chunk(theta, pert_keys, cfgs, runs, batches, keys)
    losses = np.asarray(losses)  # [pairs, 2, steps]
    np.testing.assert_array_equal(losses[:, 0, 0], losses[:, 1, 0])  # same task, init, data, key
    assert np.all(losses[:, 0, 1:] != losses[:, 1, 1:])  # different θ from the first update on


def _chunk_losses(es, theta, steps):
    """Pair losses [pairs, 2, steps] of one chunk, with its inputs."""
    programs = estimators._programs(es, QUADRATIC, default_mesh(es.num_pairs), True)
    task_keys = jax.random.split(jax.random.PRNGKey(1), es.num_pairs)
    pert_keys = jax.random.split(jax.random.PRNGKey(2), es.num_pairs)
    cfgs, runs = programs.init(theta, task_keys, pert_keys, jnp.int32(10))
    start = jax.tree.map(np.asarray, (runs.params, runs.model_state))  # (the chunk donates runs)
    batches = data_feed.stacked(QUADRATIC, data_feed.pair_rngs(jax.random.PRNGKey(3), es.num_pairs), "train", steps)
    keys = data_feed.pair_keys(jax.random.PRNGKey(4), es.num_pairs, steps)
    _, losses = programs.chunk(theta, pert_keys, cfgs, runs, batches, keys)
    return np.asarray(losses), (pert_keys, cfgs, start, batches, keys)


def test_rollouts_equal_plain_rollouts_with_theta_plus_and_minus_eps():
    """The chunk reads VeLO's gate matrix as x@θ ± x@ε (`VeLONetwork.antithetic_pairs`). Its
    losses equal those with materialised θ ± ε, and a rollout by hand with θ ± ε."""
    es, steps = small_es(loss_type="avg"), 5
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    losses, (pert_keys, cfgs, (params0, state0), batches, keys) = _chunk_losses(es, theta, steps)
    plain, _ = _chunk_losses(dataclasses.replace(es, lopt=WithoutAntithetic(SMALL_NET)), theta, steps)
    np.testing.assert_allclose(losses, plain, rtol=1e-6)

    @jax.jit  # one program for every step by hand (eager VeLO would compile op by op)
    def step(th, opt, params, state, key, batch, cfg):
        (loss, state), grads = QUADRATIC.loss_and_grad(params, state, key, batch, cfg)
        params, opt = SMALL_NET.update(th, opt, grads, params, loss)
        return opt, params, state, QUADRATIC.normalizer(loss, cfg)

    for i in (0, es.num_pairs - 1):
        eps = perturbation(theta, pert_keys[i], es.std)
        for side, sign in enumerate((1.0, -1.0)):
            th = jax.tree.map(jnp.add, theta, jax.tree.map(functools.partial(jnp.multiply, sign), eps))
            params, state = _at((params0, state0), i, side)
            opt = SMALL_NET.init(th, params, 10)
            # Steps 0-3: the sides differ by ~4e-4 relative from step 1 on, so 1e-5 tells
            # them apart; later, rounding differences (vmapped vs not) grow past it.
            for t in range(4):
                opt, params, state, expected = step(
                    th, opt, params, state, keys[i, t], _at(batches, i, t), _at(cfgs, i)
                )
                np.testing.assert_allclose(losses[i, side, t], expected, rtol=1e-5, err_msg=f"pair {i} side {side}")


def _at(tree, *index):
    return jax.tree.map(lambda x: x[index], tree)


def test_estimates_do_not_depend_on_the_chunking():
    """L = 15 with chunk 10 and length_multiple 5 (calls of 10 + 5 steps) gives the
    estimate of chunk 5 (3 calls): per-step keys, one data stream per pair. (The loss uses
    its key, so keys that depended on the chunking would show.)"""
    theta = SGD.init_theta()  # (compiles in a blink; the chunking is the estimator's)
    es = dataclasses.replace(small_es(std=0.05, min_length=15, max_length=15, loss_type="avg"), lopt=SGD)
    family = KeyedQuadratic(dim=6, batch_size=2, noise=0.1)
    (g1, _, m1), (g2, _, m2) = (
        dataclasses.replace(es, **kw).estimate(theta, (), jax.random.PRNGKey(5), family)
        for kw in (dict(chunk=5), dict(chunk=10, length_multiple=5))
    )
    assert m1["length"] == m2["length"] == 15
    np.testing.assert_allclose(m1["meta_loss"], m2["meta_loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="divide chunk"):
        small_es(chunk=10, length_multiple=4)


def test_the_data_feed_does_not_depend_on_the_chunking():
    """A rollout's calls cover its steps in order (chunks, then the remainder in
    `multiple`s), and the loss keys of steps 0-9 are the same made in one call or two."""
    assert data_feed.chunk_sizes(35, 10, 5) == [10, 10, 10, 5]
    assert data_feed.chunk_sizes(20, 10, 5) == [10, 10] and data_feed.chunk_sizes(5, 10, 5) == [5]
    key = jax.random.PRNGKey(4)
    whole = data_feed.step_keys(key, 3, 0, 10)
    parts = np.concatenate([data_feed.step_keys(key, 3, 0, 4), data_feed.step_keys(key, 3, 4, 6)], axis=1)
    assert whole.shape[:2] == (3, 10) and len({k.tobytes() for k in np.asarray(whole).reshape(30, -1)}) == 30
    np.testing.assert_array_equal(whole, parts)


def test_estimate_metrics_and_determinism():
    es = small_es()
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    g1, state, m1 = es.estimate(theta, es.init(theta, None, QUADRATIC), jax.random.PRNGKey(5), QUADRATIC)
    g2, _, m2 = es.estimate(theta, state, jax.random.PRNGKey(5), QUADRATIC)
    assert state == ()  # FullES has no state
    assert m1 == m2 and m1["length"] == 10 and m1["inner_steps"] == 2 * 4 * 10 and m1["nonfinite_pairs"] == 0
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(a, b)
    # With sign(Δ)·1, ĝ = mean ±ε/(2σ²): its RMS is 1/(2σ√N) = 25 for σ = 0.01, N = 4.
    rms = np.sqrt(np.mean(np.concatenate([np.ravel(g) ** 2 for g in jax.tree.leaves(g1)])))
    assert 15 < rms < 35, rms
    assert np.isfinite(m1["meta_loss"]) and m1["meta_loss"] > 0


def test_nan_pairs_are_dropped_and_counted():
    family = SometimesNaN(dim=6, batch_size=2)
    es = small_es(num_pairs=8)
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(7)
    grad, _, metrics = es.estimate(theta, (), key, family)
    # pair i's task: stream "tasks" (i) of the estimate's key, its config from stream "config"
    task_keys = [stream(key, "tasks", i) for i in range(8)]
    bad = sum(float(family.sample(stream(k, "config"))["target"][0]) > 0 for k in task_keys)
    assert 0 < bad < 8 and metrics["nonfinite_pairs"] == bad
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grad))
    assert np.isfinite(metrics["meta_loss"])


@pytest.mark.parametrize(
    "bad", [dict(loss_type="max"), dict(num_pairs=0), dict(min_length=5, max_length=2), dict(std=0)]
)
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        FullES(SMALL_NET, **bad)


_SHARDED = """
import json, sys, jax
sys.path.insert(0, {repo!r})
from meta_train.sharding import default_mesh
from tests.meta_train.helpers import QUADRATIC, SMALL_NET, small_es
assert jax.device_count() == 8
es = small_es(num_pairs=8)
theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
out = {{}}
with jax.numpy_dtype_promotion("standard"):
    for n in (1, 8):
        mesh = default_mesh(8, jax.devices()[:n])
        g, _, m = es.estimate(theta, (), jax.random.PRNGKey(3), QUADRATIC, mesh)
        out[n] = {{"grad": [x.ravel().tolist() for x in jax.tree.leaves(g)], "loss": m["meta_loss"]}}
print(json.dumps(out))
"""


def test_two_devices_give_the_one_device_estimate():
    es = small_es(num_pairs=4)
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    out = {}
    with jax.numpy_dtype_promotion("standard"):
        for n in (1, 2):
            g, _, m = es.estimate(theta, (), jax.random.PRNGKey(3), QUADRATIC, default_mesh(4, jax.devices()[:n]))
            out[n] = g, m
    assert out[1][1]["meta_loss"] == pytest.approx(out[2][1]["meta_loss"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(out[1][0]), jax.tree.leaves(out[2][0])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-3)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(out[1][0]))


@pytest.mark.slow  # a subprocess with 8 forced devices (~60 s cold); 2 devices run in process above
def test_eight_devices_give_the_one_device_estimate():
    env = subprocess_env(devices=8)
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED.format(repo=str(REPO))], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one, eight = out["1"], out["8"]
    assert one["loss"] == pytest.approx(eight["loss"], rel=1e-5)
    flat = functools.partial(np.concatenate)
    np.testing.assert_allclose(flat([np.asarray(x) for x in eight["grad"]]), flat([np.asarray(x) for x in one["grad"]]),
                               rtol=1e-4, atol=1e-3)  # fmt: skip


def test_loss_types_measure_different_things():
    """avg (mean training loss along the rollout), last (the final training loss) and
    last_recompute (the final weights on fresh batches) are three different numbers."""
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    losses = {
        t: small_es(loss_type=t, sign_delta=None).estimate(theta, (), jax.random.PRNGKey(5), QUADRATIC)[2]["meta_loss"]
        for t in ("avg", "last", "last_recompute")
    }
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert len(set(losses.values())) == 3, losses
