"""TruncatedPES: the spec §7.3 estimate, its accumulator, unbiasedness, NaN pairs,
sharding, and PES meta-training runs that resume bit-identically.

Most tests use `SGD` (a two-parameter learned optimizer that compiles in a blink); the
train.py test runs the VeLO network."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train import checkpointing, configs, data_feed, train
from meta_train.config import PESConfig
from meta_train.es import perturbation, sample_length
from meta_train.pes import InnerRuns, PESState, TruncatedPES
from meta_train.sharding import default_mesh
from tasks.families.quadratic import Quadratic
from tasks.key_streams import stream
from tests.meta_train.helpers import QUADRATIC, SGD, TINY_PES_OVERRIDES, TINY_PES_RUN, SometimesNaN, cli, run_cluster
from velojax.checkpoint import load_weights

# Episodes of exactly 20 steps from step 0, two 10-step truncations each.
PES = TruncatedPES(SGD, num_pairs=4, std=0.05, trunc_length=10, chunk=5, min_length=20, max_length=20,
                   random_offset=False)  # fmt: skip
THETA = SGD.init_theta()


def _vec(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _host(state):
    return jax.tree.map(np.asarray, state)


def _copy(state):
    return jax.tree.map(jnp.copy, state)


@jax.jit
def _side_losses(theta, eps, sign, params, cfg, batches):
    """Per-step normalised training losses of one QUADRATIC run with SGD at θ + sign·ε."""
    th = jax.tree.map(lambda t, e: t + sign * e, theta, eps)

    def step(carry, batch):
        params, opt = carry
        (loss, _), grads = QUADRATIC.loss_and_grad(params, {}, None, batch, cfg)
        return SGD.update(th, opt, grads, params, loss), QUADRATIC.normalizer(loss, cfg)

    return jax.lax.scan(step, (params, SGD.init(theta, params, 0)), batches)[1]


def test_one_whole_episode_is_antithetic_es_of_the_average_loss():
    """trunc_length = episode length, from a fresh state (A = 0): ĝ = (1/N) Σᵢ Δᵢ εᵢ/(2σ²)
    with Δᵢ the difference of the sides' mean normalised training losses, recomputed here
    step by step from the same tasks, batches and perturbations."""
    pes = dataclasses.replace(PES, min_length=10, max_length=10)
    state0 = _host(pes.init(THETA, jax.random.PRNGKey(0), QUADRATIC))
    key = jax.random.PRNGKey(1)
    grad, state1, metrics = pes.estimate(THETA, state0, key, QUADRATIC)

    # the estimator's key streams: "data" for the host batches, "perturbation" (pair) for εᵢ
    rngs = data_feed.pair_rngs(stream(key, "data"), pes.num_pairs)
    batches = [data_feed.stacked(QUADRATIC, rngs, "train", pes.chunk) for _ in range(2)]
    total, losses = np.zeros(2), []
    for i, k in enumerate(stream(key, "perturbation", i) for i in range(pes.num_pairs)):
        eps = perturbation(THETA, k, pes.std)
        params = jax.tree.map(lambda x, i=i: x[i, 0], state0.runs.params)
        cfg = jax.tree.map(lambda x, i=i: x[i], state0.runs.cfg)
        steps = jax.tree.map(lambda *b, i=i: np.concatenate([x[i] for x in b]), *batches)
        pos, neg = (np.asarray(_side_losses(THETA, eps, s, params, cfg, steps)) for s in (1.0, -1.0))
        total += np.mean(pos - neg) * _vec(eps)
        losses.append((pos.mean() + neg.mean()) / 2)
    np.testing.assert_allclose(_vec(grad), total / (pes.num_pairs * 2 * pes.std**2), rtol=2e-4, atol=1e-6)
    assert metrics["meta_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert metrics["resets"] == 4 and metrics["inner_steps"] == 2 * 4 * 10 and metrics["nonfinite_pairs"] == 0
    assert np.all(np.asarray(state1.runs.done)) and np.all(np.asarray(state1.runs.step) == 10)
    assert not np.any(_vec(jax.tree.map(np.asarray, state1.accumulator)))  # the next step starts a new episode


def _spec_gradient(traces, accumulator, eps, std, reference):
    """ĝ of spec §7.3 from the per-step traces, written out per pair with numpy."""
    losses, mask, done = (
        np.concatenate([np.asarray(getattr(t, f)) for t in traces], axis=-1) for f in ("losses", "mask", "done")
    )
    total = 0.0
    for i in range(losses.shape[0]):
        delta = np.where(mask[i], losses[i, 0] - losses[i, 1], 0.0)
        ended = np.cumsum(done[i])
        new = ended > 0 if reference else ended - done[i] > 0
        m = max(mask[i].sum(), 1)
        l_old, l_new = np.sum(delta * ~new) / m, np.sum(delta * new) / m
        total = total + l_old * (accumulator[i] + eps[i]) + l_new * eps[i]
    return total / (losses.shape[0] * 2 * std**2)


@pytest.mark.parametrize("reference", [False, True])
def test_accumulator_and_gradient_across_truncations(reference):
    """20-step episodes, 10-step truncations from step 0. Calls: 1 no reset (A = ε₁);
    2 the episode ends at the last step (A = 0: the new episode has not begun; the
    reference keeps ε₂); 3 reset step first (A = A₂ + ε₃); 4 no reset (A = A₃ + ε₄);
    5 ends at step 0, resets at step 1 (A = ε₅). Each ĝ is the spec formula on the
    call's traces; with donate=False the input state stays usable and gives the same."""
    pes = dataclasses.replace(PES, reference_attribution=reference)
    mesh = default_mesh(pes.num_pairs)
    state = pes.init(THETA, jax.random.PRNGKey(3), QUADRATIC, mesh)
    eps_of = []
    for call in range(1, 6):
        key = jax.random.PRNGKey(100 + call)
        _, traces, pert_keys = pes._unroll(THETA, _copy(state), key, QUADRATIC, mesh)
        eps = np.stack([_vec(perturbation(THETA, k, pes.std)) for k in np.asarray(pert_keys)])
        eps_of.append(eps)
        before = np.stack([_vec(a) for a in zip(*[np.asarray(x) for x in jax.tree.leaves(state.accumulator)])])
        grad, new_state, metrics = pes.estimate(THETA, state, key, QUADRATIC, mesh)
        again, _, _ = pes.estimate(THETA, state, key, QUADRATIC, mesh)
        np.testing.assert_array_equal(_vec(grad), _vec(again))
        np.testing.assert_allclose(_vec(grad), _spec_gradient(traces, before, eps, pes.std, reference),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        state = new_state
        after = np.stack([_vec(a) for a in zip(*[np.asarray(x) for x in jax.tree.leaves(state.accumulator)])])
        if call == 1:
            expected = eps_of[0]
        elif call == 2:
            expected = eps_of[1] if reference else 0 * eps  # the reference keeps ε₂
        elif call in (3, 4):
            expected = (eps_of[1] if reference else 0) + sum(eps_of[2:call])
        else:
            expected = eps_of[4]
        np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-9)
        assert metrics["resets"] == (4 if call in (2, 5) else 0), (call, metrics)
        assert metrics["inner_steps"] == 2 * 4 * (9 if call in (3, 5) else 10)  # a reset step does not train
    assert np.all(np.asarray(state.runs.step) == 8) and np.all(np.asarray(state.runs.length) == 20)


