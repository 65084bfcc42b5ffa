"""Antithetic evolution-strategies estimators of the meta-gradient (reference spec §7).

`FullES` (the VeLO estimator, §7.2): N antithetic pairs, pair i trains task i (its own
inner config, initial weights and data, identical on both sides) with θ + εᵢ and θ − εᵢ
for one rollout length L (VeLO's `num_steps` = L), then

    Δᵢ = nan_to_num(L⁺ᵢ − L⁻ᵢ) (NaN/±inf → 0), optionally sign(Δᵢ)·s,
    ĝ = (1/N) Σᵢ Δᵢ εᵢ / (2σ²).

Perturbations εᵢ = σ·𝒩(0, I) are regenerated from per-pair keys inside the compiled
programs: the rollout chunk makes each device's pairs' θ ± εᵢ as it needs them, and the
gradient is a scan over a device's pairs, so the estimator holds O(|θ|) per device besides
what the vmapped rollouts themselves need. Pairs are split over the mesh axis "pairs"
(`shard_map`); the pair sums are `psum`s inside the programs.

This module holds the `Estimator` interface and FullES; the pieces both estimators use
live in `sharding` (mesh, placement), `es` (the ES maths) and `data_feed` (host batches
and loss keys). Their names are importable from here as well, as before the split.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from meta_train import data_feed
from meta_train.data_feed import pair_rngs, per_pair_keys
from meta_train.es import (
    OWN_DRAW_SIZE,
    aggregate_pairs,
    antithetic_thetas,
    es_gradient_sum,
    perturbation,
    rollout_length,
)
from meta_train.learned_optimizer import VeLONetwork
from meta_train.sharding import AXIS, default_mesh, place, sharded_program, to_host
from tasks import rollout
from tasks.base import TaskFamily
from tasks.key_streams import stream

# This module's names and, for code written before the split, those of the modules split
# out of it (sharding, es, data_feed).
__all__ = [
    "AXIS",
    "LOSS_TYPES",
    "OWN_DRAW_SIZE",
    "Estimator",
    "FullES",
    "Rollouts",
    "antithetic_thetas",
    "default_mesh",
    "es_gradient_sum",
    "pair_rngs",
    "perturbation",
    "place",
    "rollout_length",
    "sharded_program",
    "to_host",
]

PyTree = Any
LOSS_TYPES = ("last_recompute", "avg", "last")


@runtime_checkable
class Estimator(Protocol):
    """What `FullES` and `TruncatedPES` share (and `train.py` relies on):

        state = es.init(theta, key, family, mesh)
        grad, state, metrics = es.estimate(theta, state, key, family, mesh, donate=...)

    `grad` is shaped like θ (replicated over the mesh); `metrics` holds at least
    meta_loss, length, inner_steps and nonfinite_pairs. FullES's state is empty; PES's
    holds its persistent inner runs and accumulators."""

    num_pairs: int

    def init(self, theta: PyTree, key: jax.Array, family: TaskFamily, mesh: Mesh | None = None) -> Any: ...

    def estimate(
        self, theta: PyTree, state: Any, key: jax.Array, family: TaskFamily, mesh: Mesh | None = None, *, donate: bool
    ) -> tuple[PyTree, Any, dict[str, float]]: ...


# The inner runs of an estimate's rollouts, leaves [pairs, sides (θ+ε, θ−ε; or 1: θ), ...]:
# the carry of the chunk programs.
Rollouts = rollout.InnerRun


@dataclasses.dataclass(frozen=True)
class FullES:
    """Antithetic ES over full rollouts (see module doc).

    Attributes:
      lopt: the learned optimizer being meta-trained.
      num_pairs: antithetic pairs N per estimate (each its own task instance).
      std: σ of the perturbations.
      min_length, max_length: the rollout length L ~ LogUniform[min, max], shared by
        all pairs of an estimate.
      chunk: inner steps per compiled call; batches are made on the host one chunk at a
        time, so long rollouts never hold all of them. Each call also regenerates the
        pairs' εᵢ, so a larger chunk costs fewer of those.
      length_multiple: L is rounded down to a multiple of it (the reference's
        `steps_per_jit`, 10 for VeLO); default `chunk`. It must divide `chunk`; the
        remainder L mod chunk runs in calls of `length_multiple` steps. The results do
        not depend on `chunk` (per-step keys, one data stream per pair).
      loss_type: "last_recompute" (normalised loss of the final weights, mean over
        `recompute_batches` fresh batches of `recompute_split`), "avg" or "last"
        (mean or last normalised training loss along the rollout).
      sign_delta: if set, Δᵢ is replaced by sign(Δᵢ)·sign_delta (VeLO: 1.0).
    """

    lopt: VeLONetwork
    num_pairs: int = 8
    std: float = 0.01
    min_length: int = 100
    max_length: int = 1000
    chunk: int = 10
    length_multiple: int | None = None
    loss_type: str = "last_recompute"
    recompute_batches: int = 10
    recompute_split: str = "train"
    sign_delta: float | None = 1.0

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.num_pairs < 1 or self.chunk < 1 or self.recompute_batches < 1:
            raise ValueError("num_pairs, chunk and recompute_batches must be >= 1")
        if self.length_multiple is not None and not (
            self.length_multiple >= 1 and self.chunk % self.length_multiple == 0
        ):
            raise ValueError(f"length_multiple ({self.length_multiple}) must be >= 1 and divide chunk ({self.chunk})")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}")
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def init(self, theta: PyTree, key: jax.Array, family: TaskFamily, mesh: Mesh | None = None) -> tuple:
        """The estimator state: empty, as every FullES estimate starts its rollouts afresh."""
        return ()

    def estimate(
        self,
        theta: PyTree,
        state: tuple,
        key: jax.Array,
        family: TaskFamily,
        mesh: Mesh | None = None,
        *,
        donate: bool = False,
    ) -> tuple[PyTree, tuple, dict[str, float]]:
        """(ĝ, state, metrics) for `family` at θ. Everything random comes from `key`: the
        rollout length, the tasks, their data, the loss keys and the perturbations.
        `state` (from `init`) is empty and returned as is; `donate` has nothing to reuse.

        Metrics: meta_loss (mean over pairs with finite losses of (L⁺+L⁻)/2), length L,
        inner_steps (2·N·L), nonfinite_pairs (pairs whose Δ was NaN/inf, hence dropped)."""
        mesh = default_mesh(self.num_pairs) if mesh is None else mesh
        pair_losses, pert_keys, length = self._rollouts(theta, key, family, mesh, antithetic=True)
        programs = _programs(self, family, mesh, True)
        grad, meta_loss, nonfinite = programs.finish(theta, pert_keys, pair_losses)
        metrics = {
            "meta_loss": float(to_host(meta_loss)),
            "length": length,
            "inner_steps": 2 * self.num_pairs * length,
            "nonfinite_pairs": int(to_host(nonfinite)),
        }
        return grad, state, metrics

    def evaluate(self, theta: PyTree, key: jax.Array, family: TaskFamily, mesh: Mesh | None = None) -> float:
        """Mean over `num_pairs` tasks (from `key`) of the meta-loss of θ itself (no
        perturbation). Tasks with a non-finite meta-loss are left out (NaN if all are)."""
        mesh = default_mesh(self.num_pairs) if mesh is None else mesh
        losses, _, _ = self._rollouts(theta, key, family, mesh, antithetic=False)
        losses = to_host(losses)[:, 0]
        finite = losses[np.isfinite(losses)]
        return float(finite.mean()) if finite.size else float("nan")

    def _rollouts(self, theta, key, family, mesh, antithetic: bool):
        """Per-pair meta-losses [pairs, 2 (θ+ε, θ-ε) or 1 (θ)], the pair perturbation keys
        and the rollout length. The draws come from `key`'s named streams (tasks.key_streams)."""
        programs = _programs(self, family, mesh, antithetic)
        multiple = self.length_multiple or self.chunk
        length = rollout_length(stream(key, "length"), self.min_length, self.max_length, multiple)
        pairs = NamedSharding(mesh, P(AXIS))
        task_keys = place(per_pair_keys(key, "tasks", self.num_pairs), pairs)
        pert_keys = place(per_pair_keys(key, "perturbation", self.num_pairs), pairs)
        rngs = data_feed.pair_rngs(stream(key, "data"), self.num_pairs)

        cfgs, runs = programs.init(theta, task_keys, pert_keys, jnp.int32(length))
        loss_sum, last, done = None, None, 0
        for size in data_feed.chunk_sizes(length, self.chunk, multiple):
            batches = data_feed.stacked(family, rngs, "train", size)
            keys = data_feed.step_keys(stream(key, "loss"), self.num_pairs, done, size)
            runs, losses = programs.chunk(theta, pert_keys, cfgs, runs, batches, keys)
            done += size
            if self.loss_type == "avg":  # (the per-step losses are otherwise not needed)
                loss_sum = losses.sum(axis=-1) if loss_sum is None else loss_sum + losses.sum(axis=-1)
            elif self.loss_type == "last":
                last = losses[..., -1]
        if self.loss_type == "last_recompute":
            batches = data_feed.stacked(family, rngs, self.recompute_split, self.recompute_batches)
            keys = data_feed.pair_keys(stream(key, "recompute"), self.num_pairs, self.recompute_batches)
            return programs.recompute(cfgs, runs, batches, keys), pert_keys, length
        if self.loss_type == "avg":
            return loss_sum / length, pert_keys, length
        return last, pert_keys, length


