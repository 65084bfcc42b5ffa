"""VeLO's pure functional core: `velo_init` and `velo_update` over arbitrary pytrees.

Everything here is a pure function of its arguments. The meta-parameters are an
ordinary (traced) argument, so meta-training can `jax.vmap` the update over perturbed
meta-parameters and `jax.jit` it once:

    state = velo_init(meta_params, params, num_steps)
    updates, state = velo_update(meta_params, state, grads, params, loss)
    params = optax.apply_updates(params, updates)

Small tensors of the same shape and dtype are processed together: their accumulators
are stored stacked (a `TensorGroup` of at most `_CHUNK_ELEMENTS` elements) and updated by
one vmapped computation, so the compiled program grows with the number of distinct small
shapes rather than of leaves. Larger tensors form groups of their own: stacking their
params and gradients would copy them every step (measured: +30-40% step time on a
transformer-like tree, for 40% less compile time). `LeafGrouping` holds that bookkeeping:
leaves to per-group stacks and back, and per-group rows to the per-tensor rows (leaf
order) that the LSTM reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from velojax import loss_buffer as loss_buffer_lib
from velojax import tensor_update as tu
from velojax import velo_features, velo_network
from velojax.config import VELO, VeLOConfig

PyTree = Any

# Most elements per group of stacked same-shaped leaves; larger leaves are alone.
_CHUNK_ELEMENTS = 1 << 14


class TensorGroup(NamedTuple):
    """Accumulators of n same-shaped leaves, stacked on a leading axis of size n.

    moments: [n, K_m + 1, *S] in the param dtype: the K_m momentum EMAs, then the rms
    (EMA of g^2); factored: (v_row [n, K_f, *S without d0], v_col [n, K_f, *S without
    d1]) for ndim >= 2, else (v_diag [n, K_f, *S],), float32.
    """

    moments: jax.Array
    factored: tuple[jax.Array, ...]


class VeLOState(NamedTuple):
    """VeLO's optimizer state (no copy of the parameters).

    Attributes:
      iteration: int32 [], updates applied so far.
      num_steps: int32 [], the training horizon the optimizer plans for.
      groups: the accumulators, one `TensorGroup` per group of `group_layout(params)`
        (see `leaf_accumulators` for per-leaf views).
      lstm: per-tensor LSTM state, one row per non-empty leaf in `jax.tree.leaves` order.
      loss_buffer: EMAs of the training loss.
      moment_stats: whole-tensor statistics of each leaf's m and rms (rows as `lstm`),
        computed with them; the LSTM reads them at the next step.
    """

    iteration: jax.Array
    num_steps: jax.Array
    groups: tuple[TensorGroup, ...]
    lstm: velo_network.LSTMState
    loss_buffer: loss_buffer_lib.LossBufferState
    moment_stats: velo_features.MomentStats


def group_layout(params: PyTree) -> tuple[tuple[int, ...], ...]:
    """How the non-empty leaves of `params` are grouped: tuples of leaf indices (in
    `jax.tree.leaves` order) of equal shape and dtype, ordered by their first leaf."""
    chunks: dict[tuple, list[list[int]]] = {}
    for i, p in enumerate(jax.tree.leaves(params)):
        if p.size == 0:  # zero-size leaves take no part
            continue
        runs = chunks.setdefault((p.shape, jnp.dtype(p.dtype)), [[]])
        if runs[-1] and (len(runs[-1]) + 1) * p.size > _CHUNK_ELEMENTS:
            runs.append([])
        runs[-1].append(i)
    return tuple(sorted((tuple(run) for runs in chunks.values() for run in runs), key=lambda run: run[0]))


@dataclasses.dataclass(frozen=True, eq=False)
class LeafGrouping:
    """Where each non-empty leaf of a params tree lives in the per-group stacked arrays.

    Two row orders over the T non-empty leaves: group-major (the groups' leaves, group
    after group, as stacked) and leaf order (`jax.tree.leaves` order, as the LSTM rows).
    Build with `LeafGrouping.of(params)`; static (numpy), so it costs nothing under jit.
    """

    groups: tuple[tuple[int, ...], ...]  # `group_layout(params)`: leaf indices per group
    num_leaves: int  # all leaves, zero-size ones included
    to_leaf_order: np.ndarray  # [T] group-major row of each leaf-order row
    leaf_row: np.ndarray  # [T] leaf-order row of each group-major row

    @classmethod
    def of(cls, params: PyTree) -> LeafGrouping:
        groups = group_layout(params)
        to_leaf_order = np.argsort(np.concatenate(groups)) if groups else np.zeros(0, np.int64)
        return cls(groups, len(jax.tree.leaves(params)), to_leaf_order, np.argsort(to_leaf_order))

    @property
    def active(self) -> list[int]:
        """Indices of the non-empty leaves, in leaf order (one LSTM row each)."""
        return sorted(i for idx in self.groups for i in idx)

    def stack(self, leaves: list[jax.Array]) -> list[jax.Array]:
        """Per group, its leaves (of all `num_leaves`) stacked: [n, *S]."""
        return [_stack([leaves[i] for i in idx]) for idx in self.groups]

    def rows(self, k: int) -> np.ndarray:
        """Leaf-order rows of group k's leaves, in the group's order: [n]."""
        start = sum(len(idx) for idx in self.groups[:k])
        return self.leaf_row[start : start + len(self.groups[k])]

    def rows_in_leaf_order(self, per_group: list[PyTree]) -> PyTree:
        """Per-group trees of rows (leading axis n) joined into one tree of rows in leaf order
        (leading axis T)."""
        return jax.tree.map(lambda *xs: jnp.concatenate(xs)[self.to_leaf_order], *per_group)

    def unstack(self, per_group: list[PyTree]) -> list[PyTree | None]:
        """The inverse of `stack`: per leaf, its slice of its group's tree (leading axis n);
        None for zero-size leaves."""
        out: list[PyTree | None] = [None] * self.num_leaves
        for idx, tree in zip(self.groups, per_group):
            for j, i in enumerate(idx):
                out[i] = jax.tree.map(lambda x, j=j: x[j], tree)
        return out


def velo_init(meta_params: dict, params: PyTree, num_steps: int | jax.Array, config: VeLOConfig = VELO) -> VeLOState:
    """Fresh state for `params` and a run of `num_steps` updates (may be traced)."""
    leaves = jax.tree.leaves(params)
    layout = group_layout(params)
    groups = []
    for idx in layout:
        n = len(idx)
        moments, fac = tu.init_accumulators(leaves[idx[0]], config)
        moments, fac = jax.tree.map(lambda x, n=n: jnp.zeros((n,) + x.shape, x.dtype), (moments, fac))
        groups.append(TensorGroup(moments, fac))
    num_tensors = sum(len(idx) for idx in layout)
    num_steps = jnp.asarray(num_steps, jnp.int32)
    buffer_horizon = jnp.int32(10) if config.use_bugged_loss_features else num_steps
    return VeLOState(
        iteration=jnp.zeros((), jnp.int32),
        num_steps=num_steps,
        groups=tuple(groups),
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
    config: VeLOConfig = VELO,
) -> tuple[PyTree, VeLOState]:
    """One VeLO step. Returns (updates, new_state); params + updates are the new params.

    `loss` is the training loss at `params` (the one `grads` is the gradient of); only
    its relative changes matter. A non-finite loss is not absorbed into the loss EMAs,
    and NaN gradient entries count as 0 (+-inf are clipped to +-1000 as usual).
    """
    all_p, treedef = jax.tree.flatten(params)
    grouping = LeafGrouping.of(params)
    buffer = loss_buffer_lib.update(state.loss_buffer, loss)
    if not grouping.groups:
        return jax.tree.map(jnp.zeros_like, params), state._replace(iteration=state.iteration + 1, loss_buffer=buffer)
    token = _pass_tokens(state.iteration, 3)
    ps = grouping.stack(all_p)
    gs = grouping.stack([tu.clip_grad(g) for g in treedef.flatten_up_to(grads)])

    # 1. The accumulators, per group. First: every later pass reads the new ones, so they update in place.
    groups, stat_mean_sq = [], []
    for g, group in zip(gs, state.groups):
        moments = _group_update_moments(g, group.moments, config)
        fac, msq = _group_update_factored(_scaled(g, token[0]), group.factored, config)
        groups.append(TensorGroup(moments, fac))
        stat_mean_sq.append(msq)
    # 2. One reduction pass per group for every whole-tensor statistic; rows to leaf order.
    passes = [_group_moment_pass(*_scaled((p, g, *group), token[1])) for p, g, group in zip(ps, gs, groups)]
    mean_p2, channel_mean_sq, moment_stats = tu.summarize(grouping.rows_in_leaf_order(passes))
    stat_mean_sq = grouping.rows_in_leaf_order(stat_mean_sq)

    # 3. Features and the LSTM, one row per tensor in leaf order: each tensor's MLP weights and step size.
    fraction_trained = state.iteration.astype(jnp.float32) / state.num_steps.astype(jnp.float32)
    x = velo_features.lstm_features(
        state.moment_stats,
        mean_p2,
        velo_features.rank_one_hot([all_p[i].shape for i in grouping.active]),
        fraction_trained,
        loss_buffer_lib.features(buffer),
    )
    controls, lr_mult, lstm = velo_network.rnn_forward(meta_params["rnn_params"], x, state.lstm)
    if config.use_bugged_next_lstm_state:
        lstm = state.lstm
    weights = velo_network.mix_mlp_weights(meta_params["ff_mod_stack"]["~"], controls, config)
    mlps = tu.mlp_inputs(weights, channel_mean_sq, stat_mean_sq, config)

    # 4. The per-parameter MLP and step, per group, reading its tensors' rows; updates back to the leaves.
    steps = []
    for k, (p, g, group) in enumerate(zip(ps, gs, groups)):
        rows = grouping.rows(k)
        group_mlp = jax.tree.map(lambda w, rows=rows: w[rows], mlps)
        scaled = _scaled((p, g, *group), token[2])
        steps.append(_group_tensor_step(*scaled, group_mlp, lr_mult[rows], mean_p2[rows], config))
    updates = [jnp.zeros_like(p) if u is None else u for p, u in zip(all_p, grouping.unstack(steps))]
    new_state = VeLOState(
        iteration=state.iteration + 1,
        num_steps=state.num_steps,
        groups=tuple(groups),
        lstm=lstm,
        loss_buffer=buffer,
        moment_stats=moment_stats,
    )
    return jax.tree.unflatten(treedef, updates), new_state


# The per-tensor functions, vmapped over a group. Jitted so that groups of the same shape
# are traced once (XLA inlines them; this only saves tracing time).
_group_update_moments = jax.jit(jax.vmap(tu.update_moments, in_axes=(0, 0, None)), static_argnums=2)
_group_update_factored = jax.jit(jax.vmap(tu.update_factored, in_axes=(0, 0, None)), static_argnums=2)
_group_moment_pass = jax.jit(jax.vmap(tu.moment_pass))
_group_tensor_step = jax.jit(jax.vmap(tu.tensor_step, in_axes=(0,) * 7 + (None,)), static_argnums=7)


def leaf_accumulators(state: VeLOState, params: PyTree) -> dict[str, PyTree]:
    """Per-leaf views of the accumulators: {"mu": tree of K_m-tuples [*S], "nu": tree
    [*S], "factored": tree of tuples} (zero-size leaves map to None)."""
    treedef = jax.tree.structure(params)
    accs = LeafGrouping.of(params).unstack(list(state.groups))  # TensorGroups without the n axis
    k = state.groups[0].moments.shape[1] - 1 if state.groups else 0
    views = {
        "mu": [None if a is None else tuple(a.moments[c] for c in range(k)) for a in accs],
        "nu": [None if a is None else a.moments[k] for a in accs],
        "factored": [None if a is None else a.factored for a in accs],
    }
    return {name: jax.tree.unflatten(treedef, values) for name, values in views.items()}


def _stack(xs: list[jax.Array]) -> jax.Array:
    return xs[0][None] if len(xs) == 1 else jnp.stack(xs)


def _pass_tokens(iteration: jax.Array, n: int) -> list[jax.Array]:
    """n float32 scalars, all 1.0 at run time, that XLA cannot prove equal.

    Each pass over the data reads its inputs times its own token. Without that XLA merges
    the elementwise intermediates several passes share (new m, rsqrt(rms), fac_g, ...)
    and, as they then have several users, writes them to memory: several times slower on
    CPU than recomputing them inside each fused pass. (XLA:CPU drops optimization
    barriers before fusion, so those cannot do this.)
    """
    return [(iteration > -k).astype(jnp.float32) for k in range(1, n + 1)]  # iteration >= 0


def _scaled(tree: Any, token: jax.Array) -> Any:
    return jax.tree.map(lambda x: x * token.astype(x.dtype), tree)
