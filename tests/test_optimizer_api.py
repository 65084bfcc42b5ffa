"""The optax contract: any pytree, jit, chain, MultiSteps, apply_if_finite, flax nnx,
dtype preservation, sharding, weight decay, running past num_steps.

Every leaf kind is checked on `mixed_params` (structure, dtypes, the pure core); the
wrappers (chain, apply_if_finite, weight decay, donation) on a few leaves: VeLO compiles
one program per leaf shape and eager updates compile op by op, so big trees and eager
calls are kept to the tests that need them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tests.helpers import SMALL, assert_trees_close, grads_like, lively_meta_params, mixed_params
from velojax import optimizer


@pytest.fixture(scope="module")
def meta():
    return lively_meta_params()


def few_leaves() -> dict:
    """A matrix, two same-shaped vectors (stacked into one group) and a scalar."""
    return {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4), "c": jnp.zeros(4), "s": jnp.asarray(0.5)}


def run(tx, params, steps=3, losses=(2.0, 1.5, 1.7, 1.2, 1.1, 1.0)):
    """(all updates, final state, final params) of `steps` jitted steps with synthetic grads."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for t in range(steps):
        updates, state = update(grads_like(params, t), state, params, value=losses[t])
        history.append(updates)
        params = optax.apply_updates(params, updates)
    return history, state, params


def test_update_keeps_structure_shapes_and_dtypes(meta):
    params = mixed_params()
    updates, state, new_params = run(optimizer.velo(10, weights=meta), params)
    for u in updates:
        assert jax.tree.structure(u) == jax.tree.structure(params)
        for x, p in zip(jax.tree.leaves(u), jax.tree.leaves(params)):
            assert x.shape == p.shape and x.dtype == p.dtype
            assert np.all(np.isfinite(np.asarray(x)))
    # every tensor moved, and by a relative amount VeLO-like (not 0, not huge)
    for p0, p1 in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)):
        delta = np.abs(np.asarray(p1) - np.asarray(p0)).max()
        assert 0 < delta < 10 * (np.abs(np.asarray(p0)).max() + 1e-3)
    assert int(state.iteration) == 3 and int(state.num_steps) == 10
    assert state.lstm.hidden.shape == (len(jax.tree.leaves(params)), SMALL.lstm_hidden_size)


def test_state_holds_no_copy_of_params(meta):
    params = mixed_params()
    state = optimizer.velo(10, weights=meta).init(params)
    n = sum(p.size for p in jax.tree.leaves(params))
    state_floats = sum(g.moments.size for g in state.groups)
    assert state_floats == 4 * n  # 3 momenta + rms: no params in there
    assert not hasattr(state, "params")


def test_jit_matches_eager(meta):
    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.zeros(4)}
    tx = optimizer.velo(5, weights=meta)
    grads, state = grads_like(params), tx.init(params)
    eager, _ = tx.update(grads, state, params, value=1.0)
    jitted, _ = jax.jit(tx.update)(grads, state, params, value=1.0)
    assert_trees_close(jitted, eager, 1e-5)


def test_chain_with_global_norm_clipping(meta):
    params = few_leaves()
    chained = optax.chain(optax.clip_by_global_norm(1.0), optimizer.velo(10, weights=meta))
    plain = optimizer.velo(10, weights=meta)
    grads = grads_like(params, scale=10.0)  # global norm far above 1
    u_chain, _ = jax.jit(chained.update)(grads, chained.init(params), params, value=2.0)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    u_plain, _ = jax.jit(plain.update)(clipped, plain.init(params), params, value=2.0)
    # Fused and separate clipping round differently (~1e-5 relative); unclipped grads differ by O(1).
    assert_trees_close(u_chain, u_plain, 1e-4)


@jax.numpy_dtype_promotion("standard")  # optax.MultiSteps itself divides f32 by int32
def test_multisteps_applies_velo_to_mean_gradient(meta):
    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.zeros(4)}
    inner = optimizer.velo(5, weights=meta)
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    state = tx.init(params)
    g0, g1 = grads_like(params, 0), grads_like(params, 1)
    update = jax.jit(tx.update)
    u0, state = update(g0, state, params, value=3.0)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u0))
    u1, state = update(g1, state, params, value=2.0)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g0, g1)
    expected, _ = jax.jit(inner.update)(mean, inner.init(params), params, value=2.0)
    assert_trees_close(u1, expected, 1e-5)
    assert int(state.inner_opt_state.iteration) == 1