FLAT = Quadratic(dim=4, batch_size=1, noise=0.0)  # deterministic: data do not matter


def test_mean_of_pes_estimates_is_the_gradient_of_the_episode_loss():
    """Two truncations cover a 20-step episode, so E[(ĝ₁ + ĝ₂)/2] = ∇ of the episode's
    average normalised loss (θ held fixed, Gaussian smoothing negligible at σ = 0.01) —
    through both truncations, which truncated ES (no accumulator) would miss: its target
    cuts the gradient between them. 50 draws of 64 pairs against the exact gradient
    (jax.grad through the unroll) on the same tasks: within 3 standard errors, while the
    truncated target is more than 5 standard errors away."""
    pes = dataclasses.replace(PES, num_pairs=64, std=0.01)
    batch = FLAT.get_batch(np.random.default_rng(0), "train")

    def episode_loss(theta, params, cfg, cut):
        def step(carry, t):
            params, opt = carry
            params, opt = jax.tree.map(lambda x: jnp.where(cut & (t == 10), jax.lax.stop_gradient(x), x), (params, opt))
            (loss, _), grads = FLAT.loss_and_grad(params, {}, None, batch, cfg)
            return SGD.update(theta, opt, grads, params, loss), FLAT.normalizer(loss, cfg)

        _, losses = jax.lax.scan(step, (params, SGD.init(theta, params, 20)), jnp.arange(20))
        return jnp.mean(losses)

    @jax.jit
    def exact(params, cfg):
        grad = jax.vmap(jax.grad(episode_loss), (None, 0, 0, None))
        return [jax.tree.map(lambda g: g.mean(0), grad(THETA, params, cfg, c)) for c in (False, True)]

    diffs, gaps = [], []
    for k in range(50):
        key = jax.random.PRNGKey(1000 + k)
        state = pes.init(THETA, key, FLAT)
        full, cut = exact(jax.tree.map(lambda x: np.asarray(x)[:, 0], state.runs.params), _host(state.runs.cfg))
        g1, state, _ = pes.estimate(THETA, state, jax.random.fold_in(key, 1), FLAT, donate=True)
        g2, state, _ = pes.estimate(THETA, state, jax.random.fold_in(key, 2), FLAT, donate=True)
        diffs.append((_vec(g1) + _vec(g2)) / 2 - _vec(full))
        gaps.append(_vec(cut) - _vec(full))
    diffs = np.asarray(diffs)
    mean, se = diffs.mean(0), diffs.std(0, ddof=1) / np.sqrt(len(diffs))
    assert np.all(np.abs(mean) < 3 * se), (mean, se)
    truncated = diffs - np.asarray(gaps)  # the estimates minus the truncated target
    t_mean, t_se = truncated.mean(0), truncated.std(0, ddof=1) / np.sqrt(len(diffs))
    assert np.any(np.abs(t_mean) > 5 * t_se), (t_mean, t_se)


