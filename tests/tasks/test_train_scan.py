import jax
import numpy as np
import optax
import pytest

import tasks
import velojax
from tasks.families.image_mlp import ImageMLP
from tests.helpers import lively_meta_params

FAMILY = ImageMLP("synthetic_shapes", (8,), batch_size=8, image_size=4, activation="relu", sampled_init=False)


@pytest.mark.parametrize(
    "make",
    [lambda: optax.adam(1e-2), lambda: velojax.optimizer.velo(4, weights=lively_meta_params())],
    ids=["adam", "velo"],
)
def test_train_scan_is_the_python_training_loop(make):
    """train_scan = init from split(key)[0], then one optimizer step per batch with the
    per-step loss keys split from split(key)[1], `value=` passed to the optimizer."""
    optimizer, key = make(), jax.random.PRNGKey(3)
    batches = FAMILY.stacked_batches(np.random.default_rng(0), "train", 4)
    params, state, losses = jax.jit(lambda b: tasks.train_scan(FAMILY, optimizer, key, b))(batches)

    init_key, loss_key = jax.random.split(key)
    cfg = FAMILY.sample(init_key)
    p, s = FAMILY.init(init_key, cfg)
    opt_state, expected = optimizer.init(p), []
    step = jax.jit(lambda p, s, o, b, k: _step(optimizer, cfg, p, s, o, b, k))
    for i, k in enumerate(jax.random.split(loss_key, 4)):
        batch = jax.tree.map(lambda x, i=i: x[i], batches)
        p, s, opt_state, loss = step(p, s, opt_state, batch, k)
        expected.append(float(loss))
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert jax.tree.structure(state) == jax.tree.structure(s)


def _step(optimizer, cfg, params, state, opt_state, batch, key):
    (loss, state), grads = FAMILY.loss_and_grad(params, state, key, batch, cfg)
    updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), state, opt_state, loss
