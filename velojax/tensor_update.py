"""The per-tensor half of a VeLO step, for one parameter tensor of shape S.

Layout (ours, not the reference's): `moments` [K_m + 1, *S] holds the K_m momentum EMAs
and then the rms (EMA of g^2), so one elementwise kernel updates them all; the factored
second moments are (v_row [K_f, *S without d0], v_col [K_f, *S without d1]) for
ndim >= 2 and (v_diag [K_f, *S],) otherwise.

A step is: `update_moments` (in place) and `update_factored` (row/column reductions of
g^2); one reduction pass over the elements, `moment_pass` (a single variadic reduction
for every whole-tensor statistic: the input normalisation of the per-element MLP
channels, and the statistics of the new m and rms that the LSTM reads at the next
step); then, after the LSTM has written the weights, `tensor_step` (the per-parameter
MLP). Small per-tensor arithmetic on the pass results runs batched over all tensors
(`summarize`, `mlp_inputs`).

Each MLP input channel x_c is normalised as x_c * rsqrt(1e-5 + mean(x_c^2)). The first
MLP layer is linear, so that scale is folded into its weights, and the channels that
broadcast row/column statistics contribute through small arrays: no [*S, 30] input
tensor is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from velojax.config import MLP_INPUT_GROUPS, VeLOConfig
from velojax.velo_features import MomentStats
from velojax.velo_network import MLPWeights

_F32 = jnp.float32
GRAD_CLIP = 1000.0

# Per-element channel groups, in the order `summarize` reports their mean squares (the
# fac_row/col groups and their rsqrt are not per element).
ELEMENT_GROUPS = ("g", "clipped_g", "p", "m", "rms", "m_rsqrt_rms", "rsqrt_rms", "g_rsqrt_rms", "fac_g", "fac_m")
_STAT_GROUPS = (("fac_row", "rsqrt_fac_row"), ("fac_col", "rsqrt_fac_col"))


def factored_dims(shape: Sequence[int]) -> tuple[int, int] | None:
    """(d1, d0): the axes of the 2nd-largest and the largest dim, ties broken by lower
    index first (numpy argsort's order); None if ndim < 2."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
    return order[-2], order[-1]


def init_accumulators(p: jax.Array, config: VeLOConfig):
    """Zero moments [K_m + 1, *S] in p's dtype and factored moments in float32."""
    shape = tuple(p.shape)
    moments = jnp.zeros((config.num_momentum + 1,) + shape, p.dtype)
    k_f = (config.num_adafactor,)
    dims = factored_dims(shape)
    if dims is None:
        fac = (jnp.zeros(k_f + shape, _F32),)
    else:
        d1, d0 = dims
        fac = (jnp.zeros(k_f + tuple(np.delete(shape, d0)), _F32), jnp.zeros(k_f + tuple(np.delete(shape, d1)), _F32))
    return moments, fac


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


def group_rows(config: VeLOConfig) -> dict[str, np.ndarray]:
    """First-layer weight rows of each MLP input group."""
    ends = np.cumsum(config.mlp_group_channels)
    return {name: np.arange(e - c, e) for name, c, e in zip(MLP_INPUT_GROUPS, config.mlp_group_channels, ends)}


# ---------------------------------------------------------------- accumulators


def update_moments(g: jax.Array, moments: jax.Array, config: VeLOConfig) -> jax.Array:
    """New moments [K_m + 1, *S] with the clipped gradient g: m_k <- b_k m_k + (1 - b_k) g
    and rms <- b rms + (1 - b) g^2, as one elementwise expression (the zero coefficients
    add exact zeros: g is finite after clipping)."""
    decays = np.asarray(config.momentum_decays + config.rms_decays, np.float32)
    is_rms = np.arange(decays.size) == config.num_momentum
    shape = (-1,) + (1,) * g.ndim
    a = jnp.asarray(decays).reshape(shape)
    b = jnp.asarray(np.where(is_rms, 0, 1 - decays), _F32).reshape(shape)
    c = jnp.asarray(np.where(is_rms, 1 - decays, 0), _F32).reshape(shape)
    new = a * moments.astype(_F32) + b * g[None] + c * jnp.square(g)[None]
    return new.astype(moments.dtype)


def _split_moments(moments: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    """float32 (m list, rms) of a moments array (scalars as (1,))."""
    moments = moments.astype(_F32)
    if moments.ndim == 1:
        moments = moments[:, None]
    return [moments[k] for k in range(moments.shape[0] - 1)], moments[-1]


def update_factored(g: jax.Array, fac: tuple[jax.Array, ...], config: VeLOConfig):
    """New factored second moments (EMAs of g^2 + 1e-30, as row/column means if factored)
    and the mean squares of the row/column channels [2, 2 K_f] that they define."""
    scalar = g.ndim == 0
    g = _as_vector(g)
    fac_in = tuple(v.reshape(-1, 1) for v in fac) if scalar else fac
    g_sq = jnp.square(g) + 1e-30
    dims = factored_dims(g.shape)
    reduced = [g_sq] if dims is None else [jnp.mean(g_sq, axis=dims[1]), jnp.mean(g_sq, axis=dims[0])]
    beta = jnp.asarray(config.adafactor_decays, _F32).reshape((-1,) + (1,) * reduced[0].ndim)
    new = tuple(beta * v + (1.0 - beta) * x[None] for v, x in zip(fac_in, reduced))
    views = _factored_views(new, g.shape)
    mean_sq = jnp.stack([_stat_channel_mean_sq(views.row), _stat_channel_mean_sq(views.col)])
    return tuple(v.reshape(f.shape) for v, f in zip(new, fac)), mean_sq


def _stat_channels(v: jax.Array) -> jax.Array:
    """The row (or column) channels: v and rsqrt(v + 1e-8), [2 K_f, ...]."""
    return jnp.concatenate([v, jax.lax.rsqrt(v + 1e-8)])


def _stat_channel_mean_sq(v: jax.Array) -> jax.Array:
    """Mean squares [2 K_f] of the broadcast row/column channels (= over v's own elements)."""
    stats = _stat_channels(v)
    return jnp.mean(jnp.square(stats), axis=tuple(range(1, stats.ndim)))


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


# ---------------------------------------------------------------- reduction passes


def _rows(x: jax.Array) -> jax.Array:
    """x viewed as [rows, row length] for a two-level reduction."""
    if x.ndim >= 2:
        return x.reshape(-1, x.shape[-1])
    return x.reshape(-1, 128) if x.size % 128 == 0 else x.reshape(1, -1)


def _means(xs: list[jax.Array]) -> jax.Array:
    """Means [len(xs)] of same-shaped arrays over all their axes: one variadic reduction
    along rows (XLA:CPU runs one long scalar reduction chain several times slower), then
    a small sum over the row totals."""
    rows = [_rows(x) for x in xs]
    zeros = [jnp.zeros((), x.dtype) for x in xs]
    totals = jax.lax.reduce(rows, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
    return jnp.sum(jnp.stack(totals), axis=1) / xs[0].size  # one small reduction for all


class MomentPass(NamedTuple):
    """Whole-tensor means from `moment_pass`, with r = rsqrt(rms + 1e-6); shapes are per tensor
    (a leading axis is added when vmapped or gathered over tensors).

    The statistics of x in (m_1 .. m_K_m, rms) come as shifted sums: `shift` is x's first
    element, `mean_d` and `mean_d2` are mean(d) and mean(d^2) for d = x - shift, which give
    variances without cancellation.
    """

    p2: jax.Array  # [] mean p^2
    g2: jax.Array  # [] mean g^2
    clipped_g2: jax.Array  # [] mean clip(g, +-0.1)^2
    m_r2: jax.Array  # [K_m] mean (m_k r)^2
    r2: jax.Array  # [] mean r^2
    g_r2: jax.Array  # [] mean (g r)^2
    fac_g2: jax.Array  # [K_f] mean fac_g_k^2
    fac_m2: jax.Array  # [K_m] mean fac_m_k^2
    shift: jax.Array  # [K_m + 1]
    mean_d: jax.Array  # [K_m + 1]
    mean_d2: jax.Array  # [K_m + 1]


def moment_pass(p, g, moments, fac) -> MomentPass:
    """The one reduction pass over a tensor's elements (p, clipped g, *new* moments and
    factored moments): every mean of `MomentPass` from a single variadic reduction."""
    scalar = g.ndim == 0
    p32, g = _as_vector(p).astype(_F32), _as_vector(g)
    m, rms = _split_moments(moments)
    views = _factored_views(tuple(v.reshape(-1, 1) for v in fac) if scalar else fac, g.shape)
    r = jax.lax.rsqrt(rms + 1e-6)
    shifts = jnp.stack([x.reshape(-1)[0] for x in m + [rms]])
    d = [x - c for x, c in zip(m + [rms], shifts)]
    # The arrays whose mean squares each field holds (a list gives one mean per entry).
    squared = {
        "p2": p32,
        "g2": g,
        "clipped_g2": jnp.clip(g, -0.1, 0.1),
        "m_r2": [m_k * r for m_k in m],
        "r2": r,
        "g_r2": g * r,
        "fac_g2": [g * q for q in views.mult_g],
        "fac_m2": [m_k * q for m_k, q in zip(m, views.mult_m)],
    }
    xs = [x for v in squared.values() for x in (v if isinstance(v, list) else [v])]
    means = _means([jnp.square(x) for x in xs] + [y for x in d for y in (x, jnp.square(x))])
    fields, i = {}, 0
    for name, v in squared.items():
        fields[name] = means[i : i + len(v)] if isinstance(v, list) else means[i]
        i += len(v) if isinstance(v, list) else 1
    return MomentPass(**fields, shift=shifts, mean_d=means[i::2], mean_d2=means[i + 1 :: 2])


def summarize(moments: MomentPass):
    """`moment_pass` results of T tensors (fields with a leading T axis) as (mean_p2 [T],
    channel mean squares [T, C_elem] in ELEMENT_GROUPS order, MomentStats of the new
    accumulators)."""
    k = moments.m_r2.shape[1]
    shifts, mean_d, mean_d2 = moments.shift, moments.mean_d, moments.mean_d2
    mean_x = shifts + mean_d
    mean_x2 = mean_d2 + 2.0 * shifts * mean_d + jnp.square(shifts)  # E[x^2] from the shifted sums
    mean_m = mean_x[:, :k]
    offset = mean_m - shifts[:, k : k + 1]  # var_rms_k = E[(rms - mean_m_k)^2], from rms's shifted sums
    stats = MomentStats(
        mean_m=mean_m,
        var_m=jnp.maximum(mean_d2[:, :k] - jnp.square(mean_d[:, :k]), 0.0),
        mean_rms=mean_x[:, k],
        var_rms=jnp.maximum(mean_d2[:, k:] - 2.0 * offset * mean_d[:, k:] + jnp.square(offset), 0.0),
    )
    channels = [moments.g2[:, None], moments.clipped_g2[:, None], moments.p2[:, None], mean_x2[:, :k], mean_x2[:, k:]]
    channels += [moments.m_r2, moments.r2[:, None], moments.g_r2[:, None], moments.fac_g2, moments.fac_m2]
    return moments.p2, jnp.concatenate(channels, axis=1), stats


# ---------------------------------------------------------------- the per-parameter MLP


class TensorMLP(NamedTuple):
    """A tensor's per-parameter MLP with the input normalisation folded in (leading T axis
    when built for T tensors by `mlp_inputs`)."""

    w_element: jax.Array  # [C_elem, H] for the per-element channels, in ELEMENT_GROUPS order
    w_row: jax.Array  # [2 K_f, H] for the row channels (fac_row, rsqrt_fac_row)
    w_col: jax.Array  # [2 K_f, H] for the column channels
    b0: jax.Array  # [H]
    layers: tuple[tuple[jax.Array, jax.Array], ...]


def mlp_inputs(
    weights: MLPWeights, channel_mean_sq: jax.Array, stat_mean_sq: jax.Array, config: VeLOConfig
) -> TensorMLP:
    """Fold each channel's normalisation rsqrt(1e-5 + mean x^2) into the mixed first-layer
    weights, for T tensors (weights with a leading T axis; channel_mean_sq [T, C_elem];
    stat_mean_sq [T, 2, 2 K_f] from `update_factored`)."""
    rows = group_rows(config)
    element_rows = np.concatenate([rows[name] for name in ELEMENT_GROUPS])
    w0 = weights.w0  # [T, C, H]
    scaled = lambda idx, ms: w0[:, idx] * _norm_scale(ms)[..., None]  # noqa: E731
    stat_rows = [np.concatenate([rows[a], rows[b]]) for a, b in _STAT_GROUPS]
    return TensorMLP(
        w_element=scaled(element_rows, channel_mean_sq),
        w_row=scaled(stat_rows[0], stat_mean_sq[:, 0]),
        w_col=scaled(stat_rows[1], stat_mean_sq[:, 1]),
        b0=weights.b0,
        layers=weights.layers,
    )


def tensor_step(p, g, moments, new_fac, mlp: TensorMLP, lr_mult, mean_p2, config: VeLOConfig):
    """The per-parameter MLP and the step for one tensor.

    Args:
      p: parameter [*S]; g: clipped float32 gradient; moments: the *new* moments;
      new_fac: the new factored moments; mlp: this tensor's `TensorMLP` (no T axis);
      lr_mult: its step multiplier from the LSTM []; mean_p2: mean(p^2) [].
    Returns:
      the update cast(p - step) - p, in p's dtype.
    """
    shape, scalar = p.shape, p.ndim == 0
    p, g = _as_vector(p), _as_vector(g)
    m, rms = _split_moments(moments)
    views = _factored_views(tuple(v.reshape(-1, 1) for v in new_fac) if scalar else new_fac, g.shape)
    p32 = p.astype(_F32)
    r = jax.lax.rsqrt(rms + 1e-6)
    channels = (
        [g, jnp.clip(g, -0.1, 0.1), p32, *m, rms, *(m_k * r for m_k in m), r, g * r]
        + [g * q for q in views.mult_g]
        + [m_k * q for m_k, q in zip(m, views.mult_m)]
    )
    # Row/column channels vary along the kept axes only: contract them on those small
    # arrays ([H, *S without d0] / [H, *S without d1]) and broadcast the result.
    row_part = jnp.tensordot(mlp.w_row, _stat_channels(views.row), axes=((0,), (0,)))
    col_part = jnp.tensordot(mlp.w_col, _stat_channels(views.col), axes=((0,), (0,)))

    hidden = []
    for j in range(mlp.b0.shape[0]):
        h = mlp.b0[j] + views.expand_row(row_part[j]) + views.expand_col(col_part[j])
        for c, x in enumerate(channels):
            h = h + x * mlp.w_element[c, j]
        hidden.append(h)
    for li, (w, b) in enumerate(mlp.layers):
        hidden = [jax.nn.relu(h) for h in hidden]
        n_out = 2 if li == len(mlp.layers) - 1 else w.shape[1]  # output 2 is never used
        hidden = [sum((h * w[i, j] for i, h in enumerate(hidden)), b[j]) for j in range(n_out)]
    direction, magnitude = hidden

    param_scale = jnp.sqrt(mean_p2 + 1e-9)
    step = direction * (param_scale * jnp.exp(magnitude * config.exp_mult)) * config.step_mult
    step = lr_mult * step
    new_p = (p32 - step).astype(p.dtype)
    return (new_p - p).reshape(shape)
