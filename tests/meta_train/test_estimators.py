import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import estimators
from meta_train.estimators import FullES, es_gradient_sum, perturbation, rollout_length
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


def test_antithetic_estimate_is_unbiased_on_a_quadratic():
    """f(θ) = Σ a θ²/2 + b θ: E[ĝ] = ∇f; the mean of 400 estimates of 4 pairs is within 3
    standard errors of it in every coordinate."""
    theta = {"w": jnp.linspace(-1.0, 1.0, 5), "b": jnp.array([0.5, -2.0])}
    a = {"w": jnp.arange(1.0, 6.0), "b": jnp.array([3.0, 0.1])}
    c = {"w": jnp.full(5, 0.3), "b": jnp.array([-1.0, 2.0])}

    def f(t):
        return sum(jnp.sum(0.5 * a[k] * t[k] ** 2 + c[k] * t[k]) for k in t)

    std, pairs = 0.1, 4

    @jax.jit
    def estimate(key):
        keys = jax.random.split(key, pairs)

        def delta(k):
            eps = perturbation(theta, k, std)
            return f(jax.tree.map(jnp.add, theta, eps)) - f(jax.tree.map(jnp.subtract, theta, eps))

        total = es_gradient_sum(theta, keys, jax.vmap(delta)(keys), std)
        return jax.tree.map(lambda g: g / (pairs * 2 * std**2), total)

    samples = jax.vmap(estimate)(jax.random.split(jax.random.PRNGKey(0), 400))
    true = jax.grad(f)(theta)
    for k in theta:
        mean, se = samples[k].mean(0), samples[k].std(0) / np.sqrt(400)
        assert np.all(np.abs(mean - true[k]) < 3 * se), (k, mean, true[k], se)
        assert np.all(se > 0)


def test_perturbation_layout_big_leaves_have_their_own_draw():
    """Leaves under OWN_DRAW_SIZE share one draw from the key (leaf order); a bigger leaf
    j is σ·normal(fold_in(key, j)), so a program reading only the small leaves compiles
    no big draw. The gradient sum regenerates exactly these ε."""
    big = estimators.OWN_DRAW_SIZE
    theta = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2)), "big": jnp.zeros(big)}  # leaf order a, b, big
    key, std = jax.random.PRNGKey(7), 0.5
    eps = perturbation(theta, key, std)
    flat = std * jax.random.normal(key, (8,))  # 7 small entries, drawn as an even count
    np.testing.assert_array_equal(eps["a"], flat[:3])
    np.testing.assert_array_equal(eps["b"], flat[3:7].reshape(2, 2))
    np.testing.assert_array_equal(eps["big"], std * jax.random.normal(jax.random.fold_in(key, 2), (big,)))
    assert abs(float(jnp.std(eps["big"])) / std - 1) < 0.01
    small_only = jax.jit(lambda k: perturbation(theta, k, std)["a"]).lower(key).compile().as_text()
    assert str(big) not in small_only

    keys, deltas = jax.random.split(key, 3), jnp.array([1.0, -2.0, 0.5])
    total = es_gradient_sum(theta, keys, deltas, std)
    want = [jax.tree.map(lambda e, d=d: d * e, perturbation(theta, k, std)) for k, d in zip(keys, deltas)]
    want = jax.tree.map(lambda *xs: sum(xs), *want)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), total, want)


def test_antithetic_pairs_share_task_init_and_data():
    es = small_es(loss_type="avg")
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    mesh = estimators.default_mesh(es.num_pairs)
    programs = estimators._programs(es, QUADRATIC, mesh, True)
    task_keys = jax.random.split(jax.random.PRNGKey(1), es.num_pairs)
    pert_keys = jax.random.split(jax.random.PRNGKey(2), es.num_pairs)
    cfgs, carry = programs.init(theta, task_keys, pert_keys, jnp.int32(10))
    params = np.asarray(carry[0]["w"])  # [pairs, 2, dim]
    np.testing.assert_array_equal(params[:, 0], params[:, 1])
    assert len({p.tobytes() for p in params[:, 0]}) == es.num_pairs  # each pair its own task
    batches = estimators._stacked(QUADRATIC, estimators.pair_rngs(jax.random.PRNGKey(3), es.num_pairs), "train", 5)
    keys = estimators._pair_keys(jax.random.PRNGKey(4), es.num_pairs, 5)
    carry, losses = programs.chunk(theta, pert_keys, cfgs, carry, batches, keys)
    losses = np.asarray(losses)  # [pairs, 2, steps]
    np.testing.assert_array_equal(losses[:, 0, 0], losses[:, 1, 0])  # same task, init, data, key
    assert np.all(losses[:, 0, 1:] != losses[:, 1, 1:])  # different θ from the first update on


