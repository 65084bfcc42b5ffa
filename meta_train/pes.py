"""Truncated Persistent Evolution Strategies (PES, reference spec §7.3).

Each of N antithetic pairs keeps two inner training runs alive across estimates: the
positive side trains with θ + εᵢ and the negative with θ − εᵢ, where a fresh εᵢ is drawn
for every estimate (a "truncation" of `trunc_length` inner steps). Both sides start from
the unperturbed θ (same task, initial weights, optimizer state) and then share every step
key and batch. The accumulator Aᵢ is the sum of the perturbations that pair i's current
trajectories have seen; with δ[t,i] = L⁺[t,i] − L⁻[t,i] the normalised training losses of
the truncation's steps, mask[t,i] = "step t trained" and F[t,i] = "step t belongs to an
episode that began in this truncation",

    Mᵢ = Σₜ mask,  ℓ_oldᵢ = Σₜ δ·(1−F)·mask / Mᵢ,  ℓ_newᵢ = Σₜ δ·F·mask / Mᵢ,
    ĝ = (1/N) Σᵢ [ℓ_oldᵢ·(Aᵢ + εᵢ) + ℓ_newᵢ·εᵢ] / (2σ²),

and Aᵢ ← Aᵢ + εᵢ, or the perturbations of the episode now running if it began in this
truncation. A non-finite δ[t,i] counts as 0 (its pair is counted in `nonfinite_pairs`);
with `sign_delta`, δ[·,i] is replaced by sign(masked mean of δ[·,i])·sign_delta.

Episodes (spec §7.1): an episode of pair i lasts Lᵢ ~ LogUniform[min_length, max_length]
training steps and VeLO's `num_steps` is Lᵢ. The step that reaches Lᵢ sets `done`; the
next step is a reset step (no training, mask 0): a new task config and initial weights
from that step's key, and the optimizer re-initialised on each side with its θ ± εᵢ,
identically on both sides. With `random_offset`, the first episode of pair i is cut to
Lᵢ − sᵢ steps (sᵢ uniform in [0, Lᵢ)) so that the pairs' resets are spread out.

Attribution of the step that ends an episode: the reference's F[t] = (Σ_{s≤t} done[s] > 0)
counts the old episode's last training loss as new and sets A′ = ε even when the reset
step falls into the next truncation (spec §7.3 "Subtleties"), which biases ĝ. By default F
starts at the reset step and A′ holds exactly the perturbations of the trajectory that
continues (ε if it reset in this truncation, 0 if the reset step is still to come);
`reference_attribution=True` gives the reference's formulas.

Layout: pairs are split over the mesh axis "pairs" (`shard_map`, as FullES). The inner
states and Aᵢ live on their pair's device; εᵢ is regenerated from per-pair keys inside the
programs (once per chunk for θ ± εᵢ, and in a scan over a device's pairs for ĝ and A′),
so besides A (inherent to PES) no population × |θ| buffer is kept between programs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from meta_train import data_feed
from meta_train.es import aggregate_pairs, antithetic_thetas, perturbation, sample_length
from meta_train.learned_optimizer import VeLONetwork
from meta_train.sharding import AXIS, default_mesh, place, sharded_program, to_host
from tasks import rollout
from tasks.base import TaskFamily
from tasks.key_streams import stream
from tasks.rollout import InnerRun

PyTree = Any
__all__ = ["GradientTerms", "InnerRuns", "PESState", "TruncatedPES", "pes_gradient_terms", "sample_length"]


class InnerRuns(NamedTuple):
    """The persistent inner runs of the pairs, all leaves with a leading pairs axis (the
    carry of the unroll).

    Attributes:
      cfg: the tasks' inner configurations [pairs, ...].
      params, model_state, opt: the inner runs [pairs, 2 (θ+ε, θ−ε), ...].
      step: int32 [pairs], training steps done in the current episode.
      length: int32 [pairs], the current episode's length (VeLO's `num_steps`).
      done: bool [pairs], the episode has ended; the next step resets it.
    """

    cfg: PyTree
    params: PyTree
    model_state: PyTree
    opt: PyTree
    step: jax.Array
    length: jax.Array
    done: jax.Array


class PESState(NamedTuple):
    """The persistent state of a `TruncatedPES`, all arrays with a leading pairs axis
    (sharded over "pairs"); a pytree, so it can be checkpointed with orbax.

    Attributes:
      runs: the pairs' inner runs (`InnerRuns`).
      accumulator: Aᵢ, θ-shaped leaves [pairs, ...θ].
    """

    runs: InnerRuns
    accumulator: PyTree


class _Task(NamedTuple):
    """A pair's task and its two inner runs (θ+ε, θ−ε): the part of `InnerRuns` a
    reset replaces."""

    cfg: PyTree
    params: PyTree
    model_state: PyTree
    opt: PyTree


class _Trace(NamedTuple):
    """What a chunk of the unroll records per step (its `ys` step-major, returned as below)."""

    losses: jax.Array  # [pairs, 2, steps] normalised training losses (0 on reset steps)
    mask: jax.Array  # [pairs, steps] the step trained
    done: jax.Array  # [pairs, steps] the step ended its episode


@dataclasses.dataclass(frozen=True)
class TruncatedPES:
    """Antithetic PES over truncations of persistent inner runs (see module doc).

    Attributes:
      lopt: the learned optimizer being meta-trained (`init(θ, params, num_steps)`,
        `update(θ, state, grads, params, loss)`, as `VeLONetwork`).
      num_pairs: antithetic pairs N (each its own task instance and accumulator).
      std: σ of the perturbations.
      trunc_length: inner steps per estimate (a multiple of `chunk`).
      chunk: inner steps per compiled call; batches are made on the host one chunk at a time.
      min_length, max_length: episode lengths ~ LogUniform[min, max] per pair and episode
        (int(exp(U(log min, log max))), as the reference's LogUniformLengthSchedule).
      sign_delta: if set, δ is replaced by sign(masked mean of δ)·sign_delta per pair.
      random_offset: cut each pair's first episode at a random point (spread phases).
      reference_attribution: the reference's F and A′ (see module doc).
    """

    lopt: VeLONetwork
    num_pairs: int = 8
    std: float = 0.01
    trunc_length: int = 50
    chunk: int = 10
    min_length: int = 100
    max_length: int = 1000
    sign_delta: float | None = None
    random_offset: bool = True
    reference_attribution: bool = False

    def __post_init__(self):
        if self.num_pairs < 1 or self.chunk < 1 or self.trunc_length < 1:
            raise ValueError("num_pairs, chunk and trunc_length must be >= 1")
        if self.trunc_length % self.chunk:
            raise ValueError(f"trunc_length ({self.trunc_length}) must be a multiple of chunk ({self.chunk})")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}")
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def init(self, theta: PyTree, key: jax.Array, family: TaskFamily, mesh: Mesh | None = None) -> PESState:
        """Fresh inner runs of `family` (pair i's task and episode length from `key`), both
        sides at the unperturbed θ, and A = 0."""
        mesh = default_mesh(self.num_pairs) if mesh is None else mesh
        keys = data_feed.per_pair_keys(key, "tasks", self.num_pairs)
        return _programs(self, family, mesh).init(theta, keys)

    def estimate(
        self,
        theta: PyTree,
        state: PESState,
        key: jax.Array,
        family: TaskFamily,
        mesh: Mesh | None = None,
        *,
        donate: bool = False,
    ) -> tuple[PyTree, PESState, dict[str, float]]:
        """(ĝ, the state after this truncation, metrics). The perturbations, data and step
        keys come from `key`. With `donate`, the buffers of `state` are reused (it must not
        be used afterwards).

        Metrics: meta_loss (mean over pairs without non-finite δ of the mean over trained
        steps of (L⁺+L⁻)/2), length (trunc_length), inner_steps (trained steps, both
        sides), resets (episodes that ended), nonfinite_pairs (pairs with a non-finite δ,
        whose steps with one count as δ = 0)."""
        mesh = default_mesh(self.num_pairs) if mesh is None else mesh
        if not donate:  # the programs donate their inputs
            state = jax.tree.map(jnp.copy, state)
        inner, traces, pert_keys = self._unroll(theta, state, key, family, mesh)
        programs = _programs(self, family, mesh)
        grad, accumulator, stats = programs.finish(theta, state.accumulator, pert_keys, traces)
        stats = jax.tree.map(to_host, stats)
        metrics = {
            "meta_loss": float(stats.meta_loss),
            "length": self.trunc_length,
            "inner_steps": 2 * int(stats.trained),
            "resets": int(stats.resets),
            "nonfinite_pairs": int(stats.nonfinite_pairs),
        }
        return grad, PESState(inner, accumulator), metrics

    def _unroll(self, theta, state, key, family, mesh):
        """(inner state after the truncation, its traces (one per chunk), εᵢ keys)."""
        programs = _programs(self, family, mesh)
        pairs = NamedSharding(mesh, P(AXIS))
        pert_keys = place(data_feed.per_pair_keys(key, "perturbation", self.num_pairs), pairs)
        rngs = data_feed.pair_rngs(stream(key, "data"), self.num_pairs)
        inner = state.runs
        traces = []
        for c in range(self.trunc_length // self.chunk):
            batches = data_feed.stacked(family, rngs, "train", self.chunk)
            keys = data_feed.step_keys(stream(key, "loss"), self.num_pairs, c * self.chunk, self.chunk)
            inner, trace = programs.chunk(theta, pert_keys, inner, batches, keys)
            traces.append(trace)
        return inner, tuple(traces), pert_keys


class GradientTerms(NamedTuple):
    """Per pair [n], from a truncation's traces (see `pes_gradient_terms`)."""

    l_old: jax.Array  # float: ℓ_old, the weight of Aᵢ + εᵢ in ĝ
    l_new: jax.Array  # float: ℓ_new, the weight of εᵢ alone
    reset: jax.Array  # bool: A′ = ε
    keep: jax.Array  # bool: A′ = A + ε (neither: A′ = 0)
    nonfinite: jax.Array  # bool: a trained step had a non-finite δ
    pair_loss: jax.Array  # float: mean over trained steps of (L⁺ + L⁻)/2
    trained: jax.Array  # float: the trained steps Mᵢ


class _Stats(NamedTuple):
    """Scalars over all pairs of a truncation, from the finish program."""

    meta_loss: jax.Array
    nonfinite_pairs: jax.Array
    resets: jax.Array
    trained: jax.Array


def pes_gradient_terms(losses, mask, done, sign_delta, reference_attribution) -> GradientTerms:
    """The per-pair terms of ĝ and A′ from the truncation's traces (losses [n, 2, T],
    mask and done [n, T]); see the module doc."""
    mask = mask.astype(jnp.float32)
    delta = losses[:, 0] - losses[:, 1]
    bad = ~jnp.isfinite(delta) & (mask > 0)
    delta = jnp.where(bad | (mask == 0), 0.0, delta)
    count = jnp.sum(mask, axis=1)
    denom = jnp.maximum(count, 1.0)
    ended = jnp.cumsum(done.astype(jnp.int32), axis=1)  # episodes ended at or before t
    if reference_attribution:
        new = ended > 0
        reset, keep = new[:, -1], ~new[:, -1]
    else:  # from the reset step (the step after `done`) on, the trajectory is a new one
        new = (ended - done.astype(jnp.int32)) > 0
        reset = new[:, -1] & ~done[:, -1]
        keep = ended[:, -1] == 0
    if sign_delta is not None:
        delta = jnp.broadcast_to(jnp.sign(jnp.sum(delta * mask, axis=1) / denom)[:, None] * sign_delta, delta.shape)
    new = new.astype(jnp.float32)
    l_old = jnp.sum(delta * (1.0 - new) * mask, axis=1) / denom
    l_new = jnp.sum(delta * new * mask, axis=1) / denom
    nonfinite = jnp.any(bad, axis=1)
    side_mean = jnp.sum(jnp.where(mask[:, None] > 0, losses, 0.0), axis=2) / denom[:, None]
    pair_loss = jnp.mean(side_mean, axis=1)
    return GradientTerms(l_old, l_new, reset, keep, nonfinite, pair_loss, count)


# The pieces of an estimate, pure functions of one device's pairs (leading axis [pairs];
# `_programs` runs them under `shard_map`, so `axis_name` sums over every device's pairs).


def _both(x: PyTree) -> PyTree:
    """x on both sides of a pair: leaves [2, ...]."""
    return jax.tree.map(lambda a: jnp.stack([a, a]), x)


def _new_task(pes: TruncatedPES, family: TaskFamily, thetas, side_axes, key, length) -> _Task:
    """A pair's new task from `key` (`tasks.rollout.instantiate`), the same on both sides,
    the learned optimizer initialised on each side with its θ (± ε) for `length` steps."""
    cfg, params, model_state = rollout.instantiate(family, key)
    opt = jax.vmap(lambda th: pes.lopt.init(th, params, length), in_axes=(side_axes,), axis_size=2)(thetas)
    return _Task(cfg, _both(params), _both(model_state), opt)


def init_pairs(pes: TruncatedPES, family: TaskFamily, theta: PyTree, keys: jax.Array) -> PESState:
    """Fresh pairs from `keys` [pairs]: pair i's task from keys[i], its first episode's
    length from stream "episode_length" (cut at stream "offset" with `random_offset`),
    both sides at the unperturbed θ, A = 0."""

    def init_pair(key):
        length = sample_length(stream(key, "episode_length"), pes.min_length, pes.max_length)
        if pes.random_offset:
            length = length - jax.random.randint(stream(key, "offset"), (), 0, length, jnp.int32)
        task = _new_task(pes, family, theta, None, key, length)
        zero = jnp.zeros((), jnp.int32)
        runs = InnerRuns(**task._asdict(), step=zero, length=length, done=jnp.zeros((), bool))
        return PESState(runs, accumulator=jax.tree.map(jnp.zeros_like, theta))

    return jax.vmap(init_pair)(keys)


def unroll_chunk(
    pes: TruncatedPES, family: TaskFamily, theta: PyTree, pert_keys: jax.Array, inner: InnerRuns, batches: PyTree,
    keys: jax.Array,
) -> tuple[InnerRuns, _Trace]:  # fmt: skip
    """The pairs' runs after the steps of `batches` [pairs, steps, ...] with step keys
    `keys` [pairs, steps] (a step trains on stream "loss", or resets an ended episode
    from streams "reset" and "episode_length"), and what the steps record."""
    thetas, pair_axes, side_axes = antithetic_thetas(pes.lopt, theta, pert_keys, pes.std)

    def train_pair(th2, cfg, params, model_state, opt, batch, key):
        def side(th, p, s, o):
            run, loss = rollout.step(family, rollout.LearnedStepper(pes.lopt, th), cfg, InnerRun(p, s, o), batch, key)
            return *run, family.normalizer(loss, cfg)

        return jax.vmap(side, in_axes=(side_axes, 0, 0, 0))(th2, params, model_state, opt)

    def step(runs: InnerRuns, xs) -> tuple[InnerRuns, _Trace]:
        batch, key = xs  # [pairs, ...]
        done = runs.done
        train = jax.vmap(train_pair, in_axes=(pair_axes,) + (0,) * 6)
        k_train = jax.vmap(lambda k: stream(k, "loss"))(key)
        params1, state1, opt1, losses = train(thetas, runs.cfg, runs.params, runs.model_state, runs.opt, batch, k_train)

        def with_resets(trained):
            def reset(th2, length, k):
                return _new_task(pes, family, th2, side_axes, stream(k, "reset"), length)

            fresh = jax.vmap(reset, in_axes=(pair_axes, 0, 0))(thetas, runs.length, key)

            def pick(new, old):
                return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), new, old)

            return jax.tree.map(pick, fresh, trained)

        trained = _Task(runs.cfg, params1, state1, opt1)
        task = jax.lax.cond(jnp.any(done), with_resets, lambda t: t, trained)
        count = jnp.where(done, 0, runs.step + 1)
        ended = ~done & (count >= runs.length)
        new_length = jax.vmap(lambda k: sample_length(stream(k, "episode_length"), pes.min_length, pes.max_length))(key)
        length = jnp.where(ended, new_length, runs.length)
        losses = jnp.where(done[:, None], 0.0, losses)
        runs = InnerRuns(**task._asdict(), step=count, length=length, done=ended)
        return runs, _Trace(losses=losses, mask=~done, done=ended)

    steps_first = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (batches, keys))
    inner, trace = jax.lax.scan(step, inner, steps_first)  # trace: [steps, pairs, ...]
    return inner, _Trace(jnp.transpose(trace.losses, (1, 2, 0)), trace.mask.T, trace.done.T)


