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
from velojax import tensor_update as tu
from velojax import velo_features, velo_network
from velojax.config import VeLOConfig

PyTree = Any

# Tensors with fewer elements than this are stacked with same-shaped ones and run as one
# vmapped computation (the program then grows with the number of distinct small shapes,
# not of leaves); larger ones run one by one, as stacking would copy them.
_STACK_MAX_SIZE = 1 << 14


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
      moment_stats: whole-tensor statistics of mu and nu, one row per non-empty leaf
        (computed with them; the LSTM reads them at the next step).
    """

    iteration: jax.Array
    num_steps: jax.Array
    mu: PyTree
    nu: PyTree
    factored: PyTree
    lstm: velo_network.LSTMState
    loss_buffer: loss_buffer_lib.LossBufferState
    moment_stats: velo_features.MomentStats


def velo_init(meta_params: dict, params: PyTree, num_steps: int | jax.Array, config: VeLOConfig = VeLOConfig()) -> VeLOState:
    """Fresh state for `params` and a run of `num_steps` updates (may be traced)."""
    leaves, treedef = jax.tree.flatten(params)
    accs = [tu.init_accumulators(p, config) for p in leaves]
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
        moment_stats=velo_features.MomentStats.zeros(num_tensors, config.num_momentum),
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
    and NaN gradient entries count as 0 (+-inf are clipped to +-1000 as usual).
    """
    all_p, treedef = jax.tree.flatten(params)
    all_g, all_m, all_v, all_f = (treedef.flatten_up_to(t) for t in (grads, state.mu, state.nu, state.factored))
    buffer = loss_buffer_lib.update(state.loss_buffer, loss)
    active = [i for i, p in enumerate(all_p) if p.size]  # zero-size leaves take no part
    if not active:
        return jax.tree.map(jnp.zeros_like, params), state._replace(iteration=state.iteration + 1, loss_buffer=buffer)

    # Accumulators first: every later pass reads the new ones, so they update in place.
    leaves = {"p": [all_p[i] for i in active], "g": [tu.clip_grad(all_g[i]) for i in active]}
    moments = [tu.update_moments(g, all_m[i], all_v[i], config) for i, g in zip(active, leaves["g"])]
    leaves["m"], leaves["rms"] = [m for m, _ in moments], [v for _, v in moments]
    leaves["fac"] = [all_f[i] for i in active]

    groups = _group_leaves(leaves["p"], leaves["m"], leaves["fac"])
    one = _pass_tokens(state.iteration, 4)
    stacked = lambda idx, names, token: _scaled([_stack(leaves[n], idx) for n in names], token)  # noqa: E731
    first, shifts, late, new_fac, stat_mean_sq = ([] for _ in range(5))
    for idx in groups:
        f, s = jax.vmap(tu.first_pass)(*stacked(idx, ("p", "g", "m", "rms"), one[0]))
        fac, msq = jax.vmap(tu.update_factored, in_axes=(0, 0, None))(*stacked(idx, ("g", "fac"), one[1]), config)
        late.append(jax.vmap(tu.factored_pass)(*stacked(idx, ("g", "m"), one[2]), _scaled(fac, one[2])))
        first.append(f), shifts.append(s), new_fac.append(fac), stat_mean_sq.append(msq)
    order = np.argsort(np.concatenate(groups))  # rows are grouped; put them back in leaf order
    first, shifts, late, stat_mean_sq = (jnp.concatenate(x)[order] for x in (first, shifts, late, stat_mean_sq))
    mean_p2, channel_mean_sq, moment_stats = tu.summarize(first, shifts, late, config)

    fraction_trained = state.iteration.astype(jnp.float32) / state.num_steps.astype(jnp.float32)
    x = velo_features.lstm_features(
        state.moment_stats,
        mean_p2,
        velo_features.rank_one_hot([p.shape for p in leaves["p"]]),
        fraction_trained,
        loss_buffer_lib.features(buffer),
    )
    controls, lr_mult, lstm = velo_network.rnn_forward(meta_params["rnn_params"], x, state.lstm)
    if config.use_bugged_next_lstm_state:
        lstm = state.lstm
    weights = velo_network.mix_mlp_weights(meta_params["ff_mod_stack"]["~"], controls, config)
    mlps = tu.mlp_inputs(weights, channel_mean_sq, stat_mean_sq, config)

    updates = [jnp.zeros_like(p) for p in all_p]
    mu, nu, factored = list(all_m), list(all_v), list(all_f)
    step = jax.vmap(tu.tensor_step, in_axes=(0,) * 8 + (None,))
    for idx, fac in zip(groups, new_fac):
        rows = np.asarray(idx)
        group_mlp = jax.tree.map(lambda w: w[rows], mlps)
        inputs = stacked(idx, ("p", "g", "m", "rms"), one[3])
        u = step(*inputs, _scaled(fac, one[3]), group_mlp, lr_mult[rows], mean_p2[rows], config)
        for j, i in enumerate(idx):
            leaf = active[i]
            updates[leaf], mu[leaf], nu[leaf] = u[j], leaves["m"][i], leaves["rms"][i]
            factored[leaf] = tuple(v[j] for v in fac)
    new_state = VeLOState(
        iteration=state.iteration + 1,
        num_steps=state.num_steps,
        mu=jax.tree.unflatten(treedef, mu),
        nu=jax.tree.unflatten(treedef, nu),
        factored=jax.tree.unflatten(treedef, factored),
        lstm=lstm,
        loss_buffer=buffer,
        moment_stats=moment_stats,
    )
    return jax.tree.unflatten(treedef, updates), new_state


def _group_leaves(p_leaves, m_leaves, f_leaves) -> list[list[int]]:
    """Leaf indices grouped by the shapes and dtypes of their arrays; every large tensor is
    a group of its own."""
    groups: dict[tuple, list[int]] = {}
    for i, arrays in enumerate(zip(p_leaves, m_leaves, f_leaves)):
        key = tuple((x.shape, x.dtype) for x in jax.tree.leaves(arrays))
        groups.setdefault((i,) if p_leaves[i].size >= _STACK_MAX_SIZE else key, []).append(i)
    return list(groups.values())


def _stack(leaves: list, idx: list[int]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[leaves[i] for i in idx])


def _pass_tokens(iteration: jax.Array, n: int) -> list[jax.Array]:
    """n float32 scalars, all 1.0 at run time, that XLA cannot prove equal.

    Each pass over the data reads its inputs times its own token. Without that XLA merges
    the elementwise intermediates several passes share (rsqrt(rms), fac_g, ...) and, as
    they then have several users, writes them to memory: several times slower on CPU
    than recomputing them inside each fused pass. (XLA:CPU drops optimization barriers
    before fusion, so those cannot do this.)
    """
    return [(iteration > -k).astype(jnp.float32) for k in range(1, n + 1)]  # iteration >= 0


def _scaled(tree: Any, token: jax.Array) -> Any:
    return jax.tree.map(lambda x: x * token.astype(x.dtype), tree)