def _chunk_losses(es, theta, steps):
    """Pair losses [pairs, 2, steps] of one chunk, with its inputs."""
    programs = estimators._programs(es, QUADRATIC, estimators.default_mesh(es.num_pairs), True)
    task_keys = jax.random.split(jax.random.PRNGKey(1), es.num_pairs)
    pert_keys = jax.random.split(jax.random.PRNGKey(2), es.num_pairs)
    cfgs, carry = programs.init(theta, task_keys, pert_keys, jnp.int32(10))
    start = jax.tree.map(np.asarray, (carry[0], carry[1]))  # (the chunk donates carry)
    batches = estimators._stacked(QUADRATIC, estimators.pair_rngs(jax.random.PRNGKey(3), es.num_pairs), "train", steps)
    keys = estimators._pair_keys(jax.random.PRNGKey(4), es.num_pairs, steps)
    _, losses = programs.chunk(theta, pert_keys, cfgs, carry, batches, keys)
    return np.asarray(losses), (pert_keys, cfgs, start, batches, keys)


def test_rollouts_equal_plain_rollouts_with_theta_plus_and_minus_eps():
    """The chunk reads VeLO's gate matrix as x@θ ± x@ε (`VeLONetwork.antithetic_pairs`). Its
    losses equal those with materialised θ ± ε, and a rollout by hand with θ ± ε."""
    es, steps = small_es(loss_type="avg"), 5
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    losses, (pert_keys, cfgs, (params0, state0), batches, keys) = _chunk_losses(es, theta, steps)
    plain, _ = _chunk_losses(dataclasses.replace(es, lopt=WithoutAntithetic(SMALL_NET)), theta, steps)
    np.testing.assert_allclose(losses, plain, rtol=1e-6)
    for i in (0, es.num_pairs - 1):
        eps = perturbation(theta, pert_keys[i], es.std)
        for side, sign in enumerate((1.0, -1.0)):
            th = jax.tree.map(jnp.add, theta, jax.tree.map(functools.partial(jnp.multiply, sign), eps))
            params, state = _at((params0, state0), i, side)
            opt = SMALL_NET.init(th, params, 10)
            # Steps 0-3: the sides differ by ~4e-4 relative from step 1 on, so 1e-5 tells
            # them apart; later, rounding differences (vmapped vs not) grow past it.
            for t in range(4):
                cfg = _at(cfgs, i)
                (loss, state), grads = QUADRATIC.loss_and_grad(params, state, keys[i, t], _at(batches, i, t), cfg)
                params, opt = SMALL_NET.update(th, opt, grads, params, loss)
                expected = QUADRATIC.normalizer(loss, cfg)
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
    task_keys = jax.random.split(jax.random.split(key, 6)[1], 8)
    bad = sum(float(family.sample(jax.random.split(k)[0])["target"][0]) > 0 for k in task_keys)
    assert 0 < bad < 8 and metrics["nonfinite_pairs"] == bad
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grad))
    assert np.isfinite(metrics["meta_loss"])


def test_rollout_length_schedule():
    lengths = [rollout_length(k, 100, 20_000, 10) for k in jax.random.split(jax.random.PRNGKey(0), 300)]
    assert all(100 <= n <= 20_000 and n % 10 == 0 for n in lengths)
    logs = np.log(lengths)
    assert abs(np.mean(logs) - (np.log(100) + np.log(20_000)) / 2) < 0.3  # log-uniform
    assert rollout_length(jax.random.PRNGKey(1), 3, 7, 10) == 10  # at least one chunk


@pytest.mark.parametrize(
    "bad", [dict(loss_type="max"), dict(num_pairs=0), dict(min_length=5, max_length=2), dict(std=0)]
)
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        FullES(SMALL_NET, **bad)


_SHARDED = """
import json, sys, jax
sys.path.insert(0, {repo!r})
from meta_train import estimators
from tests.meta_train.helpers import QUADRATIC, SMALL_NET, small_es
assert jax.device_count() == 8
es = small_es(num_pairs=8)
theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
out = {{}}
with jax.numpy_dtype_promotion("standard"):
    for n in (1, 8):
        mesh = estimators.default_mesh(8, jax.devices()[:n])
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
            g, _, m = es.estimate(
                theta, (), jax.random.PRNGKey(3), QUADRATIC, estimators.default_mesh(4, jax.devices()[:n])
            )
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
