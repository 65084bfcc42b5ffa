import jax
import numpy as np
import optax
import pytest

import tasks
import velojax
from tasks.families.image_mlp import ImageMLP
from tasks.key_streams import stream_id
from tests.helpers import lively_meta_params
from tests.tasks.test_rollout import KeyedQuadratic

FAMILY = ImageMLP("synthetic_shapes", (8,), batch_size=8, image_size=4, activation="relu", sampled_init=False)


@pytest.mark.parametrize(
    "family, make",
    [
        (FAMILY, lambda: optax.adam(1e-2)),
        (FAMILY, lambda: velojax.optimizer.velo(4, weights=lively_meta_params())),
        (KeyedQuadratic(dim=3, batch_size=2, noise=0.5), lambda: optax.adam(1e-1)),  # its loss reads its key
    ],
    ids=["adam", "velo", "keyed-adam"],
)
def test_train_scan_is_the_python_training_loop(family, make):
    """train_scan = cfg from stream "config" and weights from stream "init" of the task key
    stream(key, "task"), then one optimizer step per batch, step i's loss key
    stream(key, "train_loss", i), `value=` passed to the optimizer."""
    optimizer, key = make(), jax.random.PRNGKey(3)
    batches = family.stacked_batches(np.random.default_rng(0), "train", 4)
    params, state, losses = jax.jit(lambda b: tasks.train_scan(family, optimizer, key, b))(batches)

    task_key = jax.random.fold_in(key, stream_id("task"))
    cfg = family.sample(jax.random.fold_in(task_key, stream_id("config")))
    p, s = family.init(jax.random.fold_in(task_key, stream_id("init")), cfg)
    opt_state, expected = optimizer.init(p), []
    step = jax.jit(lambda p, s, o, b, k: _step(family, optimizer, cfg, p, s, o, b, k))
    for i in range(4):
        batch = jax.tree.map(lambda x, i=i: x[i], batches)
        k = jax.random.fold_in(jax.random.fold_in(key, stream_id("train_loss")), i)
        p, s, opt_state, loss = step(p, s, opt_state, batch, k)
        expected.append(float(loss))
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert jax.tree.structure(state) == jax.tree.structure(s)


def _step(family, optimizer, cfg, params, state, opt_state, batch, key):
    (loss, state), grads = family.loss_and_grad(params, state, key, batch, cfg)
    updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), state, opt_state, loss