def test_nan_pairs_are_dropped_and_counted():
    family = SometimesNaN(dim=6, batch_size=2)
    pes = dataclasses.replace(PES, num_pairs=8)
    state = pes.init(THETA, jax.random.PRNGKey(7), family)
    bad = int(np.sum(np.asarray(state.runs.cfg["target"])[:, 0] > 0))
    grad, state, metrics = pes.estimate(THETA, state, jax.random.PRNGKey(8), family)
    assert 0 < bad < 8 and metrics["nonfinite_pairs"] == bad, (bad, metrics)
    assert np.all(np.isfinite(_vec(grad))) and np.any(_vec(grad) != 0)
    assert np.isfinite(metrics["meta_loss"]) and np.all(np.isfinite(_vec(_host(state.accumulator))))


def test_two_devices_give_the_one_device_estimates():
    assert jax.device_count() == 2  # tests/conftest.py
    results = {}
    for n in (1, 2):
        mesh = default_mesh(PES.num_pairs, jax.devices()[:n])
        state = PES.init(THETA, jax.random.PRNGKey(11), QUADRATIC, mesh)
        out = []
        for call in range(5):  # through episode ends and resets
            key = jax.random.PRNGKey(20 + call)
            grad, state, metrics = PES.estimate(THETA, state, key, QUADRATIC, mesh, donate=True)
            out.append((_vec(grad), metrics))
        results[n] = out, _host(state)
        assert jax.tree.leaves(state.accumulator)[0].sharding.spec == jax.sharding.PartitionSpec("pairs")
    for (g1, m1), (g2, m2) in zip(results[1][0], results[2][0]):
        np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-6)
        assert m1["resets"] == m2["resets"] and m1["meta_loss"] == pytest.approx(m2["meta_loss"], rel=1e-6)
    for a, b in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[2][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_episode_lengths_are_log_uniform_and_offsets_spread_phases():
    lengths = np.asarray(jax.vmap(lambda k: sample_length(k, 10, 1000))(jax.random.split(jax.random.PRNGKey(0), 2000)))
    assert lengths.min() >= 10 and lengths.max() <= 1000
    assert abs(np.log(lengths + 0.5).mean() - (np.log(10) + np.log(1000)) / 2) < 0.1
    pes = dataclasses.replace(PES, num_pairs=8, min_length=10, max_length=40, random_offset=True)
    state = pes.init(THETA, jax.random.PRNGKey(0), QUADRATIC)
    first = np.asarray(state.runs.length)  # first episodes cut at random points: some below min_length
    assert first.min() >= 1 and first.max() <= 40 and first.min() < 10 and len(set(first.tolist())) > 4


def test_state_keeps_its_checkpoint_layout():
    """Checkpoints (orbax) hold PESStates and are restored into a fresh state's structure,
    so its fields, their order and its leaves stay the same through an estimate; the
    unroll's carry is the state's `runs`."""
    assert PESState._fields == ("runs", "accumulator")
    assert InnerRuns._fields == ("cfg", "params", "model_state", "opt", "step", "length", "done")
    state = PES.init(THETA, jax.random.PRNGKey(0), QUADRATIC)
    assert isinstance(state.runs, InnerRuns)
    _, after, _ = PES.estimate(THETA, state, jax.random.PRNGKey(1), QUADRATIC)
    assert type(after) is PESState and type(after.runs) is InnerRuns
    assert jax.tree.structure(after) == jax.tree.structure(state)


@pytest.mark.parametrize(
    "bad", [dict(trunc_length=12, chunk=5), dict(num_pairs=0), dict(min_length=5, max_length=2), dict(std=0)]
)
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        TruncatedPES(SGD, **bad)


def test_pes_config_fields():
    config = configs.get("tiny_cpu").with_overrides(["estimator=pes", "estimator.trunc_length=75"])
    assert isinstance(config.estimator, PESConfig) and config.estimator.trunc_length == 75
    # the fields the two estimators share are kept when the kind changes
    assert (config.estimator.num_pairs, config.estimator.chunk, config.estimator.sign_delta) == (8, 25, 1.0)
    assert type(config).from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="multiple of chunk"):
        configs.get("tiny_cpu").with_overrides(["estimator=pes", "estimator.trunc_length=60"])
    with pytest.raises(ValueError, match="estimator must be one of"):
        configs.get("tiny_cpu").with_overrides(["estimator=truncated"])
    with pytest.raises(ValueError, match="PESConfig has no field 'loss_type'"):
        configs.get("tiny_cpu").with_overrides(["estimator=pes", "estimator.loss_type=avg"])


