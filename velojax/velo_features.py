"""Per-tensor statistics and the LSTM input features built from them (reference:
`HyperV2.lstm_features_for_tensor`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from velojax.config import NUM_RANK_FEATURES

_TIME_CENTERS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)


class MomentStats(NamedTuple):
    """Whole-tensor statistics of the momentum and rms accumulators, one row per tensor.

    The LSTM reads them for the accumulators *before* the current gradient; velojax
    computes them in the pass that produces the accumulators and keeps them in the
    optimizer state for the next step. `var_rms` is mean((rms - mean(m_k))^2): it
    subtracts the momentum mean, a reference bug that VeLO's weights depend on (kept).
    """

    mean_m: jax.Array  # [T, K_m]
    var_m: jax.Array  # [T, K_m]
    mean_rms: jax.Array  # [T]
    var_rms: jax.Array  # [T, K_m]

    @classmethod
    def zeros(cls, num_tensors: int, num_momentum: int) -> MomentStats:
        """The statistics of all-zero accumulators (distinct buffers, so a state can be donated)."""
        z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
        return cls(
            z(num_tensors, num_momentum), z(num_tensors, num_momentum), z(num_tensors), z(num_tensors, num_momentum)
        )


def clip_log_abs(x: jax.Array) -> jax.Array:
    """0.5 * clip(log(1e-8 + |10 x|), -5, 5): a bounded log scale."""
    return 0.5 * jnp.clip(jnp.log(1e-8 + jnp.abs(x * 10.0)), -5.0, 5.0)


def rank_one_hot(shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """[T, 5] one-hot of the number of dims larger than 1 (all zeros for 5 or more)."""
    ranks = np.array([sum(d > 1 for d in s) for s in shapes])
    return (ranks[:, None] == np.arange(NUM_RANK_FEATURES)[None, :]).astype(np.float32)


def lstm_features(
    stats: MomentStats,
    mean_p2: jax.Array,
    rank: np.ndarray,
    fraction_trained: jax.Array,
    loss_features: jax.Array,
) -> jax.Array:
    """LSTM inputs [T, 30] for T tensors.

    Columns, in the reference's sorted-key order: fraction_left (9), loss_features (9),
    mean_rms (1), rank (5), var_m (K_m), var_rms (K_m). The statistics are of m and rms
    scaled by rsqrt(max(1e-9, mean p^2)) (`mean_p2` [T]), so variances scale by its square.
    """
    num_tensors = mean_p2.shape[0]
    scale = jax.lax.rsqrt(jnp.maximum(1e-9, mean_p2))  # [T]
    time = jnp.tanh((fraction_trained - jnp.asarray(_TIME_CENTERS, jnp.float32)) * 10.0)
    shared = jnp.concatenate([time, loss_features])
    shared = jnp.broadcast_to(shared, (num_tensors, shared.shape[0]))
    return jnp.concatenate(
        [
            shared,
            clip_log_abs(scale * stats.mean_rms)[:, None],
            jnp.asarray(rank),
            clip_log_abs(jnp.square(scale)[:, None] * stats.var_m),
            clip_log_abs(jnp.square(scale)[:, None] * stats.var_rms),
        ],
        axis=1,
    )
