"""The structure of the core step: `core.LeafGrouping` (leaves <-> per-group stacks <-> rows in
leaf order) and the typed `tensor_update.moment_pass` result, checked against direct numpy."""

import functools
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np

from velojax import core
from velojax import tensor_update as tu
from velojax.config import VELO


def _tree() -> dict:
    """Interleaved same-shaped leaves (groups are not contiguous), a scalar, a zero-size leaf,
    three leaves of 8192 elements (two per group under the 16384 limit) and one above it."""
    rng = np.random.RandomState(0)
    n = lambda *shape: jnp.asarray(rng.randn(*shape), jnp.float32)  # noqa: E731
    return {
        "a0": n(4, 6),
        "b0": n(6),
        "a1": n(4, 6),
        "big": n(200, 100),
        "empty": jnp.zeros((0, 3)),
        "m0": n(64, 128),
        "m1": n(64, 128),
        "m2": n(64, 128),
        "s": n(),
        "a2": n(4, 6),
        "b1": n(6),
    }


def test_grouping_round_trips_leaves():
    params = _tree()
    leaves = jax.tree.leaves(params)  # dict order: a0 a1 a2 b0 b1 big empty m0 m1 m2 s
    grouping = core.LeafGrouping.of(params)
    assert grouping.groups == ((0, 1, 2), (3, 4), (5,), (7, 8), (9,), (10,))
    assert grouping.num_leaves == 11 and grouping.active == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]

    stacked = grouping.stack(leaves)
    assert [x.shape for x in stacked] == [(3, 4, 6), (2, 6), (1, 200, 100), (2, 64, 128), (1, 64, 128), (1,)]
    back = grouping.unstack(stacked)
    assert back[6] is None  # the zero-size leaf has no group
    for i, leaf in enumerate(leaves):
        if i != 6:
            np.testing.assert_array_equal(back[i], leaf)

    # Rows: each group's rows (here its leaf indices) land at its leaves' leaf-order rows.
    per_group = [{"leaf": jnp.asarray(idx), "x2": 2 * jnp.asarray(idx)} for idx in grouping.groups]
    rows = grouping.rows_in_leaf_order(per_group)
    np.testing.assert_array_equal(rows["leaf"], grouping.active)
    np.testing.assert_array_equal(rows["x2"], 2 * np.asarray(grouping.active))
    for k, idx in enumerate(grouping.groups):
        np.testing.assert_array_equal(rows["leaf"][grouping.rows(k)], idx)


def _filled(x: jax.Array, n: int, offset: int) -> jax.Array:
    """[n, *x.shape] of offset, offset + 1, ... in x's dtype."""
    return offset + jnp.arange(n * x.size, dtype=x.dtype).reshape((n,) + x.shape)


def test_leaf_accumulators_are_the_group_slices():
    params = _tree()
    leaves, grouping = jax.tree.leaves(params), core.LeafGrouping.of(params)
    groups = []
    for k, idx in enumerate(grouping.groups):  # distinct values per group and leaf, so a wrong slice shows
        accumulators = core.TensorGroup(*tu.init_accumulators(leaves[idx[0]], VELO))
        groups.append(jax.tree.map(functools.partial(_filled, n=len(idx), offset=k), accumulators))
    state = core.VeLOState(None, None, tuple(groups), None, None, None)  # leaf_accumulators reads only groups
    acc = core.leaf_accumulators(state, params)
    assert acc["nu"]["empty"] is None and acc["mu"]["empty"] is None
    m1 = groups[3].moments[1]  # "m1" is the second leaf of group 3
    np.testing.assert_array_equal(acc["nu"]["m1"], m1[VELO.num_momentum])
    for c in range(VELO.num_momentum):
        np.testing.assert_array_equal(acc["mu"]["m1"][c], m1[c])
    for ours, stacked in zip(acc["factored"]["m1"], groups[3].factored):
        np.testing.assert_array_equal(ours, stacked[1])
    np.testing.assert_array_equal(acc["nu"]["s"], groups[5].moments[0, VELO.num_momentum])


def _random_inputs(shape, seed):
    rng = np.random.RandomState(seed)
    k = VELO.num_momentum
    p = rng.randn(*shape).astype(np.float32)
    g = rng.randn(*shape).astype(np.float32) * 0.2  # some entries past the +-0.1 clip
    moments = np.concatenate([rng.randn(k, *shape), rng.rand(1, *shape) + 0.1]).astype(np.float32)
    _, fac = tu.init_accumulators(jnp.asarray(p), VELO)
    fac = tuple((rng.rand(*v.shape) + 0.05).astype(np.float32) for v in fac)
    return p, g, moments, fac


