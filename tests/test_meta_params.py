"""Meta-parameter layout, fresh initialisation, config inference and validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from velojax import VeLOConfig, hand_designed_meta_params, init_meta_params, optimizer
from velojax import meta_params as meta_params_lib
from velojax.meta_params import config_from_meta_params, meta_param_shapes, num_meta_params, path_str


def test_velo_layout_has_the_official_names_and_size():
    shapes = meta_param_shapes()
    names = {path_str(p): s.shape for p, s in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    assert len(names) == 33
    assert names["rnn_params/rnn/linear/w"] == (1024, 2048)
    assert names["ff_mod_stack/~/w0__13"] == (256, 3, 4)
    assert names["ff_mod_stack/~/w2"] == (256, 4, 3)
    assert names["lstm_init_state/hidden"] == (1, 512)
    assert num_meta_params(shapes) == 2_320_385
    assert VeLOConfig().num_lstm_inputs == 30 and VeLOConfig().num_mlp_inputs == 30


def test_init_follows_the_reference_distributions():
    meta = init_meta_params(jax.random.PRNGKey(0))
    gates = np.asarray(meta["rnn_params"]["rnn/linear"]["w"])
    sigma = 1 / np.sqrt(1024)
    assert np.abs(gates).max() <= 2 * sigma + 1e-7  # truncated at 2 sigma
    np.testing.assert_allclose(gates.std(), 0.8796 * sigma, rtol=0.01)  # std of N(0,1) cut at +-2
    w0 = np.concatenate([np.asarray(meta["ff_mod_stack"]["~"][f"w0__{i}"]).ravel() for i in range(14)])
    np.testing.assert_allclose(w0.std(), 0.8796 / np.sqrt(30), rtol=0.03)
    np.testing.assert_allclose(np.asarray(meta["ff_mod_stack"]["~"]["w1"]).std(), 0.8796 / 2, rtol=0.05)
    for leaf in ("b0", "b1", "b2"):
        assert not np.any(np.asarray(meta["ff_mod_stack"]["~"][leaf]))
    assert not np.any(np.asarray(meta["lstm_init_state"]["hidden"]))
    assert not np.any(np.asarray(meta["rnn_params"]["step_size"]["b"]))
    # deterministic in the key, different across keys
    again = init_meta_params(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(
        np.asarray(again["rnn_params"]["linear"]["w"]), np.asarray(meta["rnn_params"]["linear"]["w"])
    )
    other = init_meta_params(jax.random.PRNGKey(1))
    assert not np.allclose(
        np.asarray(other["rnn_params"]["linear"]["w"]), np.asarray(meta["rnn_params"]["linear"]["w"])
    )


@pytest.mark.parametrize(
    "config",
    [VeLOConfig.small(), VeLOConfig(lstm_hidden_size=16, param_inits=4, ff_hidden_size=8, ff_hidden_layers=3)],
)
def test_config_is_read_back_from_the_shapes(config):
    meta = init_meta_params(jax.random.PRNGKey(0), config)
    assert config_from_meta_params(meta) == config


def test_custom_decays_change_the_channel_counts():
    config = VeLOConfig(momentum_decays=(0.5, 0.9), adafactor_decays=(0.9, 0.99), lstm_hidden_size=8, param_inits=2)
    assert config.num_mlp_inputs == 1 + 1 + 1 + 2 + 1 + 2 + 1 + 2 + 1 + 2 * 4 + 2
    assert config.num_lstm_inputs == 28
    meta = init_meta_params(jax.random.PRNGKey(0), config)
    tx = optimizer.velo(5, weights=meta, config=config)
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    updates, state = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), tx.init(params), params, value=1.0)
    acc = optimizer.leaf_accumulators(state, params)
    assert len(acc["mu"]["w"]) == 2 and acc["factored"]["w"][0].shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rms_decays=(0.9, 0.99)), "exactly one decay"),
        (dict(adafactor_decays=(0.9,)), "same length"),
        (dict(momentum_decays=(1.5,)), r"decays in \[0, 1\)"),
        (dict(lstm_hidden_size=0), "positive int"),
        (dict(param_inits=2.5), "positive int"),
    ],
)
def test_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VeLOConfig(**kwargs)


def test_config_is_hashable_and_lists_become_tuples():
    config = VeLOConfig(momentum_decays=[0.9, 0.99, 0.999])
    assert config == VeLOConfig() and hash(config) == hash(VeLOConfig())


def test_not_a_meta_param_tree():
    with pytest.raises(ValueError, match="not a VeLO meta-parameter tree"):
        config_from_meta_params({"a": 1})


def test_hand_designed_weights_train():
    """The offline fallback descends: it steps along normalised m/sqrt(rms)."""
    target = jnp.linspace(-1.0, 1.0, 24).reshape(4, 6)
    loss_fn = lambda p: jnp.mean((p["w"] - target) ** 2)  # noqa: E731
    tx = optimizer.velo(100, weights=hand_designed_meta_params())
    params = {"w": jnp.full((4, 6), 0.5)}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(100):
        params, state, loss = step(params, state)
        first = first if first is not None else float(loss)
    assert float(loss) < 0.5 * first


def _lr_mult_at(meta, fraction: float) -> float:
    from velojax.velo_network import LSTMState, rnn_forward

    x = np.zeros((1, 30), np.float32)
    x[0, :9] = np.tanh(10.0 * (fraction - np.asarray(meta_params_lib.TIME_CENTERS)))
    width = meta["lstm_init_state"]["hidden"].shape[-1]
    state = LSTMState(jnp.zeros((1, width)), jnp.zeros((1, width)))
    controls, lr_mult, _ = rnn_forward(meta["rnn_params"], jnp.asarray(x), state)
    return float(lr_mult[0]), np.asarray(controls[0])


@pytest.mark.parametrize("key", [None, jax.random.PRNGKey(3)])
def test_scheduled_meta_params_decay_the_step_along_a_cosine(key):
    config = VeLOConfig.small(32, 8)
    meta = meta_params_lib.scheduled_meta_params(config, lr_mult=10.0, key=key, control=0.1)
    meta_params_lib.check_meta_params(meta, config)
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        lr_mult, controls = _lr_mult_at(meta, f)
        assert abs(lr_mult - 10.0 * 0.5 * (1 + np.cos(np.pi * f))) < 0.5, (f, lr_mult)
        np.testing.assert_allclose(controls, 0.1, atol=0.02 if key is not None else 1e-6)
    with pytest.raises(ValueError, match="lstm_hidden_size >= 9"):
        meta_params_lib.scheduled_meta_params(VeLOConfig.small(8, 4))


@jax.numpy_dtype_promotion("standard")
def test_scheduled_meta_params_decay_shrinks_weights_by_the_set_fraction():
    config = VeLOConfig.small(32, 8)
    meta = meta_params_lib.scheduled_meta_params(config, lr_mult=30.0, decay=0.3)
    params = {"w": jnp.full((4, 3), 0.5)}
    tx = optimizer.velo(100, weights=meta, config=config)
    updates, _ = jax.jit(tx.update)({"w": jnp.zeros((4, 3))}, tx.init(params), params, value=jnp.float32(1.0))
    # no gradient: the step is decay * lr_mult * step_mult * p at the start of the cosine
    np.testing.assert_allclose(updates["w"] / params["w"], -0.3 * 30.0 * 1e-3, rtol=0.1)
    plain = meta_params_lib.scheduled_meta_params(config, lr_mult=30.0)
    tx = optimizer.velo(100, weights=plain, config=config)
    updates, _ = jax.jit(tx.update)({"w": jnp.zeros((4, 3))}, tx.init(params), params, value=jnp.float32(1.0))
    np.testing.assert_array_equal(updates["w"], 0.0)
