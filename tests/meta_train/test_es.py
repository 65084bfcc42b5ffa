"""meta_train.es alone: perturbations, antithetic θ, the gradient sum, the aggregation over
finite pairs and the two rollout-length samplers (no task, no learned optimizer)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from meta_train import es
from meta_train.es import aggregate_pairs, antithetic_thetas, es_gradient_sum, perturbation, rollout_length
from meta_train.sharding import AXIS, default_mesh, sharded_program

THETA = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -2.0])}


def test_perturbation_is_std_normal_shaped_like_theta_and_a_function_of_its_key():
    theta = {"big": jnp.zeros(10_000), "small": jnp.zeros((3, 2), jnp.bfloat16)}
    key, std = jax.random.PRNGKey(1), 0.3
    eps = perturbation(theta, key, std)
    assert jax.tree.structure(eps) == jax.tree.structure(theta)
    assert all(e.shape == t.shape and e.dtype == t.dtype for e, t in zip(jax.tree.leaves(eps), jax.tree.leaves(theta)))
    assert abs(float(jnp.std(eps["big"])) / std - 1) < 0.03 and abs(float(jnp.mean(eps["big"]))) < 0.03 * std
    again, other = perturbation(theta, key, std), perturbation(theta, jax.random.PRNGKey(2), std)
    np.testing.assert_array_equal(eps["big"], again["big"])
    assert not np.any(np.asarray(eps["big"]) == np.asarray(other["big"]))


def test_antithetic_thetas_are_theta_plus_and_minus_each_pairs_eps():
    """Without `antithetic_pairs` every leaf is [P, 2, ...]: θ + εᵢ, θ − εᵢ, εᵢ from key i;
    with it, the learned optimizer gets θ and ε [P, ...θ] and its answer is passed on."""
    keys, std = jax.random.split(jax.random.PRNGKey(3), 3), 0.1
    thetas, pair_axes, side_axes = antithetic_thetas(object(), THETA, keys, std)
    assert (pair_axes, side_axes) == (0, 0)
    for i, k in enumerate(keys):
        eps = perturbation(THETA, k, std)
        for name in THETA:
            assert thetas[name].shape == (3, 2, *THETA[name].shape)
            # (to an ulp: ε drawn inside lax.map may round unlike ε drawn alone)
            np.testing.assert_allclose(thetas[name][i, 0], THETA[name] + eps[name], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(thetas[name][i, 1], THETA[name] - eps[name], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(thetas[name][i, 0] + thetas[name][i, 1], 2 * THETA[name], atol=1e-6)

    class Shared:
        def antithetic_pairs(self, theta, eps):
            return ("shared", theta, eps), "p", "s"

    (tag, theta, eps), pair_axes, side_axes = antithetic_thetas(Shared(), THETA, keys, std)
    assert (tag, pair_axes, side_axes) == ("shared", "p", "s") and theta is THETA
    np.testing.assert_allclose(eps["w"][2], perturbation(THETA, keys[2], std)["w"], rtol=1e-6, atol=1e-8)


def test_gradient_sum_of_two_pairs_is_the_hand_formula():
    keys, std = jax.random.split(jax.random.PRNGKey(4), 2), 0.2
    deltas = jnp.array([0.5, -3.0])
    total = jax.jit(es_gradient_sum, static_argnums=3)(THETA, keys, deltas, std)
    e1, e2 = (perturbation(THETA, k, std) for k in keys)
    for name in THETA:
        assert total[name].shape == THETA[name].shape and total[name].dtype == THETA[name].dtype
        np.testing.assert_allclose(total[name], 0.5 * e1[name] - 3.0 * e2[name], rtol=1e-6, atol=1e-7)


def test_aggregate_drops_the_excluded_pairs_and_scales_by_all_pairs():
    grad_sum = {"w": jnp.full((2, 3), 8.0), "b": jnp.array([4.0, -4.0])}
    pair_loss = jnp.array([1.0, jnp.nan, 3.0, jnp.inf])
    included = jnp.isfinite(pair_loss)
    out = jax.jit(aggregate_pairs, static_argnums=(3, 4))(grad_sum, pair_loss, included, 4, 0.5)
    # ĝ = Σ / (2σ²·N) with N = 4 pairs, the dropped ones included: 8 / (2·0.25·4) = 4.
    np.testing.assert_array_equal(out.grad["w"], np.full((2, 3), 4.0))
    np.testing.assert_array_equal(out.grad["b"], np.array([2.0, -2.0]))
    assert float(out.meta_loss) == 2.0 and int(out.included) == 2 and out.included.dtype == jnp.int32
    none = aggregate_pairs(grad_sum, pair_loss, jnp.zeros(4, bool), 4, 0.5)
    assert np.isnan(float(none.meta_loss)) and int(none.included) == 0


def test_aggregate_over_the_pairs_axis_sums_every_devices_pairs():
    """Inside a shard_map over "pairs" (2 devices, 2 pairs each) the result is the one of
    all 4 pairs on one device: each device passes its own partial sum."""
    mesh = default_mesh(4, jax.devices()[:2])
    assert mesh.shape[AXIS] == 2
    pair_loss = jnp.array([1.0, 2.0, jnp.nan, 7.0])
    included = jnp.isfinite(pair_loss)
    per_pair = jnp.arange(4.0)  # pair i's contribution to Σ

    def local(contributions, loss, ok):
        out = aggregate_pairs({"g": jnp.sum(contributions)[None]}, loss, ok, 4, 0.5, AXIS)
        return out.grad, out.meta_loss, out.included

    program = sharded_program(mesh, local, (P(AXIS),) * 3, P())
    grad, meta_loss, count = program(per_pair, pair_loss, included)
    alone = aggregate_pairs({"g": jnp.sum(per_pair)[None]}, pair_loss, included, 4, 0.5)
    np.testing.assert_array_equal(grad["g"], alone.grad["g"])
    assert float(meta_loss) == float(alone.meta_loss) == pytest.approx(10.0 / 3) and int(count) == 3


def test_rollout_lengths_are_the_traced_sampler_rounded_down():
    """FullES's host `rollout_length` is PES's traced `sample_length` (one LogUniform
    sampler, within [min, max]) rounded down to a multiple, at least one multiple."""
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    traced = np.asarray(jax.jit(jax.vmap(functools.partial(es.sample_length, min_length=10, max_length=1000)))(keys))
    assert traced.dtype == np.int32 and traced.min() >= 10 and traced.max() <= 1000
    np.testing.assert_array_equal([rollout_length(k, 10, 1000, 1) for k in keys], traced)
    rounded = np.array([rollout_length(k, 10, 1000, 10) for k in keys])
    np.testing.assert_array_equal(rounded, np.maximum(10, traced - traced % 10))


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
    big = es.OWN_DRAW_SIZE
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


def test_rollout_length_schedule():
    lengths = [rollout_length(k, 100, 20_000, 10) for k in jax.random.split(jax.random.PRNGKey(0), 300)]
    assert all(100 <= n <= 20_000 and n % 10 == 0 for n in lengths)
    logs = np.log(lengths)
    assert abs(np.mean(logs) - (np.log(100) + np.log(20_000)) / 2) < 0.3  # log-uniform
    assert rollout_length(jax.random.PRNGKey(1), 3, 7, 10) == 10  # at least one chunk


@pytest.mark.parametrize("length, multiple", [(200, 25), (1000, 10), (2000, 100), (150, 1)])
def test_a_fixed_length_is_exactly_that_length(length, multiple):
    """min == max (held-out evaluation, validation) gives exactly that many steps. (f388417
    computed exp(log L) in float64, 199.999… for L = 200, so its "200-step" evaluation of
    tiny_cpu ran 175 steps, and small_v1's 1000-step validation, in 100-step chunks, 900.)"""
    keys = jax.random.split(jax.random.PRNGKey(0), 20)
    assert {rollout_length(k, length, length, multiple) for k in keys} == {length}
    assert set(np.asarray(jax.vmap(lambda k: es.sample_length(k, length, length))(keys)).tolist()) == {length}
