"""VeLO's pure functional core: `velo_init` and `velo_update` over arbitrary pytrees.

Everything here is a pure function of its arguments. The meta-parameters are an
ordinary (traced) argument, so meta-training can `jax.vmap` the update over perturbed
meta-parameters and `jax.jit` it once:

    state = velo_init(meta_params, params, num_steps)
    updates, state = velo_update(meta_params, state, grads, params, loss)
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from velojax import loss_buffer as loss_buffer_lib
from velojax import velo_features, velo_network
from velojax.config import VeLOConfig
from velojax.tensor_update import (
    clip_grad,
    factored_pass,
    first_pass,
    init_accumulators,
    tensor_step,
    update_factored,
)

PyTree = Any


class VeLOState(NamedTuple):
    """VeLO's optimizer state (no copy of the parameters).

    Attributes:
      iteration: int32 [], updates applied so far.
      num_steps: int32 [], the training horizon the optimizer plans for.
      mu: tree with a tuple of K_m momentum EMAs [*S] per param, in the param dtype.
      nu: tree like params; EMA of g^2, [*S] in the param dtype.
      factored: tree with a tuple per param: (v_row, v_col) for ndim >= 2, else (v_diag,);
        float32 with a leading axis over the Adafactor decays.
      lstm: per-tensor LSTM state, one row per non-empty leaf in `jax.tree.leaves` order.
      loss_buffer: EMAs of the training loss.
    """

    iteration: jax.Array
    num_steps: jax.Array
    mu: PyTree
    nu: PyTree
    factored: PyTree
    lstm: velo_network.LSTMState
    loss_buffer: loss_buffer_lib.LossBufferState


def velo_init(meta_params: dict, params: PyTree, num_steps: int | jax.Array, config: VeLOConfig = VeLOConfig()) -> VeLOState:
    """Fresh state for `params` and a run of `num_steps` updates (may be traced)."""
    leaves, treedef = jax.tree.flatten(params)
    accs = [init_accumulators(p, config) for p in leaves]
    num_tensors = sum(1 for p in leaves if p.size)  # zero-size leaves take no part
    num_steps = jnp.asarray(num_steps, jnp.int32)
    buffer_horizon = jnp.int32(10) if config.use_bugged_loss_features else num_steps
    return VeLOState(
        iteration=jnp.zeros((), jnp.int32),
        num_steps=num_steps,
        mu=jax.tree.unflatten(treedef, [a[0] for a in accs]),
        nu=jax.tree.unflatten(treedef, [a[1] for a in accs]),
        factored=jax.tree.unflatten(treedef, [a[2] for a in accs]),
        lstm=velo_network.initial_lstm_state(meta_params, num_tensors),
        loss_buffer=loss_buffer_lib.init(buffer_horizon),
    )


def velo_update(
    meta_params: dict,
    state: VeLOState,
    grads: PyTree,
    params: PyTree,
    loss: jax.Array | float,
    config: VeLOConfig = VeLOConfig(),
) -> tuple[PyTree, VeLOState]:
    """One VeLO step. Returns (updates, new_state); params + updates are the new params.

    `loss` is the training loss at `params` (the one `grads` is the gradient of); only
    its relative changes matter. A non-finite loss is not absorbed into the loss EMAs,
    and NaN gradient entries count as 0 (±inf are clipped to ±1000 as usual).
    """
    all_p, treedef = jax.tree.flatten(params)
    all_g, all_m, all_v, all_f = (treedef.flatten_up_to(t) for t in (grads, state.mu, state.nu, state.factored))
    active = [i for i, p in enumerate(all_p) if p.size]  # zero-size leaves take no part
    p_leaves, g_leaves, m_leaves, v_leaves, f_leaves = ([leaves[i] for i in active] for leaves in (all_p, all_g, all_m, all_v, all_f))

    buffer = loss_buffer_lib.update(state.loss_buffer, loss)
    loss_features = loss_buffer_lib.features(buffer)
    if not active:
        return jax.tree.map(jnp.zeros_like, params), state._replace(iteration=state.iteration + 1, loss_buffer=buffer)
    g_leaves = [clip_grad(g) for g in g_leaves]

    # Small tensors of the same shape run as one vmapped computation, so the program (and
    # its compile time) grows with the number of distinct small shapes, not of leaves. Large
    # tensors run one by one: stacking them would copy them.
    groups = _group_leaves(p_leaves, m_leaves, v_leaves, f_leaves)
    leaf_lists = {"p": p_leaves, "g": g_leaves, "m": m_leaves, "rms": v_leaves, "fac": f_leaves}

    # Each pass over the data reads private copies of its inputs, `where(token, x, 0)` with
    # a distinct always-true runtime token per pass. Without them XLA merges the
    # elementwise intermediates the passes share (new m, rms, fac_g, ...) and, as they then
    # have many users, writes them to fresh buffers: several times slower on CPU than
    # recomputing them inside each fused pass. (XLA:CPU drops optimization barriers
    # before fusion, so those cannot do this.)
    tokens = iter(range(-1, -(1 << 20), -1))

    def private(tree):
        token = state.iteration > next(tokens)  # iteration >= 0
        return jax.tree.map(lambda x: jnp.where(token, x, jnp.zeros_like(x)), tree)

    def inputs(idx, *names):
        return private([_stack([leaf_lists[n][i] for i in idx]) for n in names])

    first, new_fac, channel_mean_sq = {}, {}, {}
    for key, idx in groups.items():
        first[key] = jax.vmap(first_pass, in_axes=(0,) * 4 + (None,))(*inputs(idx, "p", "g", "m", "rms"), config)
        new_fac[key] = jax.vmap(update_factored, in_axes=(0, 0, None))(*inputs(idx, "g", "fac"), config)
        late = jax.vmap(factored_pass, in_axes=(0, 0, 0, None))(*inputs(idx, "g", "m"), private(new_fac[key]), config)
        channel_mean_sq[key] = jnp.concatenate([first[key][1], late], axis=1)
    order = [i for idx in groups.values() for i in idx]
    stats = jax.tree.map(lambda *xs: _in_leaf_order(jnp.concatenate(xs), order), *[f[0] for f in first.values()])

    fraction_trained = state.iteration.astype(jnp.float32) / state.num_steps.astype(jnp.float32)
    x = velo_features.lstm_features(
        stats, velo_features.rank_one_hot([p.shape for p in p_leaves]), fraction_trained, loss_features
    )
    controls, lr_mult, lstm = velo_network.rnn_forward(meta_params["rnn_params"], x, state.lstm)
    if config.use_bugged_next_lstm_state:
        lstm = state.lstm
    weights = velo_network.mix_mlp_weights(meta_params["ff_mod_stack"]["~"], controls, config)

    updates = [jnp.zeros_like(p) for p in all_p]
    mu, nu, factored = list(all_m), list(all_v), list(all_f)
    step = jax.vmap(tensor_step, in_axes=(0,) * 9 + (None,))
    for key, idx in groups.items():
        rows = np.asarray(idx)
        group_weights = jax.tree.map(lambda w: w[rows], weights)
        u, m, v = step(
            *inputs(idx, "p", "g", "m", "rms"),
            private(new_fac[key]),
            channel_mean_sq[key],
            group_weights,
            lr_mult[rows],
            stats.mean_p2[rows],
            config,
        )
        for j, i in enumerate(idx):
            leaf = active[i]
            updates[leaf], mu[leaf], nu[leaf] = u[j], tuple(x[j] for x in m), v[j]
            factored[leaf] = tuple(f[j] for f in new_fac[key])
    updates, mu, nu, factored = (jax.tree.unflatten(treedef, x) for x in (updates, mu, nu, factored))
    new_state = VeLOState(
        iteration=state.iteration + 1,
        num_steps=state.num_steps,
        mu=mu,
        nu=nu,
        factored=factored,
        lstm=lstm,
        loss_buffer=buffer,
    )
    return updates, new_state


# Tensors with fewer elements than this are stacked with same-shaped ones.
_STACK_MAX_SIZE = 1 << 14


def _group_leaves(*leaf_lists) -> dict[tuple, list[int]]:
    """Leaf indices grouped by the shapes and dtypes of all their per-leaf arrays; every
    large tensor is a group of its own."""
    groups: dict[tuple, list[int]] = {}
    for i, leaves in enumerate(zip(*leaf_lists)):
        key = tuple((x.shape, x.dtype) for x in jax.tree.leaves(leaves))
        if leaves[0].size >= _STACK_MAX_SIZE:
            key = (i,) + key
        groups.setdefault(key, []).append(i)
    return groups


def _stack(xs: list) -> Any:
    return jax.tree.map(lambda *a: jnp.stack(a), *xs)


def _in_leaf_order(x: jax.Array, order: list[int]) -> jax.Array:
    """Rows of x are in `order` (grouped); return them in leaf order."""
    inverse = np.argsort(np.asarray(order))
    return x[inverse]
