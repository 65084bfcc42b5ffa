"""The per-tensor network: cross-tensor max-pool mixing, a haiku-convention LSTM, the
control and step-size heads, and the hypernetwork that mixes the MLP weight bank."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from velojax.config import VeLOConfig
from velojax.meta_params import LSTM_GATES, ff_layer_names


class LSTMState(NamedTuple):
    """One row per parameter tensor, in leaf order. float32 [T, lstm_hidden_size] each."""

    hidden: jax.Array
    cell: jax.Array


class MLPWeights(NamedTuple):
    """Per-parameter MLP weights, with a leading axis over tensors when mixed for T tensors.

    `w0` [C, H] stacks the first-layer weights of all input groups along C (30 for VeLO);
    `layers` holds (w, b) of the later layers; the last one has 3 outputs.
    """

    w0: jax.Array
    b0: jax.Array
    layers: tuple[tuple[jax.Array, jax.Array], ...]


def initial_lstm_state(meta_params: dict, num_tensors: int) -> LSTMState:
    init = meta_params["lstm_init_state"]
    tile = lambda x: jnp.tile(jnp.asarray(x, jnp.float32), (num_tensors, 1))  # noqa: E731
    return LSTMState(hidden=tile(init["hidden"]), cell=tile(init["cell"]))


def _linear(params: dict, x: jax.Array) -> jax.Array:
    return x @ params["w"] + params["b"]


def rnn_forward(rnn_params: dict, x: jax.Array, state: LSTMState) -> tuple[jax.Array, jax.Array, LSTMState]:
    """One LSTM step for T tensors at once.

    Args:
      rnn_params: `meta_params["rnn_params"]`.
      x: [T, 30] per-tensor features.
      state: the carried LSTM state.
    Returns:
      controls [T, param_inits], lr_mult [T] (linear, may be negative), the new state.
    """
    # The only cross-tensor communication: a max over tensors. (`linear` is dead in the
    # reference and is skipped here.)
    pooled = jnp.max(jax.nn.relu(_linear(rnn_params["linear_1"], x)), axis=0, keepdims=True)
    inputs = _linear(rnn_params["linear_2"], x) + pooled
    gates = _linear(rnn_params[LSTM_GATES], jnp.concatenate([inputs, state.hidden], axis=-1))
    i, g, f, o = jnp.split(gates, 4, axis=-1)  # haiku's gate order, with +1 on the forget gate
    cell = jax.nn.sigmoid(f + 1.0) * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    controls = _linear(rnn_params["rnn_to_controls"], hidden)
    lr_mult = _linear(rnn_params["step_size"], hidden)[:, 0]
    return controls, lr_mult, LSTMState(hidden, cell)


def _bank_leaves(ff: dict, config: VeLOConfig) -> list[jax.Array]:
    """The bank's leaves in MLPWeights order, each [P, ...]."""
    w0 = jnp.concatenate([ff[f"w0__{i}"] for i in range(len(config.mlp_group_channels))], axis=1)
    leaves = [w0, ff["b0"]]
    for name in ff_layer_names(config):
        leaves += [ff[name], ff["b" + name[1:]]]
    return leaves


def mix_mlp_weights(ff_params: dict, controls: jax.Array, config: VeLOConfig) -> MLPWeights:
    """Per-tensor MLP weights 100 * mean_k(controls[t, k] * bank[k]) (the reference's
    hard-coded 100). ff_params: `meta_params["ff_mod_stack"]["~"]`; controls: [T, P].
    Returns MLPWeights with a leading T axis."""
    leaves = _bank_leaves(ff_params, config)
    scale = 100.0 / config.param_inits
    mixed = [jnp.tensordot(controls, leaf, axes=1) * scale for leaf in leaves]
    return MLPWeights(w0=mixed[0], b0=mixed[1], layers=tuple(zip(mixed[2::2], mixed[3::2])))
