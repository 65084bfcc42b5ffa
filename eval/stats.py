"""Summary statistics of per-task speedups: fractions above thresholds, median and IQM
with percentile-bootstrap 95% confidence intervals (resampling tasks), per family."""

from __future__ import annotations

import numpy as np

THRESHOLDS = (1.0, 2.0, 4.0, 16.0)
BOOTSTRAP_SAMPLES = 10_000


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (the 25%-75% trimmed mean), with
    fractional weights at the cut points so it is exact for any n."""
    x = np.sort(np.asarray(x, np.float64), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of an empty array")
    # weight of order statistic i = overlap of [i, i+1) with [n/4, 3n/4), over n/2
    lo, hi = n / 4, 3 * n / 4
    idx = np.arange(n)
    w = np.clip(np.minimum(idx + 1, hi) - np.maximum(idx, lo), 0, 1) / (n / 2)
    shape = [1] * x.ndim
    shape[axis] = n
    return np.sum(x * w.reshape(shape), axis=axis)


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