# The pieces of an estimate, pure functions of one device's pairs (leading axis [pairs];
# `_programs` runs them under `shard_map`, so `axis_name` sums over every device's pairs).


def rollout_thetas(es: FullES, theta: PyTree, pert_keys: jax.Array, antithetic: bool):
    """(thetas, pair_axes, side_axes) of `antithetic_thetas`; without `antithetic`, θ
    itself for every pair and its one side."""
    if not antithetic:
        return theta, None, None
    return antithetic_thetas(es.lopt, theta, pert_keys, es.std)


def init_rollouts(
    es: FullES, family: TaskFamily, theta: PyTree, task_keys: jax.Array, pert_keys: jax.Array, num_steps,
    antithetic: bool = True,
) -> tuple[PyTree, Rollouts]:  # fmt: skip
    """(cfgs [pairs, ...], the rollouts at step 0 [pairs, sides, ...]): pair i's task from
    task_keys[i] (`tasks.rollout.instantiate`), the same on both sides, and the learned
    optimizer initialised on each side with its θ ± εᵢ for `num_steps` steps."""
    cfgs, params, states = jax.vmap(lambda k: rollout.instantiate(family, k))(task_keys)
    thetas, pair_axes, side_axes = rollout_thetas(es, theta, pert_keys, antithetic)
    sides = 2 if antithetic else 1
    init = jax.vmap(lambda th, p: es.lopt.init(th, p, num_steps), in_axes=(side_axes, None), axis_size=sides)
    opt = jax.vmap(init, in_axes=(pair_axes, 0))(thetas, params)
    params, states = jax.tree.map(lambda x: jnp.stack([x] * sides, axis=1), (params, states))
    return cfgs, Rollouts(params, states, opt)