def test_apply_if_finite_skips_nan_steps(meta):
    params = few_leaves()
    tx = optax.apply_if_finite(optimizer.velo(10, weights=meta), max_consecutive_errors=3)
    state = tx.init(params)
    bad = jax.tree.map(lambda g: g.at[...].set(jnp.nan), grads_like(params))
    u, state2 = jax.jit(tx.update)(bad, state, params, value=1.0)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    assert int(state2.inner_state.iteration) == 0 and int(state2.notfinite_count) == 1
    u, state3 = jax.jit(tx.update)(grads_like(params), state2, params, value=1.0)
    assert int(state3.inner_state.iteration) == 1
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(u))


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(6, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 2, rngs=rngs)
        self.calls = nnx.Variable(jnp.array(0))  # not a Param: must not be optimised

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def test_flax_nnx_optimizer(meta):
    x, y = jnp.ones((4, 6)), jnp.zeros((4, 2))
    model = _Net(nnx.Rngs(0))
    tx = optimizer.velo(10, weights=meta)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    params = nnx.state(model, nnx.Param)
    loss_fn = lambda m: jnp.mean((m(x) - y) ** 2)  # noqa: E731
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    # the functional path on the same pure arrays
    pure_params, pure_grads = nnx.to_pure_dict(params), nnx.to_pure_dict(nnx.state(grads, nnx.Param))
    expected, _ = jax.jit(tx.update)(pure_grads, tx.init(pure_params), pure_params, value=loss)
    before = jax.tree.map(jnp.copy, pure_params)
    nnx.jit(lambda opt, model, grads, loss: opt.update(model, grads, value=loss))(opt, model, grads, loss)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    moved = jax.tree.map(lambda a, b: a - b, after, before)
    assert_trees_close(moved, expected, 1e-4)
    assert int(model.calls[...]) == 0


def test_flax_linen_params(meta):
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(1)])
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
    tx = optimizer.velo(10, weights=meta)
    loss_fn = lambda v: jnp.mean(model.apply(v, jnp.ones((2, 3))) ** 2)  # noqa: E731
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, _ = jax.jit(tx.update)(grads, tx.init(variables), variables, value=loss)
    assert jax.tree.structure(updates) == jax.tree.structure(variables)


def test_bf16_params_keep_their_dtype(meta):
    params = mixed_params(dtype=jnp.bfloat16)
    updates, state, new_params = run(optimizer.velo(10, weights=meta), params)
    acc = optimizer.leaf_accumulators(state, params)
    for u in jax.tree.leaves(updates[-1]) + jax.tree.leaves(new_params) + jax.tree.leaves((acc["mu"], acc["nu"])):
        assert u.dtype == jnp.bfloat16
    for v in jax.tree.leaves(acc["factored"]) + jax.tree.leaves(state.lstm):
        assert v.dtype == jnp.float32
    # bf16 follows the f32 trajectory at bf16 resolution
    _, _, f32_params = run(optimizer.velo(10, weights=meta), jax.tree.map(lambda x: x.astype(jnp.float32), params))
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(f32_params)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), atol=0.05, rtol=0.02)


def test_sharded_params_give_the_same_updates(meta):
    devices = jax.devices()
    assert len(devices) >= 2, "conftest forces 2 CPU devices"
    mesh = Mesh(np.array(devices[:2]), ("x",))
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 6)), "v": jnp.linspace(0, 1, 10), "s": jnp.asarray(0.3)}
    spec = {"w": PartitionSpec("x"), "v": PartitionSpec("x"), "s": PartitionSpec()}
    sharded = jax.tree.map(lambda p, s: jax.device_put(p, NamedSharding(mesh, s)), params, spec)
    tx = optimizer.velo(10, weights=meta)
    outs = []
    for p in (params, sharded):
        updates, state, new_p = run(tx, p, steps=2)
        outs.append((updates[-1], new_p))
    assert sharded["w"].sharding.spec == PartitionSpec("x")
    assert_trees_close(outs[1][0], outs[0][0], 1e-5)
    assert_trees_close(outs[1][1], outs[0][1], 1e-6)


