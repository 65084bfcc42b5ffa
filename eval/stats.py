"""Summary statistics of per-task speedups: fractions above thresholds, median and IQM
with percentile-bootstrap 95% confidence intervals (resampling tasks), per family."""

from __future__ import annotations

import numpy as np
import scipy.stats

THRESHOLDS = (1.0, 2.0, 4.0, 16.0)
BOOTSTRAP_SAMPLES = 10_000
#: Said in every report: how its IQMs are computed, and since when.
IQM_DEFINITION = (
    "IQM = mean of the middle 50% after trimming int(0.25·n) from each end (scipy.stats.trim_mean); "
    "reports before 2026-12-07 weighted fractional ranks"
)


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: `scipy.stats.trim_mean(x, 0.25)` along `axis`, the mean after
    dropping int(0.25 * n) values from each end (as rliable reports it)."""
    x = np.asarray(x, np.float64)
    if x.shape[axis] == 0:
        raise ValueError("iqm of an empty array")
    return scipy.stats.trim_mean(x, 0.25, axis=axis)


def bootstrap_ci(
    x: np.ndarray, statistic, samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(x_resampled, axis=-1)` (deterministic)."""
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = x[rng.integers(0, x.size, size=(samples, x.size))]
    values = statistic(draws, axis=-1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def summarize(speedups: np.ndarray, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """{n, median, median_ci, iqm, iqm_ci, mean, frac_ge_{t}} over tasks (NaN entries ignored)."""
    x = np.asarray(speedups, np.float64)
    x = x[~np.isnan(x)]
    out: dict = {"n": int(x.size)}
    if x.size == 0:
        return out | {"median": None, "median_ci": None, "iqm": None, "iqm_ci": None, "mean": None}
    out |= {
        "median": float(np.median(x)),
        "median_ci": bootstrap_ci(x, np.median, samples),
        "iqm": float(iqm(x)),
        "iqm_ci": bootstrap_ci(x, iqm, samples),
        "mean": float(np.mean(x)),
    }
    for t in THRESHOLDS:
        out[f"frac_ge_{t:g}"] = float(np.mean(x >= t))
    return out


def by_family(speedups: dict[str, float], family_of, samples: int = BOOTSTRAP_SAMPLES) -> dict[str, dict]:
    """{family: summarize(...)} for {task: speedup}, families sorted by name, plus "all"."""
    families: dict[str, list[float]] = {}
    for task, s in speedups.items():
        families.setdefault(family_of(task), []).append(s)
    out = {f: summarize(np.array(v), samples) for f, v in sorted(families.items())}
    out["all"] = summarize(np.array(list(speedups.values())), samples)
    return out