def train_rollouts(
    es: FullES, family: TaskFamily, theta: PyTree, pert_keys: jax.Array, cfgs: PyTree, runs: Rollouts,
    batches: PyTree, keys: jax.Array, antithetic: bool = True,
) -> tuple[Rollouts, jax.Array]:  # fmt: skip
    """The rollouts after the inner steps of `batches` [pairs, steps, ...] with loss keys
    `keys` [pairs, steps] (shared by a pair's sides), and their normalised training losses
    [pairs, sides, steps]."""
    thetas, pair_axes, side_axes = rollout_thetas(es, theta, pert_keys, antithetic)

    def one(th, cfg, run, batch, key):  # one inner step of one rollout
        run, loss = rollout.step(family, rollout.LearnedStepper(es.lopt, th), cfg, run, batch, key)
        return run, family.normalizer(loss, cfg)

    pair = jax.vmap(one, in_axes=(side_axes, None, 0, None, None))
    step = jax.vmap(pair, in_axes=(pair_axes, 0, 0, 0, 0))
    # The scan is outermost (vmaps inside its step): vmapping a scan re-traces its body
    # to a fixed point per vmap, seconds of tracing for VeLO's update.
    xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (batches, keys))  # step-major
    runs, losses = jax.lax.scan(lambda r, x: step(thetas, cfgs, r, *x), runs, xs)
    return runs, jnp.moveaxis(losses, 0, -1)


def recompute_losses(family: TaskFamily, cfgs: PyTree, runs: Rollouts, batches: PyTree, keys: jax.Array) -> jax.Array:
    """[pairs, sides]: each rollout's mean normalised loss of its final weights over
    `batches` [pairs, n, ...] with `keys` [pairs, n] (no training)."""

    def pair(cfg, run, batches, keys):
        def side(params, state):
            return jnp.mean(rollout.batch_losses(family, cfg, params, state, batches, keys, normalize=True))

        return jax.vmap(side)(run.params, run.model_state)

    return jax.vmap(pair)(cfgs, runs, batches, keys)


def finish(es: FullES, theta: PyTree, pert_keys: jax.Array, pair_losses: jax.Array, axis_name=None):
    """(ĝ, meta-loss, pairs dropped as non-finite) from the pairs' losses [pairs, 2]."""
    delta = pair_losses[:, 0] - pair_losses[:, 1]
    finite = jnp.isfinite(delta)
    delta = jnp.where(finite, delta, 0.0)
    if es.sign_delta is not None:
        delta = jnp.sign(delta) * es.sign_delta
    grad_sum = es_gradient_sum(theta, pert_keys, delta, es.std)
    out = aggregate_pairs(grad_sum, jnp.mean(pair_losses, axis=1), finite, es.num_pairs, es.std, axis_name)
    return out.grad, out.meta_loss, es.num_pairs - out.included


@dataclasses.dataclass(frozen=True)
class _Programs:
    init: Any
    chunk: Any
    recompute: Any
    finish: Any


@functools.lru_cache(maxsize=64)
def _programs(es: FullES, family: TaskFamily, mesh: Mesh, antithetic: bool) -> _Programs:
    """The pieces above compiled for one (estimator, family, mesh), pairs split over the
    mesh; without `antithetic`, each pair is one rollout with θ itself (for evaluation)."""
    pairs, rep = P(AXIS), P()
    program = functools.partial(sharded_program, mesh)
    partial = functools.partial
    return _Programs(
        init=program(partial(init_rollouts, es, family, antithetic=antithetic), (rep, pairs, pairs, rep), pairs),
        chunk=program(
            partial(train_rollouts, es, family, antithetic=antithetic), (rep,) + (pairs,) * 5, pairs, donate_argnums=3
        ),  # fmt: skip
        recompute=program(partial(recompute_losses, family), (pairs,) * 4, pairs),
        finish=program(partial(finish, es, axis_name=AXIS), (rep, pairs, pairs), rep),
    )