def finish(
    pes: TruncatedPES, theta: PyTree, accumulator: PyTree, pert_keys: jax.Array, traces: tuple[_Trace, ...],
    axis_name=None,
) -> tuple[PyTree, PyTree, _Stats]:  # fmt: skip
    """(ĝ, the new accumulators A′ [pairs, ...θ], stats) from the truncation's traces
    (one per chunk, in order); see the module doc."""
    std = pes.std
    trace = jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=-1), *traces)  # the chunks' steps in order
    terms = pes_gradient_terms(trace.losses, trace.mask, trace.done, pes.sign_delta, pes.reference_attribution)

    def one(total, xs):
        acc, key, lo, ln, rs, kp = xs
        eps = perturbation(theta, key, std)
        summed = jax.tree.map(jnp.add, acc, eps)
        total = jax.tree.map(lambda g, a, e: g + lo.astype(g.dtype) * a + ln.astype(g.dtype) * e, total, summed, eps)
        new_acc = jax.tree.map(lambda a, e: jnp.where(rs, e, jnp.where(kp, a, jnp.zeros_like(a))), summed, eps)
        return total, new_acc

    zeros = jax.tree.map(jnp.zeros_like, theta)
    xs = (accumulator, pert_keys, terms.l_old, terms.l_new, terms.reset, terms.keep)
    total, new_acc = jax.lax.scan(one, zeros, xs)
    ok = ~terms.nonfinite & (terms.trained > 0)
    out = aggregate_pairs(total, terms.pair_loss, ok, pes.num_pairs, std, axis_name)

    def psum(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    stats = _Stats(
        meta_loss=out.meta_loss,
        nonfinite_pairs=psum(jnp.sum(terms.nonfinite)),
        resets=psum(jnp.sum(trace.done)),
        trained=psum(jnp.sum(terms.trained)),
    )
    return out.grad, new_acc, stats


@dataclasses.dataclass(frozen=True)
class _Programs:
    init: Any
    chunk: Any
    finish: Any


@functools.lru_cache(maxsize=64)
def _programs(pes: TruncatedPES, family: TaskFamily, mesh: Mesh) -> _Programs:
    """The pieces above compiled for one (estimator, family, mesh), pairs split over the mesh."""
    pairs, rep = P(AXIS), P()
    program = functools.partial(sharded_program, mesh)
    partial = functools.partial
    return _Programs(
        init=program(partial(init_pairs, pes, family), (rep, pairs), pairs),
        chunk=program(partial(unroll_chunk, pes, family), (rep, pairs, pairs, pairs, pairs), pairs, donate_argnums=2),
        finish=program(
            partial(finish, pes, axis_name=AXIS), (rep, pairs, pairs, pairs), (rep, pairs, rep), donate_argnums=1
        ),  # fmt: skip
    )