def test_weight_decay_matches_the_reference_wrapper(meta):
    params = few_leaves()
    wd = 1e-2
    grads = grads_like(params)
    decayed = optimizer.velo(10, weights=meta, weight_decay=wd)
    plain = optimizer.velo(10, weights=meta)
    u, _ = jax.jit(decayed.update)(grads, decayed.init(params), params, value=2.0)
    l2 = sum(float(jnp.sum(p.astype(jnp.float32) ** 2)) for p in jax.tree.leaves(params))
    expected, _ = jax.jit(plain.update)(
        jax.tree.map(lambda g, p: g + wd * p, grads, params), plain.init(params), params, value=2.0 + wd * l2
    )
    assert_trees_close(u, expected, 1e-5)
    assert optimizer.velo(10, weights=meta).update is not None  # default: off


def test_weight_decay_mask_decays_only_where_true(meta):
    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4)}
    grads, wd = grads_like(params), 0.05
    mask = {"w": True, "b": False}
    plain = optimizer.velo(10, weights=meta)
    expected, _ = plain.update(
        {"w": grads["w"] + wd * params["w"], "b": grads["b"]},
        plain.init(params),
        params,
        value=2.0 + wd * float(jnp.sum(params["w"] ** 2)),
    )
    for m in (mask, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)):  # a tree, or a callable as optax.adamw
        tx = optimizer.velo(10, weights=meta, weight_decay=wd, mask=m)
        u, _ = tx.update(grads, tx.init(params), params, value=2.0)
        assert_trees_close(u, expected, 1e-5)
    tx = optimizer.velo(10, weights=meta, weight_decay=wd, mask={"w": True})
    with pytest.raises(ValueError, match="mask and params have different tree structures"):
        tx.update(grads, tx.init(params), params, value=2.0)
    tx = optimizer.velo(10, weights=meta, weight_decay=wd, mask={"w": True, "b": jnp.asarray(False)})
    with pytest.raises(TypeError, match="mask leaf 'b' must be a Python bool"):
        tx.update(grads, tx.init(params), params, value=2.0)


def test_inject_hyperparams_and_tree_get(meta):
    """num_steps and weight_decay injected as optax does; VeLO plans its run at init, so a
    num_steps changed afterwards changes nothing."""
    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4)}
    grads = grads_like(params)
    injected = optax.inject_hyperparams(optimizer.velo, static_args=("weights",))
    tx = injected(num_steps=10, weights=meta, weight_decay=0.01)
    direct = optimizer.velo(10, weights=meta, weight_decay=0.01)
    state = tx.init(params)
    u, state = jax.jit(tx.update)(grads, state, params, value=2.0)
    expected, _ = direct.update(grads, direct.init(params), params, value=2.0)
    assert_trees_close(u, expected, 1e-5)
    assert int(optax.tree_utils.tree_get(state, "iteration")) == 1
    assert int(state.inner_state.num_steps) == 10
    state.hyperparams["num_steps"] = jnp.asarray(1000)
    again, _ = jax.jit(tx.update)(grads, state, params, value=2.0)
    _, second = direct.update(grads, direct.init(params), params, value=2.0)
    planned, _ = direct.update(grads, second, params, value=2.0)
    assert_trees_close(again, planned, 1e-4)  # jit vs eager rounding
    with pytest.raises(ValueError, match="num_steps must be between"):
        optimizer.velo(jnp.asarray(0), weights=meta)
    with pytest.raises(ValueError, match="weight_decay must be a non-negative"):
        optimizer.velo(10, weights=meta, weight_decay=jnp.asarray(-1.0))


