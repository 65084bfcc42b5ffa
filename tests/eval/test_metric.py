"""The speedup metric (spec §6.3) on hand-computed cases and on the reference's published
Adam envelopes; summary statistics."""

import numpy as np
import pytest

from eval import baselines, envelope, stats
from eval.published import ADAM_ENVELOPES, MULTIPLE_BASELINES


def linear_envelope(max_steps=1000.0, n=11):
    steps = np.linspace(0, max_steps, n)
    return envelope.Envelope(steps, 1.0 - steps / max_steps * 0.9)  # 1.0 -> 0.1


def test_ema_by_hand():
    np.testing.assert_allclose(envelope.ema(np.array([1.0, 0.0, 0.0]), 0.5), [1.0, 0.5, 0.25])
    # per-point decays
    np.testing.assert_allclose(envelope.ema(np.array([1.0, 0.0, 0.0]), [0.0, 0.5, 0.0]), [1.0, 0.5, 0.0])


def test_steps_to_reach_interpolates_and_clamps():
    env = linear_envelope()
    np.testing.assert_allclose(env.steps_to_reach(0.55), 500.0)
    np.testing.assert_allclose(env.steps_to_reach(np.array([0.91, 0.1])), [100.0, 1000.0])
    assert env.steps_to_reach(0.05) == 1000.0  # below min E: the sweep's length
    assert env.steps_to_reach(1.5) == 0.0  # above E(0)
    assert env.steps_to_reach(np.nan) == 0.0 and env.steps_to_reach(np.inf) == 0.0
    np.testing.assert_allclose(envelope.speedup(env, 0.55, steps=100), 5.0)
    assert envelope.speedup(env, 0.0, steps=100) == 10.0  # capped at 1000/100


def test_envelope_of_synthetic_sweep():
    # logged every 10 steps of 100k: the reference's EMA 0.95 per point
    steps = np.arange(0, 100_001, 10)
    fast = np.where(steps < 50, 1.0 - steps / 100, 2.0)  # diverges after step 40
    slow = 1.0 - steps / 200_000
    env = envelope.adam_envelope(steps, np.stack([fast, slow]), num_points=steps.size)
    smooth_fast = envelope.ema(fast, 0.95)
    smooth_slow = envelope.ema(slow, 0.95)
    expect = np.minimum.accumulate(np.minimum(smooth_fast, smooth_slow))
    np.testing.assert_allclose(env.steps, steps)
    np.testing.assert_allclose(env.loss, expect)
    assert np.all(np.diff(env.loss) <= 0)
    # by hand: after one point x1 = 0.95*1 + 0.05*0.9 for the fast curve
    np.testing.assert_allclose(env.loss[1], 0.95 + 0.05 * 0.9)


def test_envelope_ignores_diverged_runs_and_scales_the_smoothing():
    steps = np.arange(0, 201, 20)  # a 200-step sweep logged every 20: 0.95 per 0.02 steps by default
    good = np.linspace(1.0, 0.5, steps.size)
    bad = np.full(steps.size, np.nan)
    env = envelope.adam_envelope(steps, np.stack([good, bad]), num_points=steps.size)
    np.testing.assert_allclose(env.loss, envelope.ema(good, 0.95**1000))
    env = envelope.adam_envelope(steps, np.stack([good, bad]), num_points=steps.size, ema_steps=10)
    np.testing.assert_allclose(env.loss, envelope.ema(good, 0.95**2))
    with pytest.raises(ValueError, match="diverged"):
        envelope.adam_envelope(steps, np.stack([bad, bad]))
    with pytest.raises(ValueError, match="num_lrs"):
        envelope.adam_envelope(steps, good)


def test_bad_envelopes_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        envelope.Envelope(np.array([0.0, 0.0]), np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="one length"):
        envelope.Envelope(np.array([0.0, 1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="steps"):
        envelope.speedup(linear_envelope(), 0.5, steps=0)


@pytest.fixture(scope="module")
def published():
    return baselines.load_reference(ADAM_ENVELOPES), baselines.load_reference(MULTIPLE_BASELINES)


def test_published_envelopes_import_exactly(published):
    adam, multi = published
    assert len(adam) == 75 and len(multi) == 125
    with np.load(ADAM_ENVELOPES) as z:
        for task in z.files:
            np.testing.assert_array_equal(adam[task].envelope.steps, z[task][0])
            np.testing.assert_array_equal(adam[task].envelope.loss, z[task][1])
    for b in adam.values():
        assert b.envelope.max_steps == 100_000 and b.envelope.steps.size == 512
        assert np.all(np.diff(b.envelope.loss) <= 0)  # monotone, as our construction makes them


def test_metric_on_published_envelopes(published):
    adam, multi = published
    for task, b in adam.items():
        e = b.envelope
        k = int(np.argmax(np.diff(e.loss) < 0)) + 1  # a point where E strictly drops
        np.testing.assert_allclose(e.steps_to_reach(e.loss[k]), e.steps[k], rtol=1e-9)
        assert envelope.speedup(e, e.loss[-1] - 1.0, 10_000) == 10.0  # saturates at 100k / 10k
        assert envelope.speedup(e, e.loss[0] + 1.0, 10_000) == 0.0
        # the envelope over several baselines is below Adam's alone, so the same loss is a
        # smaller speedup against it
        assert np.all(multi[task].envelope.loss <= e.loss + 1e-12)
        mid = e.loss[256]
        assert envelope.speedup(multi[task].envelope, mid, 10_000) <= envelope.speedup(e, mid, 10_000) + 1e-12


def test_iqm_and_summary_by_hand():
    np.testing.assert_allclose(stats.iqm(np.arange(1.0, 9.0)), 4.5)
    np.testing.assert_allclose(
        stats.iqm(np.arange(1.0, 6.0)), 3.0
    )  # trim_mean: int(1.25) = 1 dropped from each end, mean(2, 3, 4)
    s = stats.summarize(np.array([0.5, 1.0, 2.0, 4.0, 20.0, np.nan]), samples=2000)
    assert s["n"] == 5 and s["median"] == 2.0
    assert (s["frac_ge_1"], s["frac_ge_2"], s["frac_ge_4"], s["frac_ge_16"]) == (0.8, 0.6, 0.4, 0.2)
    lo, hi = s["median_ci"]
    assert 0.5 <= lo <= 2.0 <= hi <= 20.0
    assert stats.summarize(np.full(7, 3.0))["iqm_ci"] == (3.0, 3.0)
    assert stats.bootstrap_ci(np.arange(10.0), np.median) == stats.bootstrap_ci(np.arange(10.0), np.median)


def test_by_family_groups_tasks():
    out = stats.by_family({"a1": 1.0, "a2": 3.0, "b1": 0.5}, lambda t: t[0], samples=100)
    assert list(out) == ["a", "b", "all"]
    assert out["a"]["median"] == 2.0 and out["b"]["n"] == 1 and out["all"]["n"] == 3
