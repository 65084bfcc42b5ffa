"""The meta-learned object: VeLO's network (any size) through velojax's pure core."""

from __future__ import annotations

import dataclasses

import jax
import optax

from velojax import core
from velojax import meta_params as meta_params_lib
from velojax.config import VELO, VeLOConfig

PyTree = object


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
