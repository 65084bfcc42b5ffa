"""Replays every reference oracle case through the public API and compares the updates
(per leaf and step, max|u - u_ref| <= 5e-3 * rms(u_ref), the oracle README's criterion;
the same tolerance for every case) and the optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.oracle import CASES, Case, meta_params_from_checkpoint
from velojax import optimizer

UPDATE_RTOL = 5e-3  # of rms(u_ref), per leaf and step


@pytest.fixture(scope="module")
def meta(oracle_dir):
    return optimizer.load_weights(oracle_dir / "checkpoint" / "params")


def test_checkpoint_loads_as_the_oracle_meta_params(oracle_dir, meta):
    """Our loader against flax's own decoding of the reference's file, checked against the
    leaf paths, shapes and statistics the reference recorded (tests/oracle.py)."""
    expected = meta_params_from_checkpoint(oracle_dir)
    assert jax.tree.structure(meta) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert optimizer.num_meta_params(meta) == 2_320_385


def _rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _state_errors(state, params, case: Case, t: int) -> dict[str, float]:
    """Max |ours - reference| / max |reference| of each state field after t updates."""
    acc = optimizer.leaf_accumulators(state, params)
    ref_m, ref_rms = case.state("mom_rolling/m"), case.state("rms_rolling/rms")
    ref_row, ref_col, ref_diag = (case.state(f"fac_rolling/{k}") for k in ("v_row", "v_col", "v_diag"))

    def lookup(tree, path):
        for key in path.split("/"):
            tree = tree[key]
        return tree

    errs = {"m": 0.0, "rms": 0.0, "factored": 0.0}
    for path in case.leaf_paths():
        rm = lookup(ref_m, path)[t]
        errs["m"] = max([errs["m"]] + [_rel_err(m_k, rm[..., k]) for k, m_k in enumerate(lookup(acc["mu"], path))])
        errs["rms"] = max(errs["rms"], _rel_err(lookup(acc["nu"], path), lookup(ref_rms, path)[t][..., 0]))
        fac = lookup(acc["factored"], path)
        refs = (lookup(ref_row, path)[t], lookup(ref_col, path)[t]) if len(fac) == 2 else (lookup(ref_diag, path)[t],)
        for ours, ref in zip(fac, refs):
            errs["factored"] = max(errs["factored"], _rel_err(ours, np.moveaxis(ref, -1, 0)))
    flat = case.flat
    errs["lstm"] = max(
        _rel_err(state.lstm.hidden, flat["state_traj/lstm_hidden_state/hidden"][t]),
        _rel_err(state.lstm.cell, flat["state_traj/lstm_hidden_state/cell"][t]),
    )
    buf = state.loss_buffer
    errs["loss_buffer"] = max(
        _rel_err(buf.means, flat["state_traj/loss_buffer/means"][t]),
        _rel_err(buf.decays, flat["state_traj/loss_buffer/decays"][t]),
    )
    assert int(state.iteration) == int(flat["state_traj/iteration"][t])
    assert int(buf.count) == int(flat["state_traj/loss_buffer/iteration"][t])  # renamed: `count`
    return errs


# Relative state tolerances: the accumulators agree to float rounding (a few ulp), the
# LSTM state to the float noise of its features.
STATE_RTOL = {"m": 1e-6, "rms": 1e-6, "factored": 1e-6, "lstm": 1e-5, "loss_buffer": 1e-6}


@pytest.mark.parametrize("name", CASES)
def test_replay_matches_reference(oracle_dir, meta, name):
    case = Case(oracle_dir, name)
    tx = optimizer.velo(case.num_steps, weights=meta)
    params = jax.tree.map(lambda a: jnp.asarray(a[0]), case.params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    worst = 0.0
    for t in range(case.num_updates):
        grads = jax.tree.map(lambda a, t=t: jnp.asarray(a[t]), case.grads)
        updates, state = update(grads, state, params, value=case.losses[t])
        for (path, u), ref in zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(case.updates)):
            ref = ref[t].astype(np.float64)
            err = np.max(np.abs(np.asarray(u, np.float64) - ref)) / np.sqrt(np.mean(ref**2))
            assert err <= UPDATE_RTOL, f"{name}: update {jax.tree_util.keystr(path)} at step {t}: {err:.2e} of rms"
            worst = max(worst, err)
        params = optax.apply_updates(params, updates)
        errs = _state_errors(state, params, case, t + 1)
        for field, tol in STATE_RTOL.items():
            assert errs[field] <= tol, f"{name}: state {field} after update {t}: rel. error {errs[field]:.2e} > {tol}"
    assert worst < UPDATE_RTOL / 5  # we sit at the float-noise floor, well inside the criterion


def test_pure_core_vmaps_over_meta_params(oracle_dir, meta):
    """ES use: vmap the pure update over two perturbed meta-parameter sets, one jit."""
    case = Case(oracle_dir, "mlp")
    params = jax.tree.map(lambda a: jnp.asarray(a[0]), case.params)
    grads = jax.tree.map(lambda a: jnp.asarray(a[0]), case.grads)
    config = optimizer.VeLOConfig()
    noise = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), meta)
    metas = [meta, jax.tree.map(jnp.add, meta, noise)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *metas)

    def one(m):
        state = optimizer.velo_init(m, params, case.num_steps, config)
        return optimizer.velo_update(m, state, grads, params, case.losses[0], config)[0]

    batched = jax.jit(jax.vmap(one))(stacked)
    for i, m in enumerate(metas):
        single = jax.jit(one)(m)
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            b = np.asarray(b, np.float64)  # batched matmuls round differently: compare at float noise
            assert np.max(np.abs(np.asarray(a[i]) - b)) <= 1e-4 * np.sqrt(np.mean(b**2))
    # the perturbation changes the update, so the vmapped rows are really different
    assert not np.allclose(np.asarray(jax.tree.leaves(batched)[0][0]), np.asarray(jax.tree.leaves(batched)[0][1]))
