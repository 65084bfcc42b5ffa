"""Each augmentation on its defining property."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks import augmentations as aug
from tasks.families.image_mlp import ImageMLP
from tasks.families.quadratic import Quadratic
from tests.tasks.conformance import check_family

BASE = ImageMLP("synthetic_shapes", (8,), batch_size=8, image_size=4)
KEY = jax.random.PRNGKey(0)


def _grad(family, params, state, batch, cfg, key=KEY):
    return jax.jit(family.loss_and_grad)(params, state, key, batch, cfg)


@pytest.mark.parametrize(
    "family",
    [
        aug.reparam_weights(BASE, "tensor"),
        aug.es_gradient(BASE, 0.01, 2),
        aug.reduced_batch(BASE, 0.5),
        aug.bfloat16(BASE),
        aug.normalize_gradient(BASE),
        aug.subsample_directions(BASE, 4),
        aug.delayed_gradients(BASE, 2),
    ],
    ids=lambda f: f.tag(),
)
def test_augmented_families_meet_the_contract(family):
    # ES, subsampled and delayed gradients are noisy or stale: give them a larger step
    check_family(family, lr=3e-2)


@pytest.mark.parametrize("level", ["global", "tensor", "parameter"])
def test_reparametrisation_leaves_the_function_unchanged(level):
    family = aug.reparam_weights(BASE, level, (0.01, 100.0))
    batch = BASE.get_batch(np.random.default_rng(0), "train")
    cfg = family.sample(KEY)
    params, state = family.init(KEY, cfg)
    inner_params, _ = BASE.init(KEY, cfg["inner"])
    stored = jax.tree.leaves(params)
    assert any(not np.allclose(a, b) for a, b in zip(stored, jax.tree.leaves(inner_params)))  # really rescaled
    ours = family.loss(params, state, KEY, batch, cfg)[0]
    reference = BASE.loss(inner_params, state, KEY, batch, cfg["inner"])[0]
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)
    scales = jax.tree.leaves(family.scales(cfg, params))
    assert all(0.01 <= float(jnp.min(s)) and float(jnp.max(s)) <= 100.0 for s in scales)
    if level == "parameter":
        assert float(jnp.std(scales[0])) > 0  # one scale per element


def test_es_gradient_estimates_the_true_gradient_of_a_quadratic():
    quad = Quadratic(dim=6)
    pairs = 4096
    family = aug.es_gradient(quad, std=0.01, num_pairs=pairs)
    cfg = family.sample(KEY)
    params, state = family.init(KEY, cfg)
    batch = quad.get_batch(np.random.default_rng(0), "train")
    (_, _), es = _grad(family, params, state, batch, cfg)
    (_, _), true = _grad(quad, params, state, batch, cfg["inner"])
    g = np.asarray(true["w"])
    # one pair's estimate is eps eps^T g / std^2: per component, variance |g|^2 + g_i^2
    stderr = np.sqrt((np.sum(g**2) + g**2) / pairs)
    assert np.all(np.abs(np.asarray(es["w"]) - g) < 4 * stderr), (np.asarray(es["w"]), g, stderr)


def test_normalized_gradient_has_unit_norm_and_the_true_direction():
    family = aug.normalize_gradient(BASE)
    batch = BASE.get_batch(np.random.default_rng(0), "train")
    cfg = family.sample(KEY)
    params, state = family.init(KEY, cfg)
    (_, _), g = _grad(family, params, state, batch, cfg)
    (_, _), true = _grad(BASE, params, state, batch, cfg["inner"])
    flat, flat_true = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (g, true))
    np.testing.assert_allclose(np.linalg.norm(flat), 1.0, rtol=1e-5)
    np.testing.assert_allclose(flat, flat_true / np.linalg.norm(flat_true), rtol=1e-4, atol=1e-7)


def test_subsampled_directions_is_an_unbiased_projection():
    """E[sum_u <g,u> u] = (D / n) g, so (n / D) times it is an unbiased estimate of g."""
    quad = Quadratic(dim=8)
    directions, draws = 3, 3000
    family = aug.subsample_directions(quad, directions)
    cfg = family.sample(KEY)
    params, state = family.init(KEY, cfg)
    batch = quad.get_batch(np.random.default_rng(0), "train")
    grad = jax.jit(jax.vmap(lambda k: family.loss_and_grad(params, state, k, batch, cfg)[1]["w"]))
    samples = np.asarray(grad(jax.random.split(KEY, draws))) * quad.dim / directions
    true = np.asarray(jax.grad(lambda p: quad.loss(p, state, KEY, batch, cfg["inner"])[0])(params)["w"])
    stderr = samples.std(axis=0) / np.sqrt(draws)
    assert np.all(np.abs(samples.mean(axis=0) - true) < 4 * stderr + 1e-6), (samples.mean(axis=0), true)
    # each draw lies in the span of `directions` directions: not the gradient itself
    assert not np.allclose(samples[0], true)


@pytest.mark.parametrize("delay", [1, 3])
def test_delayed_gradients_are_the_gradients_of_delay_steps_ago(delay):
    quad = Quadratic(dim=5)
    family = aug.delayed_gradients(quad, delay)
    cfg = family.sample(KEY)
    params, state = family.init(KEY, cfg)
    batch = quad.get_batch(np.random.default_rng(0), "train")
    true_grad = jax.jit(lambda p: jax.grad(lambda q: quad.loss(q, {}, KEY, batch, cfg["inner"])[0])(p))
    history, lr = [params], 0.1
    step = jax.jit(family.loss_and_grad)
    for t in range(6):
        (_, state), g = step(params, state, KEY, batch, cfg)
        expected = true_grad(history[max(0, t - delay)])  # the buffer starts full of the initial params
        np.testing.assert_allclose(np.asarray(g["w"]), np.asarray(expected["w"]), rtol=1e-6)
        params = jax.tree.map(lambda p, d: p - lr * d, params, g)
        history.append(params)


def test_bf16_keeps_bf16_params_and_gradients():
    family = aug.bfloat16(BASE)
    batch = family.get_batch(np.random.default_rng(0), "train")
    cfg = family.sample(KEY)
    params, state = family.init(KEY, cfg)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    (loss, _), g = _grad(family, params, state, batch, cfg)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g))
    assert np.isfinite(float(loss))


def test_reduced_batch_keeps_the_first_rows():
    family = aug.reduced_batch(BASE, 0.3)
    full = BASE.get_batch(np.random.default_rng(5), "train")
    part = family.get_batch(np.random.default_rng(5), "train")
    assert part["image"].shape[0] == 2 == family.batch_spec()["image"].shape[0]
    np.testing.assert_array_equal(part["image"], full["image"][:2])
    assert aug.reduced_batch(BASE, 0.01).batch_spec()["label"].shape == (1,)


def test_stacked_augmentations_report_their_order():
    family = aug.delayed_gradients(aug.bfloat16(aug.reparam_weights(BASE, "global")), 2)
    assert family.augmentations() == ["Reparam[global,0.01-100]", "BF16", "Delay[2]"]
    assert family.base() is BASE
    assert family.normalizer(jnp.float32(1.0)) == BASE.normalizer(jnp.float32(1.0))


def test_num_params_counts_what_init_returns():
    """num_params skips the sampled initialiser's switch and the augmentations (cheap to
    compute for `python -m tasks sample`), and still counts what a real init returns."""
    base = ImageMLP("synthetic_shapes", (8, 5), batch_size=8, image_size=4)  # sampled init and activation
    for family in (base, aug.reparam_weights(aug.es_gradient(base, 0.01, 2), "tensor")):
        params, _ = family.init(KEY, family.sample(KEY))
        assert family.num_params == sum(x.size for x in jax.tree.leaves(params)) > 8 * 5 + 5 * 10
