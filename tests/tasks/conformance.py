"""The contract every task family must meet (used by each family's tests)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from eval.published import MULTIPLE_BASELINES
from tasks.base import TaskFamily
from tasks.data import mock_real_datasets  # noqa: F401  (re-exported for the tests)


def reference_names(prefix: str) -> set[str]:
    """Names in the reference's 125-task list (its published baselines, shipped in
    eval/published) that start with `prefix`."""
    return {n for n in json.loads(MULTIPLE_BASELINES.read_text()) if n.startswith(prefix)}


def check_family(family: TaskFamily, *, lr: float = 3e-3, optimizer=None, steps: int = 5, seed: int = 0) -> dict:
    """Asserts the task-family contract and returns some facts for further checks:
    batches match batch_spec; two tasks (keys/configs of `seed`) run under one jit + vmap,
    and are different tasks; for each, `steps` steps of `optimizer` (default Adam(lr)) in a
    `lax.scan` on one fixed
    batch and one fixed loss key (so that dropout masks or a learned optimizer's inner
    tasks stay the same) keep the loss, normalised loss and weights finite and lower the
    loss. Finite trained weights and a lower loss imply finite, nonzero gradients (Adam
    turns a NaN/inf gradient into NaN weights, a zero one into no change). One compile.
    Returns task 0's {"losses" [steps], "params" (trained), "batch"}."""
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
    optimizer = optax.adam(lr) if optimizer is None else optimizer

    def run(k, cfg, batch):
        init_key, loss_key = jax.random.split(k)
        params, state = family.init(init_key, cfg)

        def step(carry, _):
            params, state, opt_state = carry
            (loss, state), grads = family.loss_and_grad(params, state, loss_key, batch, cfg)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), state, opt_state), loss

        carry = (params, state, optimizer.init(params))
        (trained, trained_state, _), losses = jax.lax.scan(step, carry, length=steps)
        after, _ = family.loss(trained, trained_state, loss_key, batch, cfg)
        return params, trained, losses, after, family.normalizer(losses[0], cfg)

    keys = jax.random.split(key, 2)
    cfgs = jax.vmap(family.sample)(keys)
    out = jax.jit(jax.vmap(run, in_axes=(0, 0, None)))(keys, cfgs, batch)
    params, trained, losses, after, normalized = jax.tree.map(np.asarray, out)
    before = losses[:, 0]
    assert family.num_params == sum(int(np.prod(p.shape[1:])) for p in jax.tree.leaves(params)) > 0
    assert family.forward_flops() > 0
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(normalized)), (losses, normalized)
    # Different tasks: different initial weights, or (learned optimizers, whose inner tasks
    # are drawn from the loss key) different losses.
    assert before[0] != before[1] or any(np.any(p[0] != p[1]) for p in jax.tree.leaves(params))
    assert all(np.all(np.isfinite(np.asarray(p, np.float32))) for p in jax.tree.leaves(trained))
    assert np.all(after < before), (before, after, losses)
    task0 = jax.tree.map(lambda x: x[0], {"losses": losses, "params": trained})
    return {**task0, "batch": batch}


def loss_on(family: TaskFamily, params, batch, key=None, cfg=None):
    key = jax.random.PRNGKey(0) if key is None else key
    cfg = family.sample(key) if cfg is None else cfg
    state = family.init(key, cfg)[1]
    return float(jnp.asarray(family.loss(params, state, key, batch, cfg)[0]))
