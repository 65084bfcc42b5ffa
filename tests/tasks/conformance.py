"""The contract every task family must meet (used by each family's tests)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks.base import TaskFamily, train_scan


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

    cfg = family.sample(key)
    params, state = family.init(key, cfg)
    assert family.num_params == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) > 0
    (loss, _), grads = jax.jit(family.loss_and_grad)(params, state, key, batch, cfg)
    assert loss.shape == () and np.isfinite(float(loss)), loss
    assert np.isfinite(float(family.normalizer(loss, cfg)))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grads))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
    assert family.forward_flops() > 0

    keys = jax.random.split(key, 2)
    cfgs = jax.vmap(family.sample)(keys)
    ps, ss = jax.vmap(family.init)(keys, cfgs)
    losses, _ = jax.jit(jax.vmap(family.loss, in_axes=(0, 0, 0, None, 0)))(ps, ss, keys, batch, cfgs)
    assert losses.shape == (2,) and np.all(np.isfinite(np.asarray(losses)))
    assert float(losses[0]) != float(losses[1])  # two different tasks

    batches = jax.tree.map(lambda x: np.stack([x] * (steps + 1)), batch)
    params, losses = jax.jit(lambda b: train_scan(family, optax.adam(lr), key, b, cfg, with_loss_value=False))(batches)
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    return {"losses": losses, "params": params, "batch": batch}


def loss_on(family: TaskFamily, params, batch, key=None, cfg=None):
    key = jax.random.PRNGKey(0) if key is None else key
    cfg = family.sample(key) if cfg is None else cfg
    state = family.init(key, cfg)[1]
    return float(jnp.asarray(family.loss(params, state, key, batch, cfg)[0]))
