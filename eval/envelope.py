"""The "steps relative to LR-tuned Adam" metric (reference spec §6.3), in numpy.

An Adam sweep gives, per learning rate, a seed-averaged loss curve sampled at `steps`.
`adam_envelope` smooths each curve with an EMA (the reference: 0.95 per logged point,
logged every 10 steps of a 100k-step sweep; here 0.95 per `ema_steps` steps, by default
1/10,000 of the sweep, so a short sweep is smoothed over the same fraction of it), takes
the per-step minimum over learning rates, resamples it onto `num_points` evenly spaced
steps and makes it non-increasing: E(s). `steps_to_reach(E, L)` inverts it (the step at
which E first reaches L, linearly interpolated; the sweep's length below min E, 0 above
E(0) or for a non-finite L) and `speedup` divides that by the optimizer's step count.
"""

from __future__ import annotations

import dataclasses

import numpy as np

EMA_DECAY = 0.95
# The reference logs every 10 steps of 100k: EMA_DECAY per 1/10,000 of the sweep.
EMA_FRACTION = 1e-4
NUM_POINTS = 512


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A non-increasing Adam envelope: loss[k] at steps[k] (both [num_points], float64)."""

    steps: np.ndarray
    loss: np.ndarray

    def __post_init__(self):
        steps, loss = np.asarray(self.steps, np.float64), np.asarray(self.loss, np.float64)
        if steps.ndim != 1 or steps.shape != loss.shape or steps.size < 2:
            raise ValueError(f"an envelope needs two 1-d arrays of one length >= 2, got {steps.shape}, {loss.shape}")
        if np.any(np.diff(steps) <= 0):
            raise ValueError("envelope steps must be strictly increasing")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "loss", loss)

    @property
    def max_steps(self) -> float:
        return float(self.steps[-1])

    def steps_to_reach(self, loss) -> np.ndarray:
        """Adam steps needed to reach `loss` (scalar or array); see the module doc."""
        return steps_to_reach(self, loss)


def ema(curve: np.ndarray, decay=EMA_DECAY) -> np.ndarray:
    """x₀ = L₀, xₜ = dₜ·xₜ₋₁ + (1 − dₜ)·Lₜ along the last axis (NaN stays NaN onwards);
    `decay` is one number or one per point (dₜ for t ≥ 1)."""
    curve = np.asarray(curve, np.float64)
    decay = np.broadcast_to(np.asarray(decay, np.float64), curve.shape[-1:])
    out = np.empty_like(curve)
    out[..., 0] = curve[..., 0]
    for t in range(1, curve.shape[-1]):
        out[..., t] = decay[t] * out[..., t - 1] + (1.0 - decay[t]) * curve[..., t]
    return out


def adam_envelope(
    steps: np.ndarray, curves: np.ndarray, num_points: int = NUM_POINTS, ema_steps: float | None = None
) -> Envelope:
    """Envelope of seed-averaged curves [num_lrs, len(steps)] sampled at `steps`
    (non-finite points ignored; a learning rate that diverged drops out where it did).
    The EMA decays by 0.95 per `ema_steps` steps (default: EMA_FRACTION of the sweep)."""
    steps = np.asarray(steps, np.float64)
    curves = np.asarray(curves, np.float64)
    if curves.ndim != 2 or curves.shape[1] != steps.shape[0]:
        raise ValueError(f"curves must be [num_lrs, {steps.shape[0]}], got {curves.shape}")
    ema_steps = (steps[-1] - steps[0]) * EMA_FRACTION if ema_steps is None else ema_steps
    gaps = np.diff(steps, prepend=steps[0])
    smooth = ema(np.where(np.isfinite(curves), curves, np.nan), EMA_DECAY ** (gaps / max(ema_steps, 1e-12)))
    with np.errstate(all="ignore"):
        lower = np.nanmin(np.where(np.isnan(smooth), np.inf, smooth), axis=0)
    lower = np.where(np.isfinite(lower), lower, np.nan)
    if np.all(np.isnan(lower)):
        raise ValueError("every learning rate diverged: no envelope")
    grid = np.linspace(steps[0], steps[-1], num_points)
    ok = ~np.isnan(lower)
    resampled = np.interp(grid, steps[ok], lower[ok])
    return Envelope(grid, np.minimum.accumulate(resampled))


def steps_to_reach(envelope: Envelope, loss) -> np.ndarray:
    """N(L): jnp.interp(L, reversed E, reversed steps) with the reference's clamps."""
    loss = np.asarray(loss, np.float64)
    e, s = envelope.loss[::-1], envelope.steps[::-1]
    out = np.interp(loss, e, s, left=envelope.max_steps, right=0.0)
    return np.where(np.isfinite(loss), out, 0.0)


def speedup(envelope: Envelope, final_loss, steps: int) -> np.ndarray:
    """N(L̄(T)) / T: saturates at envelope.max_steps / T (10 for 100k-step baselines and T = 10k)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps_to_reach(envelope, final_loss) / float(steps)