def test_state_saves_and_restores_with_orbax(meta, tmp_path):
    import orbax.checkpoint as ocp

    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4)}
    tx = optimizer.velo(10, weights=meta)
    _, state, _ = run(tx, params, steps=2)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    assert type(restored) is type(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    update = jax.jit(tx.update)
    u1, _ = update(grads_like(params, 3), restored, params, value=1.0)
    u2, _ = update(grads_like(params, 3), state, params, value=1.0)
    assert_trees_close(u1, u2, 0.0)


def test_training_past_num_steps_keeps_working(meta):
    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.ones(4)}
    updates, state, new_params = run(optimizer.velo(2, weights=meta), params, steps=6)
    assert int(state.iteration) == 6
    for u in updates:
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(u))


def test_zero_size_and_empty_trees(meta):
    tx = optimizer.velo(10, weights=meta)
    params = {"empty": jnp.zeros((0, 3)), "w": jnp.ones((2, 2))}
    (u,), state, _ = run(tx, params, steps=1)
    assert u["empty"].shape == (0, 3) and np.any(np.asarray(u["w"]) != 0)
    assert state.lstm.hidden.shape[0] == 1
    (u,), state, _ = run(tx, {}, steps=1)
    assert u == {} and int(state.iteration) == 1


def test_pure_core_agrees_with_the_optax_wrapper(meta):
    params = mixed_params()
    grads = grads_like(params)
    tx = optimizer.velo(10, weights=meta)
    u_tx, s_tx = jax.jit(tx.update)(grads, tx.init(params), params, value=1.3)
    state = optimizer.velo_init(meta, params, 10, SMALL)
    u_core, s_core = jax.jit(optimizer.velo_update, static_argnums=5)(meta, state, grads, params, 1.3, SMALL)
    # Two programs round differently; updates are cast(p - step) - p, so a 1-ulp flip of p shows.
    assert_trees_close(u_core, u_tx, 1e-4)
    assert_trees_close(s_core.lstm, s_tx.lstm, 1e-4)


def test_state_and_params_can_be_donated(meta):
    """Every state leaf is its own buffer (same-shaped leaves included, which run stacked),
    so a jitted step can donate params and state."""
    params = few_leaves()
    tx = optimizer.velo(10, weights=meta)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, value=1.0)
        return optax.apply_updates(params, updates), state

    donated = jax.jit(step, donate_argnums=(0, 1))
    expected_params, _ = jax.jit(step)(params, tx.init(params), grads_like(params))
    new_params, state = donated(jax.tree.map(jnp.copy, params), tx.init(params), grads_like(params))
    assert_trees_close(new_params, expected_params, 1e-6)
    new_params, state = donated(new_params, state, grads_like(params, 1))  # buffers are reusable
    assert int(state.iteration) == 2


def test_grouping_same_shaped_leaves_changes_nothing(meta, monkeypatch):
    """Same-shaped small leaves run stacked; the result equals running each alone (LSTM
    rows, MLP weights and statistics stay with their leaf)."""
    from velojax import core

    keys = iter(jax.random.split(jax.random.PRNGKey(3), 8))
    params = {  # interleaved shapes, so groups are not contiguous in leaf order
        "a": jax.random.normal(next(keys), (4, 6)),
        "b": jax.random.normal(next(keys), (6,)),
        "c": jax.random.normal(next(keys), (4, 6)) * 3.0,
        "d": jax.random.normal(next(keys), (6,)) * 0.1,
        "e": jax.random.normal(next(keys), (4, 6)) * 0.3,
    }
    assert core.group_layout(params) == ((0, 2, 4), (1, 3))

    def two_steps():
        tx = optimizer.velo(10, weights=meta)
        updates, state, _ = run(tx, params, steps=2)
        return updates[-1], state

    grouped, grouped_state = two_steps()
    monkeypatch.setattr(core, "_CHUNK_ELEMENTS", 0)
    assert core.group_layout(params) == ((0,), (1,), (2,), (3,), (4,))
    alone, alone_state = two_steps()
    assert_trees_close(grouped, alone, 1e-5)
    assert_trees_close(grouped_state.lstm, alone_state.lstm, 1e-5)
    assert_trees_close(grouped_state.moment_stats, alone_state.moment_stats, 1e-5)
