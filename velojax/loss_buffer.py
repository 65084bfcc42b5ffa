"""VeLO's loss buffer: 10 EMAs of the training loss at horizons 10..num_steps, and the
9 scale-free loss features the LSTM reads (reference: `BufferLossAccumulators`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

NUM_EMAS = 10
_RUNNING_MIN_INIT = 999999999999.0  # the reference's sentinel (float32: 999999995904)


class LossBufferState(NamedTuple):
    """EMAs of the loss. All leaves float32 [10] except `count` (int32 [], losses seen; the
    reference's `iteration`, renamed so that the optimizer state has one `iteration`)."""

    means: jax.Array
    running_min: jax.Array
    decays: jax.Array
    count: jax.Array


def init(num_steps: jax.Array | int) -> LossBufferState:
    """Decays exp(-1/h) for 10 half-lives h log-spaced from 10 to `num_steps` (traceable)."""
    horizon = jnp.log10(jnp.asarray(num_steps, jnp.float32))
    decays = jnp.exp(-1.0 / jnp.logspace(1.0, horizon, NUM_EMAS, dtype=jnp.float32))
    return LossBufferState(
        means=jnp.zeros((NUM_EMAS,), jnp.float32),
        running_min=jnp.full((NUM_EMAS,), _RUNNING_MIN_INIT, jnp.float32),
        decays=decays,
        count=jnp.zeros((), jnp.int32),
    )


def update(state: LossBufferState, loss: jax.Array) -> LossBufferState:
    """Absorb one loss; a non-finite loss leaves the buffer unchanged (documented deviation).

    As in the reference, the loss is first clipped to 2|max_j c_j|, where the bias
    correction of c_j deliberately uses the *next* iteration count (kept quirk).
    """
    loss = jnp.asarray(loss, jnp.float32)
    d, t = state.decays, state.count
    corrected = state.means / (1.0 - jax.lax.pow(d, t + 1))
    approx_max = jnp.where(t == 0, loss, jnp.max(corrected))
    clipped = jnp.minimum(jnp.abs(approx_max) * 2.0, loss)
    means = state.means * d + clipped * (1.0 - d)
    running_min = jnp.minimum(state.running_min, means / (1.0 - jax.lax.pow(d, t + 1)))
    new = LossBufferState(means, running_min, d, t + 1)
    finite = jnp.isfinite(loss)
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)


def features(state: LossBufferState) -> jax.Array:
    """9 features in [-1, 1]: where each EMA sits between its running minimum and the next
    longer EMA; all 0 until the buffer has absorbed 3 losses. Shape [9], float32."""
    corrected = state.means / (1.0 - jax.lax.pow(state.decays, state.count))
    shorter, longer, running_min = corrected[:-1], corrected[1:], state.running_min[:-1]
    denom = jnp.maximum(1e-8, longer - running_min)
    feats = jnp.clip((shorter - running_min) / denom - 1.0, -1.0, 1.0)
    return jnp.where(state.count <= 2, jnp.zeros_like(feats), feats)
