"""Bad input gets a clear, specific error; the documented edge behaviour holds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import assert_trees_close, grads_like, lively_meta_params
from velojax import optimizer


@pytest.fixture(scope="module")
def meta():
    return lively_meta_params()


@pytest.fixture(scope="module")
def tx(meta):
    return optimizer.velo(10, weights=meta)


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.zeros(4)}


@pytest.mark.parametrize("bad", [0, -3, 2**31])
def test_num_steps_out_of_range(meta, bad):
    with pytest.raises(ValueError, match="num_steps must be between 1"):
        optimizer.velo(bad, weights=meta)


@pytest.mark.parametrize("bad", [1.5, "100", None, True])
def test_num_steps_not_an_int(meta, bad):
    with pytest.raises(TypeError, match="num_steps must be an int"):
        optimizer.velo(bad, weights=meta)


def test_missing_value(tx):
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"value=loss"):
        tx.update(grads_like(PARAMS), state, PARAMS)


def test_reference_style_loss_argument_gets_a_hint(tx):
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match="not loss= or extra_args"):
        tx.update(grads_like(PARAMS), state, PARAMS, extra_args={"loss": 1.0})


def test_missing_params(tx):
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(grads_like(PARAMS), tx.init(PARAMS), value=1.0)


def test_value_must_be_a_scalar(tx):
    with pytest.raises(ValueError, match="scalar training loss, got shape"):
        tx.update(grads_like(PARAMS), tx.init(PARAMS), PARAMS, value=jnp.ones(3))


def test_grads_tree_mismatch(tx):
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"grads and params have different tree structures \(missing \['b'\]"):
        tx.update({"w": PARAMS["w"]}, state, PARAMS, value=1.0)
    with pytest.raises(ValueError, match=r"unexpected \['c'\]"):
        tx.update({**grads_like(PARAMS), "c": jnp.ones(2)}, state, PARAMS, value=1.0)
    with pytest.raises(ValueError, match=r"grads leaf 'w' has shape \(4, 3\), but the param has \(3, 4\)"):
        tx.update({"w": jnp.ones((4, 3)), "b": jnp.ones(4)}, state, PARAMS, value=1.0)


def test_state_from_another_tree(tx):
    state = tx.init({"w": jnp.ones((3, 4))})
    with pytest.raises(ValueError, match="initialised for a different parameter tree"):
        tx.update(grads_like(PARAMS), state, PARAMS, value=1.0)
    state = tx.init({"w": jnp.ones((2, 4)), "b": jnp.zeros(4)})
    with pytest.raises(
        ValueError, match=r"group of param 'w' has accumulators of shape \(1, 4, 2, 4\), expected \(1, 4, 3, 4\)"
    ):
        tx.update(grads_like(PARAMS), state, PARAMS, value=1.0)
    with pytest.raises(TypeError, match="expected the VeLOState"):
        tx.update(grads_like(PARAMS), {"not": "a state"}, PARAMS, value=1.0)


def test_integer_leaves_are_refused(tx):
    params = {"w": jnp.ones((2, 2)), "step": jnp.asarray(3, jnp.int32)}
    with pytest.raises(TypeError, match=r"param leaf 'step' has dtype int32"):
        tx.init(params)


def test_integer_grads_are_refused(tx):
    state = tx.init(PARAMS)
    with pytest.raises(TypeError, match=r"grads leaf 'b' has dtype int32"):
        tx.update({"w": PARAMS["w"], "b": jnp.ones(4, jnp.int32)}, state, PARAMS, value=1.0)


def test_bad_weights_argument(meta):
    with pytest.raises(TypeError, match="weights must be None"):
        optimizer.velo(10, weights=42)
    with pytest.raises(ValueError, match=r"rnn_params/step_size/w has shape \(32, 1\), expected \(16, 1\)"):
        optimizer.velo(10, weights=meta, config=optimizer.VeLOConfig(lstm_hidden_size=16, param_inits=8))
    with pytest.raises(ValueError, match="weight_decay must be a non-negative"):
        optimizer.velo(10, weights=meta, weight_decay=-1.0)


def test_non_finite_loss_is_not_absorbed(tx):
    """A NaN or inf loss leaves the loss statistics as they were; the step still happens."""
    update = jax.jit(tx.update)
    state = tx.init(PARAMS)
    for t, loss in enumerate([2.0, 1.8, 1.7]):
        _, state = update(grads_like(PARAMS, t), state, PARAMS, value=loss)
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        u, after = update(grads_like(PARAMS, 9), state, PARAMS, value=bad)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((u, after)))
        for a, b in zip(after.loss_buffer, state.loss_buffer):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(after.iteration) == int(state.iteration) + 1
    # and a finite loss afterwards is absorbed as usual
    _, later = update(grads_like(PARAMS, 10), after, PARAMS, value=1.5)
    assert int(later.loss_buffer.count) == int(state.loss_buffer.count) + 1


def test_nan_gradient_entries_count_as_zero(tx):
    state = tx.init(PARAMS)
    grads = grads_like(PARAMS)
    with_nan = {"w": grads["w"].at[0, 1].set(jnp.nan), "b": grads["b"]}
    zeroed = {"w": grads["w"].at[0, 1].set(0.0), "b": grads["b"]}
    update = jax.jit(tx.update)  # the program test_non_finite_loss_is_not_absorbed compiles
    u_nan, s_nan = update(with_nan, state, PARAMS, value=1.0)
    u_zero, s_zero = update(zeroed, state, PARAMS, value=1.0)
    assert_trees_close(u_nan, u_zero, 1e-6)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(s_nan))


def test_infinite_gradients_are_clipped_like_the_reference(tx):
    state = tx.init(PARAMS)
    grads = grads_like(PARAMS)
    update = jax.jit(tx.update)
    u_inf, _ = update({"w": grads["w"].at[1, 2].set(jnp.inf), "b": grads["b"]}, state, PARAMS, value=1.0)
    u_max, _ = update({"w": grads["w"].at[1, 2].set(1000.0), "b": grads["b"]}, state, PARAMS, value=1.0)
    assert_trees_close(u_inf, u_max, 1e-6)