def _direct(p, g, moments, fac) -> dict:
    """The means `moment_pass` reports, in float64 numpy from the definitions."""
    p, g, moments = (np.asarray(x, np.float64) for x in (p, g, moments))
    fac = [np.asarray(v, np.float64) for v in fac]
    m, rms = moments[:-1], moments[-1]
    r = 1 / np.sqrt(rms + 1e-6)
    if len(fac) == 1:  # unfactored: one v per momentum slot
        q_g = [1 / np.sqrt(np.maximum(v + 1e-9, 1e-9)) for v in fac[0]]
        q_m = [v**-0.5 for v in fac[0]]
    else:  # 2-d [3, 4]: rows along axis 0 (v_row [K, 3]), columns along axis 1 (v_col [K, 4])
        v_row, v_col = fac
        row = 1 / np.sqrt(np.maximum(v_row / (v_row.mean(axis=1, keepdims=True) + 1e-9), 1e-9))
        col = 1 / np.sqrt(np.maximum(v_col, 1e-9))
        q_g = q_m = [rk[:, None] * ck[None, :] for rk, ck in zip(row, col)]
    xs = list(m) + [rms]
    return {
        "p2": np.mean(p**2),
        "g2": np.mean(g**2),
        "clipped_g2": np.mean(np.clip(g, -0.1, 0.1) ** 2),
        "m_r2": [np.mean((mk * r) ** 2) for mk in m],
        "r2": np.mean(r**2),
        "g_r2": np.mean((g * r) ** 2),
        "fac_g2": [np.mean((g * q) ** 2) for q in q_g],
        "fac_m2": [np.mean((mk * q) ** 2) for mk, q in zip(m, q_m)],
        "shift": [x.reshape(-1)[0] for x in xs],
        "mean_d": [np.mean(x - x.reshape(-1)[0]) for x in xs],
        "mean_d2": [np.mean((x - x.reshape(-1)[0]) ** 2) for x in xs],
    }


def test_moment_pass_fields_are_the_named_means():
    for shape, seed in (((3, 4), 1), ((10,), 2)):
        inputs = _random_inputs(shape, seed)
        result = tu.moment_pass(*map(jnp.asarray, inputs[:3]), tuple(map(jnp.asarray, inputs[3])))
        assert isinstance(result, tu.MomentPass)
        expected = _direct(*inputs)
        assert set(expected) == set(tu.MomentPass._fields)
        for name, want in expected.items():
            got = getattr(result, name)
            assert got.shape == np.shape(want), name
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7, err_msg=f"{shape} {name}")


def test_moment_pass_is_one_reduction_and_summarize_decodes_it():
    inputs = _random_inputs((3, 4), 3)
    args = (*map(jnp.asarray, inputs[:3]), tuple(map(jnp.asarray, inputs[3])))
    prims = Counter(e.primitive.name for e in jax.make_jaxpr(tu.moment_pass)(*args).jaxpr.eqns)
    assert prims["reduce"] == 1  # every element statistic in one variadic reduction

    # Two tensors (rows), as the core gathers them: the statistics of m and rms.
    batched = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), tu.moment_pass(*args))
    mean_p2, channel_mean_sq, stats = tu.summarize(batched)
    m, rms = np.asarray(inputs[2][:-1], np.float64), np.asarray(inputs[2][-1], np.float64)
    k = VELO.num_momentum
    np.testing.assert_allclose(mean_p2, [np.mean(inputs[0] ** 2), 2 * np.mean(inputs[0] ** 2)], rtol=1e-6)
    np.testing.assert_allclose(stats.mean_m[0], m.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.var_m[0], m.var(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_rms[0], rms.mean(), rtol=1e-6)
    var_rms = [np.mean((rms - mk.mean()) ** 2) for mk in m]  # the reference's (kept) definition
    np.testing.assert_allclose(stats.var_rms[0], var_rms, rtol=1e-5)
    assert channel_mean_sq.shape == (2, 6 + 4 * k)
    # ELEMENT_GROUPS order: g, clipped_g, p, m (K_m), rms, m_rsqrt_rms (K_m), rsqrt_rms, g_rsqrt_rms, fac_g, fac_m
    np.testing.assert_allclose(channel_mean_sq[0, 3 : 3 + k], (m**2).mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(channel_mean_sq[0, 3 + k], np.mean(rms**2), rtol=1e-5)
