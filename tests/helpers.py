"""Shared test helpers: small non-trivial meta-parameters and parameter trees."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from velojax import VeLOConfig, init_meta_params

SMALL = VeLOConfig.small()  # 32-wide LSTM, bank of 8: fast to build, same code paths


def lively_meta_params(config: VeLOConfig = SMALL, seed: int = 0) -> dict:
    """Random meta-parameters with every leaf non-zero and steps big enough to see (like
    the oracle's recipe, scaled for a bank of 8): zero leaves refilled with N(0, 0.1^2),
    step_size bias 0.1."""
    meta = init_meta_params(jax.random.PRNGKey(seed), config)
    rng = np.random.RandomState(seed + 1000)
    meta = jax.tree.map(
        lambda x: x if np.any(np.asarray(x)) else jnp.asarray(0.1 * rng.randn(*x.shape), jnp.float32), meta
    )
    meta["rnn_params"]["step_size"]["b"] = jnp.full_like(meta["rnn_params"]["step_size"]["b"], 0.1)
    return meta


def mixed_params(seed: int = 0, dtype=jnp.float32) -> dict:
    """Every kind of leaf VeLO must handle: scalar, vector, matrix, conv kernel (HWIO),
    embedding, a (n, 1) column, a rank-5 tensor and a zero-initialised bias."""
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8))
    normal = lambda *shape: jax.random.normal(next(keys), shape, dtype)  # noqa: E731
    return {
        "bias": jnp.zeros((7,), dtype),
        "column": normal(10, 1),
        "conv": {"kernel": normal(3, 3, 4, 8) * 0.2},
        "dense": {"kernel": normal(8, 16) * 0.3, "bias": normal(16) * 0.1},
        "embedding": normal(50, 12),
        "rank5": normal(2, 3, 1, 4, 5),
        "scalar": jnp.asarray(0.5, dtype),
    }


def grads_like(params, step: int = 0, scale: float = 0.1):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1000 + step), len(leaves))
    return jax.tree.unflatten(
        treedef, [(scale * jax.random.normal(k, p.shape, jnp.float32)).astype(p.dtype) for k, p in zip(keys, leaves)]
    )


def assert_trees_close(a, b, rel: float = 1e-5):
    """Same structure and shapes, and leafwise max|a - b| <= rel * rms(b) (with a floor for
    all-zero leaves)."""
    a, b = jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b)  # Python scalars have no .shape
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_equal_shapes(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = np.sqrt(np.mean(y**2)) if y.size else 0.0
        assert np.max(np.abs(x - y), initial=0.0) <= rel * scale + 1e-30, (np.max(np.abs(x - y)), scale)


def assert_tree_finite(tree):
    """Every leaf of `tree` is free of NaN and inf (chex names the offending leaves)."""
    chex.assert_tree_all_finite(tree)