def test_pes_run_resumes_bit_identically(tmp_path):
    """A PES run (VeLO network) stopped after 2 steps and resumed from its checkpoint
    (PES state included; re-initialised at the pool redraw of step 3) ends at the θ of an
    uninterrupted run."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train.train(TINY_PES_RUN, whole, progress=False)
    train.train(TINY_PES_RUN, split, progress=False, stop_after=2)
    assert checkpointing.Checkpointer(split / "checkpoints").latest_step() == 2
    train.train(TINY_PES_RUN, split, progress=False)
    for x, y in zip(*(jax.tree.leaves(load_weights(d / "theta", TINY_PES_RUN.network())) for d in (whole, split))):
        np.testing.assert_array_equal(x, y)
    rows = (split / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all('"resets"' in r for r in rows)


@pytest.mark.slow  # two CLI processes compile multi-process programs (~2 min cold on 2 cores)
def test_two_process_pes_run_makes_the_one_process_update(tmp_path):
    """PES across two processes on 127.0.0.1 (1 CPU device each; the PES states' pairs
    split between them, checkpointed and re-initialised at the pool redraw) ends at the θ
    of this process with 2 devices (up to summation order)."""
    train.train(TINY_PES_RUN, tmp_path / "one", progress=False)
    outs = run_cluster(cli("tiny_cpu_pes", tmp_path / "two", TINY_PES_OVERRIDES))
    assert "2 device(s) in 2 process(es)" in outs[0]
    one, two = (load_weights(tmp_path / d / "theta", TINY_PES_RUN.network()) for d in ("one", "two"))
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all('"resets"' in r for r in rows)
