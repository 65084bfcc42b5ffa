"""The meta-learned object: VeLO's network (any size) through velojax's pure core."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from velojax import core
from velojax import meta_params as meta_params_lib
from velojax.config import VELO, VeLOConfig
from velojax.meta_params import LSTM_GATES

PyTree = object


@jax.tree_util.register_pytree_node_class
class SharedBase:
    """A weight matrix θ + s·ε used only as the right operand of `x @ w`, computed as
    x @ θ + s·(x @ ε). Vmapped with θ shared (in_axes None) across all rollouts and ε
    shared by the two sides of a pair, each step reads θ once and each εᵢ once instead of
    one θ ± εᵢ per rollout: the LSTM's gate matrix is 90% of VeLO's meta-parameters and
    its product is memory-bound. Equal to x @ (θ + s·ε) up to float rounding.
    (Measured effect: docs/meta_train.md, "What was changed for speed".)"""

    def __init__(self, base: jax.Array, eps: jax.Array, sign: jax.Array):
        self.base, self.eps, self.sign = base, eps, sign

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        return x @ self.base + self.sign.astype(x.dtype) * (x @ self.eps)

    def tree_flatten(self):
        return (self.base, self.eps, self.sign), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)


@dataclasses.dataclass(frozen=True)
class VeLONetwork:
    """VeLO with meta-parameters θ as an ordinary (traced) argument, so a rollout can
    be vmapped over perturbed θ and compiled once. `config` sets the size: `VELO`
    (512-wide LSTM, 256 bank entries, 2.3M meta-parameters) or e.g.
    `VeLOConfig.small(32, 8)` for a CPU."""

    config: VeLOConfig = VELO

    def init_theta(self, key: jax.Array) -> PyTree:
        """Random meta-parameters, distributed as the reference's `HyperV2.init`."""
        return meta_params_lib.init_meta_params(key, self.config)

    def init(self, theta: PyTree, params: PyTree, num_steps: int | jax.Array) -> core.VeLOState:
        return core.velo_init(theta, params, num_steps, self.config)

    def update(self, theta: PyTree, state: core.VeLOState, grads: PyTree, params: PyTree, loss: jax.Array):
        """(new params, new state) after one VeLO step."""
        updates, state = core.velo_update(theta, state, grads, params, loss, self.config)
        return optax.apply_updates(params, updates), state

    @staticmethod
    def antithetic_pairs(theta: PyTree, eps: PyTree) -> tuple[PyTree, PyTree, PyTree]:
        """θ ± εᵢ for P pairs, as (sides, pair_axes, side_axes) for
        `jax.vmap(jax.vmap(f, in_axes=(side_axes, ...)), in_axes=(pair_axes, ...))`.
        `eps` holds the pairs' εᵢ on a leading axis [P, ...θ]. Every leaf of `sides` is
        [P, 2, ...] (θ + εᵢ, θ − εᵢ), except the LSTM gate matrix: a `SharedBase` of θ
        (shared by all), εᵢ (per pair) and the sign (per side), never materialised.
        Use `sides` only with `update`/`init`."""

        def is_gate(path) -> bool:
            return [getattr(k, "key", None) for k in path] == ["rnn_params", LSTM_GATES, "w"]

        def side(path, t, e):
            if is_gate(path):
                return SharedBase(t, e, jnp.array([1.0, -1.0], t.dtype))
            return jnp.stack([t + e, t - e], axis=1)

        with_path = jax.tree_util.tree_map_with_path
        sides = with_path(side, theta, eps)
        pair_axes = with_path(lambda path, _: SharedBase(None, 0, None) if is_gate(path) else 0, theta)
        side_axes = with_path(lambda path, _: SharedBase(None, None, 0) if is_gate(path) else 0, theta)
        return sides, pair_axes, side_axes
