"""The per-tensor half of a VeLO step: accumulators, per-parameter MLP inputs, the MLP
and the step, for one parameter tensor S.

Layout (ours, not the reference's): momentum is a tuple of K_m arrays [*S], one per
decay, so that no pass slices a strided decay axis; rms is [*S]; the factored second
moments are (v_row [K_f, *S without d0], v_col [K_f, *S without d1]) for ndim >= 2 and
(v_diag [K_f, *S],) otherwise.

A step makes three passes over a tensor's elements. `first_pass` (one variadic
reduction: every whole-tensor statistic the LSTM and the input normalisation need) and
`factored_pass` (the channels that need the new factored moments) run before the LSTM;
`tensor_step` runs the per-parameter MLP after the LSTM has written its weights. Cheap
elementwise values (new m, rms, channels) are recomputed in each pass, not stored.

Each MLP input channel x_c is normalised as x_c * rsqrt(1e-5 + mean(x_c^2)) before the
first layer. That layer is linear, so the scale is folded into its weights, and the
channels that are broadcast row/column statistics contribute through small arrays; no
[*S, 30] input tensor is formed.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from velojax.config import MLP_INPUT_GROUPS, VeLOConfig
from velojax.velo_features import TensorStats
from velojax.velo_network import MLPWeights

_F32 = jnp.float32
GRAD_CLIP = 1000.0

# Input groups whose channels have a value per parameter and do not need the new
# factored moments (their mean squares come from `first_pass`), and those that do.
_EARLY = ("g", "clipped_g", "p", "m", "rms", "m_rsqrt_rms", "rsqrt_rms", "g_rsqrt_rms")
_LATE = ("fac_g", "fac_m")


def factored_dims(shape: Sequence[int]) -> tuple[int, int] | None:
    """(d1, d0): the axes of the 2nd-largest and the largest dim, ties broken by lower
    index first (numpy argsort's order); None if ndim < 2."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
    return order[-2], order[-1]


def init_accumulators(p: jax.Array, config: VeLOConfig):
    """Zero (m, rms) in p's dtype and factored moments in float32, in the module's layout."""
    shape = tuple(p.shape)
    m = tuple(jnp.zeros(shape, p.dtype) for _ in config.momentum_decays)
    k_f = (config.num_adafactor,)
    dims = factored_dims(shape)
    if dims is None:
        fac = (jnp.zeros(k_f + shape, _F32),)
    else:
        d1, d0 = dims
        fac = (jnp.zeros(k_f + tuple(np.delete(shape, d0)), _F32), jnp.zeros(k_f + tuple(np.delete(shape, d1)), _F32))
    return m, jnp.zeros(shape, p.dtype), fac


def clip_grad(g: jax.Array) -> jax.Array:
    """float32 gradient clipped to +-1000 (as the reference); NaN entries become 0."""
    g = g.astype(_F32)
    return jnp.where(jnp.isnan(g), 0.0, jnp.clip(g, -GRAD_CLIP, GRAD_CLIP))


def _as_vector(x: jax.Array) -> jax.Array:
    """Scalars become shape (1,), as in the reference's MLP."""
    return x.reshape(1) if x.ndim == 0 else x


def _norm_scale(mean_sq: jax.Array) -> jax.Array:
    return jax.lax.rsqrt(1e-5 + mean_sq)


def _safe_rsqrt(x: jax.Array) -> jax.Array:
    return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


def _group_rows(config: VeLOConfig) -> dict[str, np.ndarray]:
    """First-layer weight rows of each MLP input group."""
    ends = np.cumsum(config.mlp_group_channels)
    return {name: np.arange(e - c, e) for name, c, e in zip(MLP_INPUT_GROUPS, config.mlp_group_channels, ends)}


def _new_accumulators(g: jax.Array, m: Sequence[jax.Array], rms: jax.Array, config: VeLOConfig):
    """float32 m (list of K_m) and rms with the current gradient."""
    m_new = []
    for beta, m_k in zip(config.momentum_decays, m):
        beta = jnp.float32(beta)
        m_new.append(beta * m_k.astype(_F32) + (1.0 - beta) * g)
    beta = jnp.float32(config.rms_decays[0])
    return m_new, beta * rms.astype(_F32) + (1.0 - beta) * jnp.square(g)


def _update_factored(g: jax.Array, fac: tuple[jax.Array, ...], config: VeLOConfig) -> tuple[jax.Array, ...]:
    """New factored second moments: EMAs of g^2 + 1e-30 (row/col means if factored)."""
    g_sq = jnp.square(g) + 1e-30
    dims = factored_dims(g.shape)
    reduced = [g_sq] if dims is None else [jnp.mean(g_sq, axis=dims[1]), jnp.mean(g_sq, axis=dims[0])]
    beta = jnp.asarray(config.adafactor_decays, _F32).reshape((-1,) + (1,) * reduced[0].ndim)
    return tuple(beta * v + (1.0 - beta) * x[None] for v, x in zip(fac, reduced))


class _FactoredViews(NamedTuple):
    row: jax.Array  # what the fac_row channels broadcast: [K_f, *S without d0] (or [K_f, *S])
    col: jax.Array
    mult_g: list[jax.Array]  # fac_g[k] = g * mult_g[k] (broadcastable to S)
    mult_m: list[jax.Array]  # fac_m[k] = m[k] * mult_m[k]
    expand_row: Callable[[jax.Array], jax.Array]  # [*S without d0] -> broadcastable to S
    expand_col: Callable[[jax.Array], jax.Array]


def _factored_views(fac: tuple[jax.Array, ...], shape: tuple[int, ...]) -> _FactoredViews:
    dims = factored_dims(shape)
    if dims is None:  # vectors and scalars: one unfactored moment serves as row and column
        (v,) = fac
        identity = lambda x: x  # noqa: E731
        return _FactoredViews(v, v, list(_safe_rsqrt(v + 1e-9)), list(v**-0.5), identity, identity)
    d1, d0 = dims
    v_row, v_col = fac
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_factor = _safe_rsqrt(v_row / (jnp.mean(v_row, axis=1 + reduced_d1, keepdims=True) + 1e-9))
    col_factor = _safe_rsqrt(v_col)
    q = [jnp.expand_dims(r, d0) * jnp.expand_dims(c, d1) for r, c in zip(row_factor, col_factor)]
    return _FactoredViews(v_row, v_col, q, q, lambda x: jnp.expand_dims(x, d0), lambda x: jnp.expand_dims(x, d1))


def _channels(p32, g, m_new, rms_new, views: _FactoredViews | None) -> dict[str, list[jax.Array]]:
    """The MLP's per-element input channels by group (all but fac_row/col and their rsqrt);
    without `views`, only the `_EARLY` groups."""
    r = jax.lax.rsqrt(rms_new + 1e-6)
    channels = {
        "g": [g], "clipped_g": [jnp.clip(g, -0.1, 0.1)], "p": [p32], "m": m_new, "rms": [rms_new],
        "m_rsqrt_rms": [m * r for m in m_new], "rsqrt_rms": [r], "g_rsqrt_rms": [g * r],
    }  # fmt: skip
    if views is not None:
        channels["fac_g"] = [g * q for q in views.mult_g]
        channels["fac_m"] = [m * q for m, q in zip(m_new, views.mult_m)]
    return channels


def _rows(x: jax.Array) -> jax.Array:
    """x viewed as [rows, row length] for a two-level reduction."""
    if x.ndim >= 2:
        return x.reshape(-1, x.shape[-1])
    return x.reshape(-1, 128) if x.size % 128 == 0 else x.reshape(1, -1)


def _means(xs: list[jax.Array]) -> list[jax.Array]:
    """Means of same-shaped arrays over all their axes: one variadic reduction along rows
    (XLA:CPU runs one long scalar reduction chain several times slower), then a small sum
    over the row totals."""
    rows = [_rows(x) for x in xs]
    zeros = [jnp.zeros((), x.dtype) for x in xs]
    totals = jax.lax.reduce(rows, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
    return [jnp.sum(t) / xs[0].size for t in totals]


def first_pass(p, g, m, rms, config: VeLOConfig) -> tuple[TensorStats, jax.Array]:
    """One reduction pass: LSTM statistics of (p, old m, old rms) and the mean square of
    every per-element MLP channel of the `_EARLY` groups.

    Args: p [*S]; g [*S] clipped float32 (`clip_grad`); m (K_m x [*S]); rms [*S].
    Returns: (stats, mean squares [C_early] in `_channels` order).
    """
    p32, g, rms = _as_vector(p).astype(_F32), _as_vector(g), _as_vector(rms).astype(_F32)
    m = [_as_vector(m_k).astype(_F32) for m_k in m]
    m_new, rms_new = _new_accumulators(g, m, rms, config)
    channels = _channels(p32, g, m_new, rms_new, None)

    # Variances in the same pass, shifted by each array's first element (exact for constant
    # arrays, and without the cancellation of E[x^2] - E[x]^2 when the mean is large).
    shift_m = jnp.stack([m_k.reshape(-1)[0] for m_k in m])
    shift_r = rms.reshape(-1)[0]
    dm = [m_k - c for m_k, c in zip(m, shift_m)]
    dr = rms - shift_r
    head = [jnp.square(p32), dr, jnp.square(dr)] + dm + [jnp.square(x) for x in dm]
    means = _means(head + [jnp.square(x) for name in _EARLY for x in channels[name]])

    k = len(m)
    mean_p2, mean_dr, mean_dr2 = means[:3]
    mean_dm, mean_dm2 = jnp.stack(means[3 : 3 + k]), jnp.stack(means[3 + k : 3 + 2 * k])
    mean_m = shift_m + mean_dm
    offset = mean_m - shift_r  # mean((rms - mean_m)^2) = E[(rms-c)^2] - 2 (mean_m-c) E[rms-c] + (mean_m-c)^2
    stats = TensorStats(
        mean_p2=mean_p2,
        mean_m=mean_m,
        var_m=jnp.maximum(mean_dm2 - jnp.square(mean_dm), 0.0),
        mean_rms=shift_r + mean_dr,
        var_rms=jnp.maximum(mean_dr2 - 2.0 * offset * mean_dr + jnp.square(offset), 0.0),
    )
    return stats, jnp.stack(means[3 + 2 * k :])


def update_factored(g: jax.Array, fac: tuple[jax.Array, ...], config: VeLOConfig) -> tuple[jax.Array, ...]:
    """The new factored second moments (g [*S] clipped float32)."""
    vector = lambda v: v.reshape(-1, 1) if g.ndim == 0 else v  # noqa: E731
    new = _update_factored(_as_vector(g), tuple(vector(v) for v in fac), config)
    return tuple(v.reshape(f.shape) for v, f in zip(new, fac))


def _vector_fac(fac: tuple[jax.Array, ...], scalar: bool) -> tuple[jax.Array, ...]:
    return tuple(v.reshape(-1, 1) for v in fac) if scalar else fac


def factored_pass(g, m, new_fac, config: VeLOConfig) -> jax.Array:
    """One reduction pass for the channels that need the new factored moments: mean
    squares [C_late] of fac_g and fac_m."""
    scalar = g.ndim == 0
    g, m = _as_vector(g), [_as_vector(m_k).astype(_F32) for m_k in m]
    m_new, _ = _new_accumulators(g, m, jnp.zeros_like(g), config)
    views = _factored_views(_vector_fac(new_fac, scalar), g.shape)
    late = [g * q for q in views.mult_g] + [m_k * q for m_k, q in zip(m_new, views.mult_m)]
    return jnp.stack(_means([jnp.square(x) for x in late]))


def tensor_step(p, g, m, rms, new_fac, channel_mean_sq, weights: MLPWeights, lr_mult, mean_p2, config: VeLOConfig):
    """The per-parameter MLP and the step for one tensor.

    Args:
      p, g, m, rms: as for `first_pass` (the *old* m and rms).
      new_fac: the new factored moments (`update_factored`).
      channel_mean_sq: [C_early + C_late] from `first_pass` and `factored_pass`.
      weights: this tensor's mixed MLP weights (no leading T axis).
      lr_mult: this tensor's step multiplier from the LSTM, [].
      mean_p2: mean(p^2), [].
    Returns:
      (update, m, rms): update = cast(p - step) - p in p's dtype; the new m and rms in
      their incoming dtypes and shapes.
    """
    shape, scalar = p.shape, p.ndim == 0
    p, g, rms_in = _as_vector(p), _as_vector(g), _as_vector(rms)
    m_new, rms_new = _new_accumulators(g, [_as_vector(m_k) for m_k in m], rms_in, config)
    views = _factored_views(_vector_fac(new_fac, scalar), g.shape)
    p32 = p.astype(_F32)
    channels = _channels(p32, g, m_new, rms_new, views)
    elementwise = [x for name in channels for x in channels[name]]

    rows = _group_rows(config)
    w0 = weights.w0  # [C, H]
    w_eff = w0[np.concatenate([rows[name] for name in channels])] * _norm_scale(channel_mean_sq)[:, None]

    # fac_row/col and their rsqrt only vary along the kept axes: contract them on those
    # small arrays ([H, *S without d0] / [H, *S without d1]) and broadcast the result.
    def stat_part(v, group, rsqrt_group):
        stats = jnp.concatenate([v, jax.lax.rsqrt(v + 1e-8)])  # [2 K_f, ...]
        w = w0[np.concatenate([rows[group], rows[rsqrt_group]])]
        mean_sq = jnp.mean(jnp.square(stats), axis=tuple(range(1, stats.ndim)))  # = that of the broadcast
        return jnp.tensordot(w * _norm_scale(mean_sq)[:, None], stats, axes=((0,), (0,)))

    row_part = stat_part(views.row, "fac_row", "rsqrt_fac_row")
    col_part = stat_part(views.col, "fac_col", "rsqrt_fac_col")

    hidden = []
    for j in range(w0.shape[1]):
        h = weights.b0[j] + views.expand_row(row_part[j]) + views.expand_col(col_part[j])
        for c, x in enumerate(elementwise):
            h = h + x * w_eff[c, j]
        hidden.append(h)
    for li, (w, b) in enumerate(weights.layers):
        hidden = [jax.nn.relu(h) for h in hidden]
        n_out = 2 if li == len(weights.layers) - 1 else w.shape[1]  # output 2 is never used
        hidden = [sum((h * w[i, j] for i, h in enumerate(hidden)), b[j]) for j in range(n_out)]
    direction, magnitude = hidden

    param_scale = jnp.sqrt(mean_p2 + 1e-9)
    step = direction * (param_scale * jnp.exp(magnitude * config.exp_mult)) * config.step_mult
    step = lr_mult * step
    new_p = (p32 - step).astype(p.dtype)
    update = (new_p - p).reshape(shape)
    m_out = tuple(x.astype(m_k.dtype).reshape(shape) for x, m_k in zip(m_new, m))
    return update, m_out, rms_new.astype(rms.dtype).reshape(shape)
