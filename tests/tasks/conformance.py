"""The contract every task family must meet (used by each family's tests)."""

from __future__ import annotations

import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import data
from tasks.base import TaskFamily, train_scan
from tests.conftest import REPO

# The reference's task lists (tests may read ../shared; the package never does).
VELODROME = REPO.parent / "shared" / "velodrome" / "speedup_over_multiple_baselines.json"


def reference_names(prefix: str) -> set[str] | None:
    """Names in the reference's 125-task list that start with `prefix` (None if absent)."""
    if not VELODROME.is_file():
        return None
    return {n for n in json.loads(VELODROME.read_text()) if n.startswith(prefix)}


@contextlib.contextmanager
def mock_real_datasets(num_examples: int = 20):
    """Real (tfds) datasets replaced by tfds's random mock examples; `data.load`'s
    per-process cache is cleared before and after, so no mock data leaks into other tests."""
    import tensorflow_datasets as tfds

    data.load.cache_clear()
    try:
        with tfds.testing.mock_data(num_examples=num_examples):
            yield
    finally:
        data.load.cache_clear()


def check_family(family: TaskFamily, *, lr: float = 3e-3, steps: int = 5, seed: int = 0) -> dict:
    """Asserts the task-family contract and returns some facts for further checks:
    builds; batch matches batch_spec; loss, normalised loss and gradients finite; jit +
    vmap over 2 tasks (different keys/configs) works and gives different losses; `steps`
    Adam steps on one fixed batch lower the loss. Returns {"losses", "params", "batch"}."""
    key = jax.random.PRNGKey(seed)
    rng = np.random.default_rng(seed)
    batch = family.get_batch(rng, "train")
    spec = family.batch_spec()
    assert jax.tree.structure(batch) == jax.tree.structure(spec), (jax.tree.structure(batch), jax.tree.structure(spec))
    for x, s in zip(jax.tree.leaves(batch), jax.tree.leaves(spec)):
        assert tuple(x.shape) == tuple(s.shape) and np.dtype(x.dtype) == np.dtype(s.dtype), (x.shape, x.dtype, s)
    for split in ("outer_valid", "test"):
        other = family.get_batch(rng, split)
        assert jax.tree.structure(other) == jax.tree.structure(spec)

    # Two tasks under one vmap (one compile for both the single-task and the vmap checks).
    keys = jax.random.split(key, 2)
    cfgs = jax.vmap(family.sample)(keys)
    ps, ss = jax.vmap(family.init)(keys, cfgs)
    assert family.num_params == sum(int(np.prod(p.shape[1:])) for p in jax.tree.leaves(ps)) > 0
    (losses, _), grads = jax.jit(jax.vmap(family.loss_and_grad, in_axes=(0, 0, 0, None, 0)))(ps, ss, keys, batch, cfgs)
    assert losses.shape == (2,) and np.all(np.isfinite(np.asarray(losses))), losses
    assert float(losses[0]) != float(losses[1])  # two different tasks
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grads))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
    assert np.isfinite(float(family.normalizer(losses[0], jax.tree.map(lambda x: x[0], cfgs))))
    assert family.forward_flops() > 0

    batches = jax.tree.map(lambda x: np.stack([x] * (steps + 1)), batch)
    cfg = family.sample(key)
    params, losses = jax.jit(lambda b: train_scan(family, optax.adam(lr), key, b, cfg, with_loss_value=False))(batches)
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    return {"losses": losses, "params": params, "batch": batch}


def loss_on(family: TaskFamily, params, batch, key=None, cfg=None):
    key = jax.random.PRNGKey(0) if key is None else key
    cfg = family.sample(key) if cfg is None else cfg
    state = family.init(key, cfg)[1]
    return float(jnp.asarray(family.loss(params, state, key, batch, cfg)[0]))
