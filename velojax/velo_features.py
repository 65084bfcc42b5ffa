"""Per-tensor statistics and the LSTM input features built from them (reference:
`HyperV2.lstm_features_for_tensor`)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from velojax.config import NUM_RANK_FEATURES

_TIME_CENTERS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)


class TensorStats(NamedTuple):
    """Whole-tensor reductions of p and of the *previous* m and rms (shapes for one tensor).

    `var_rms` is mean((rms - mean(m_k))^2): it subtracts the momentum mean, a reference
    bug that VeLO's weights depend on (kept).
    """

    mean_p2: jax.Array  # []
    mean_m: jax.Array  # [K_m]
    var_m: jax.Array  # [K_m]
    mean_rms: jax.Array  # []
    var_rms: jax.Array  # [K_m]


def tensor_stats(p: jax.Array, m: jax.Array, rms: jax.Array) -> TensorStats:
    """p: S, m: [K_m, *S], rms: S (any float dtypes). Reductions run in float32."""
    p, m, rms = (x.astype(jnp.float32) for x in (p, m, rms))
    axes = tuple(range(1, m.ndim))
    mean_m = jnp.mean(m, axis=axes)
    centred = m - mean_m.reshape(mean_m.shape + (1,) * p.ndim)
    rms_centred = rms[None] - mean_m.reshape(mean_m.shape + (1,) * p.ndim)
    return TensorStats(
        mean_p2=jnp.mean(jnp.square(p)),
        mean_m=mean_m,
        var_m=jnp.mean(jnp.square(centred), axis=axes),
        mean_rms=jnp.mean(rms),
        var_rms=jnp.mean(jnp.square(rms_centred), axis=axes),
    )


def clip_log_abs(x: jax.Array) -> jax.Array:
    """0.5 * clip(log(1e-8 + |10 x|), -5, 5): a bounded log scale."""
    return 0.5 * jnp.clip(jnp.log(1e-8 + jnp.abs(x * 10.0)), -5.0, 5.0)


def rank_one_hot(shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """[T, 5] one-hot of the number of dims larger than 1 (all zeros for 5 or more)."""
    ranks = np.array([sum(d > 1 for d in s) for s in shapes])
    return (ranks[:, None] == np.arange(NUM_RANK_FEATURES)[None, :]).astype(np.float32)


def lstm_features(
    stats: TensorStats,
    rank: np.ndarray,
    fraction_trained: jax.Array,
    loss_features: jax.Array,
) -> jax.Array:
    """LSTM inputs [T, 30] for T tensors (`stats` leaves stacked on a leading T axis).

    Columns, in the reference's sorted-key order: fraction_left (9), loss_features (9),
    mean_rms (1), rank (5), var_m (K_m), var_rms (K_m). Statistics are taken of m and rms
    scaled by rsqrt(max(1e-9, mean p^2)), so variances scale by its square.
    """
    num_tensors = stats.mean_p2.shape[0]
    scale = jax.lax.rsqrt(jnp.maximum(1e-9, stats.mean_p2))  # [T]
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
