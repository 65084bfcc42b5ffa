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
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from meta_train.learned_optimizer import VeLONetwork
from tasks.base import TaskFamily

PyTree = Any
AXIS = "pairs"
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


# Leaves of at least this many entries get a draw of their own: a program that reads
# only the small leaves (e.g. `lopt.init`, which reads VeLO's initial LSTM state) then
# skips the big draws, and each draw stays near the size threefry runs fastest at on a
# CPU (about 2M normals).
OWN_DRAW_SIZE = 2**20


def perturbation(theta: PyTree, key: jax.Array, std: float) -> PyTree:
    """ε = std·𝒩(0, I) shaped like θ. The leaves smaller than `OWN_DRAW_SIZE` share one
    draw from `key` (split in leaf order); each bigger leaf j has its own draw from
    `fold_in(key, j)`. (Few draws rather than one per leaf: XLA compiles one sampler per
    draw; measured compile times are in docs/meta_train.md.)"""
    leaves, treedef = jax.tree.flatten(theta)
    dtype = jnp.result_type(*leaves)
    small = [x for x in leaves if x.size < OWN_DRAW_SIZE]
    flat = std * _normals(key, sum(x.size for x in small), dtype)
    out, start = [], 0
    for j, x in enumerate(leaves):
        if x.size < OWN_DRAW_SIZE:
            e, start = flat[start : start + x.size], start + x.size
        else:
            e = std * _normals(jax.random.fold_in(key, j), x.size, dtype)
        out.append(e.reshape(x.shape).astype(x.dtype))
    return treedef.unflatten(out)


def es_gradient_sum(theta: PyTree, pert_keys: jax.Array, deltas: jax.Array, std: float) -> PyTree:
    """Σᵢ Δᵢ εᵢ over the given pairs, regenerating each εᵢ in a scan (O(|θ|) memory)."""

    def add(acc, xs):
        key, delta = xs
        return jax.tree.map(lambda a, e: a + delta.astype(a.dtype) * e, acc, perturbation(theta, key, std)), None

    dtype = jnp.result_type(*jax.tree.leaves(theta))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, dtype), theta)
    total, _ = jax.lax.scan(add, zeros, (pert_keys, deltas))
    return jax.tree.map(lambda t, x: t.astype(x.dtype), total, theta)


def _normals(key: jax.Array, size: int, dtype) -> jax.Array:
    """`size` standard normals, drawn as an even count: threefry pads an odd count, which
    made VeLO's 2,320,385 normals 4x slower to draw (125 against 30 ms on a 2-core CPU)."""
    return jax.random.normal(key, (size + size % 2,), dtype)[:size]


def antithetic_thetas(lopt: Any, theta: PyTree, pert_keys: jax.Array, std: float) -> tuple[PyTree, Any, Any]:
    """θ ± εᵢ for the pairs of `pert_keys` [P], as (thetas, pair_axes, side_axes) for
    `jax.vmap(jax.vmap(f, in_axes=(side_axes, …)), in_axes=(pair_axes, …))(thetas, …)`
    over pairs, then sides (θ + εᵢ, θ − εᵢ). A learned optimizer with
    `antithetic_pairs(θ, ε [P, …θ])` hands out a form it computes with faster (VeLO
    never materialises its gate matrix per rollout); otherwise every leaf is [P, 2, …]."""
    # One pair at a time: a vmapped draw of P·|θ| normals is 1.5x slower than P draws of
    # |θ| (measured: 205 against 133 ms for VeLO's 8 pairs on a 2-core CPU).
    eps = jax.lax.map(lambda k: perturbation(theta, k, std), pert_keys)
    if hasattr(lopt, "antithetic_pairs"):
        return lopt.antithetic_pairs(theta, eps)
    return jax.tree.map(lambda t, e: jnp.stack([t + e, t - e], axis=1), theta, eps), 0, 0


def default_mesh(num_pairs: int, devices: list | None = None) -> Mesh:
    """A mesh with one axis, "pairs", over `devices` (default: all; as many as divide
    `num_pairs`). Auto sharding, so host code may index the estimator's results."""
    devices = jax.devices() if devices is None else list(devices)
    count = len(devices)
    while num_pairs % count:
        count -= 1
    return jax.make_mesh((count,), (AXIS,), axis_types=(AxisType.Auto,), devices=devices[:count])


def place(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Every leaf (host, single-device or global) as a global array with `sharding`.
    With several processes, each passes the same full value and keeps its own shards."""

    def one(x):
        if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def sharded_program(mesh: Mesh, fn, in_specs: tuple, out_specs, **jit_kw):
    """jit(shard_map(fn)) over `mesh`, called with host, single-device or global arrays,
    which are placed on the mesh first (a no-op for arrays already there)."""
    compiled = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False), **jit_kw)
    shardings = tuple(NamedSharding(mesh, spec) for spec in in_specs)

    def call(*args):
        return compiled(*(place(a, s) for a, s in zip(args, shardings)))

    return call


def to_host(x) -> np.ndarray:
    """The whole value of `x` on this process (gathered from the others if needed)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def rollout_length(key: jax.Array, min_length: int, max_length: int, multiple: int) -> int:
    """L = int(exp(U(log min, log max))), rounded down to a multiple of `multiple`, at
    least `multiple` (the reference's LogUniformLengthSchedule + FullES rounding)."""
    u = float(jax.random.uniform(key))
    length = int(math.exp(math.log(min_length) + u * (math.log(max_length) - math.log(min_length))))
    return max(multiple, length - length % multiple)


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
        and the rollout length."""
        programs = _programs(self, family, mesh, antithetic)
        k_len, k_task, k_pert, k_data, k_loss, k_recompute = jax.random.split(key, 6)
        multiple = self.length_multiple or self.chunk
        length = rollout_length(k_len, self.min_length, self.max_length, multiple)
        pairs = NamedSharding(mesh, P(AXIS))
        task_keys = place(jax.random.split(k_task, self.num_pairs), pairs)
        pert_keys = place(jax.random.split(k_pert, self.num_pairs), pairs)
        rngs = pair_rngs(k_data, self.num_pairs)

        cfgs, carry = programs.init(theta, task_keys, pert_keys, jnp.int32(length))
        loss_sum, last, done = None, None, 0
        for size in [self.chunk] * (length // self.chunk) + [multiple] * (length % self.chunk // multiple):
            batches = _stacked(family, rngs, "train", size)
            keys = _step_keys(k_loss, self.num_pairs, done, size)
            carry, losses = programs.chunk(theta, pert_keys, cfgs, carry, batches, keys)
            done += size
            if self.loss_type == "avg":  # (the per-step losses are otherwise not needed)
                loss_sum = losses.sum(axis=-1) if loss_sum is None else loss_sum + losses.sum(axis=-1)
            elif self.loss_type == "last":
                last = losses[..., -1]
        if self.loss_type == "last_recompute":
            batches = _stacked(family, rngs, self.recompute_split, self.recompute_batches)
            keys = _pair_keys(k_recompute, self.num_pairs, self.recompute_batches)
            return programs.recompute(cfgs, carry, batches, keys), pert_keys, length
        if self.loss_type == "avg":
            return loss_sum / length, pert_keys, length
        return last, pert_keys, length


def pair_rngs(key: jax.Array, num_pairs: int) -> list[np.random.Generator]:
    """Host data streams, one per pair, depending only on (key, pair index): the same data
    whatever the number of devices or processes."""
    seed = [int(x) for x in np.asarray(jax.random.key_data(key)).ravel()]
    return [np.random.default_rng(seed + [i]) for i in range(num_pairs)]


def _stacked(family: TaskFamily, rngs: list[np.random.Generator], split: str, num: int) -> PyTree:
    """[pairs, num, ...] batches, pair i from rngs[i]."""
    per_pair = [family.stacked_batches(rng, split, num) for rng in rngs]
    return jax.tree.map(lambda *xs: np.stack(xs), *per_pair)


def _step_keys(key: jax.Array, num_pairs: int, start: int, num: int) -> jax.Array:
    """[pairs, num] loss keys of inner steps start … start+num-1 (shared by both sides of
    a pair), each from its step number: the same whatever the chunking."""
    steps = jnp.arange(start, start + num)
    return jnp.swapaxes(jax.vmap(lambda s: jax.random.split(jax.random.fold_in(key, s), num_pairs))(steps), 0, 1)


def _pair_keys(key: jax.Array, num_pairs: int, num: int) -> jax.Array:
    """[pairs, num] loss keys (shared by both sides of a pair)."""
    return jax.random.split(key, num_pairs * num).reshape(num_pairs, num, -1)


@dataclasses.dataclass(frozen=True)
class _Programs:
    init: Any
    chunk: Any
    recompute: Any
    finish: Any


@functools.lru_cache(maxsize=64)
def _programs(es: FullES, family: TaskFamily, mesh: Mesh, antithetic: bool) -> _Programs:
    """The compiled pieces of an estimate, for one (estimator, family, mesh); without
    `antithetic`, each pair is one rollout with θ itself (for evaluation)."""
    lopt, std = es.lopt, es.std

    def rollout_thetas(theta, pert_keys):
        if not antithetic:  # θ itself, for every pair and its one side
            return theta, None, None
        return antithetic_thetas(lopt, theta, pert_keys, std)

    def init_local(theta, task_keys, pert_keys, num_steps):
        def task(key):
            k_cfg, k_init = jax.random.split(key)
            cfg = family.sample(k_cfg)
            return cfg, *family.init(k_init, cfg)

        cfgs, params, states = jax.vmap(task)(task_keys)
        thetas, pair_axes, side_axes = rollout_thetas(theta, pert_keys)
        sides = 2 if antithetic else 1
        init = jax.vmap(lambda th, p: lopt.init(th, p, num_steps), in_axes=(side_axes, None), axis_size=sides)
        opt = jax.vmap(init, in_axes=(pair_axes, 0))(thetas, params)
        both = jax.tree.map(lambda x: jnp.stack([x] * sides, axis=1), (params, states))
        return cfgs, (*both, opt)

    def chunk_local(theta, pert_keys, cfgs, carry, batches, keys):
        thetas, pair_axes, side_axes = rollout_thetas(theta, pert_keys)

        def one(th, cfg, c, batch, key):  # one inner step of one rollout
            params, state, opt = c
            (loss, state), grads = family.loss_and_grad(params, state, key, batch, cfg)
            params, opt = lopt.update(th, opt, grads, params, loss)
            return (params, state, opt), family.normalizer(loss, cfg)

        pair = jax.vmap(one, in_axes=(side_axes, None, 0, None, None))
        step = jax.vmap(pair, in_axes=(pair_axes, 0, 0, 0, 0))
        # The scan is outermost (vmaps inside its step): vmapping a scan re-traces its
        # body to a fixed point per vmap, seconds of tracing for VeLO's update.
        xs = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), (batches, keys))  # step-major
        carry, losses = jax.lax.scan(lambda c, x: step(thetas, cfgs, c, *x), carry, xs)
        return carry, jnp.moveaxis(losses, 0, -1)  # [pairs, sides, steps]

    def recompute_pair(cfg, carry, batches, keys):
        params2, state2, _ = carry

        def side(params, state):
            def one(xs):
                batch, k = xs
                return family.normalizer(family.loss(params, state, k, batch, cfg)[0], cfg)

            return jnp.mean(jax.lax.map(one, (batches, keys)))

        return jax.vmap(side)(params2, state2)

    def recompute_local(cfgs, carry, batches, keys):
        return jax.vmap(recompute_pair)(cfgs, carry, batches, keys)

    def finish_local(theta, pert_keys, pair_losses):
        delta = pair_losses[:, 0] - pair_losses[:, 1]
        finite = jnp.isfinite(delta)
        delta = jnp.where(finite, delta, 0.0)
        if es.sign_delta is not None:
            delta = jnp.sign(delta) * es.sign_delta
        total = jax.lax.psum(es_gradient_sum(theta, pert_keys, delta, std), AXIS)
        grad = jax.tree.map(lambda g: g / (es.num_pairs * 2 * std**2), total)
        mean_pair = jnp.where(finite, jnp.mean(pair_losses, axis=1), 0.0)
        count = jax.lax.psum(jnp.sum(finite), AXIS)
        meta_loss = jax.lax.psum(jnp.sum(mean_pair), AXIS) / jnp.maximum(count, 1)
        meta_loss = jnp.where(count > 0, meta_loss, jnp.nan)
        return grad, meta_loss, es.num_pairs - count

    pairs, rep = P(AXIS), P()
    program = functools.partial(sharded_program, mesh)

    return _Programs(
        init=program(init_local, (rep, pairs, pairs, rep), pairs),
        chunk=program(chunk_local, (rep, pairs, pairs, pairs, pairs, pairs), pairs, donate_argnums=3),
        recompute=program(recompute_local, (pairs,) * 4, pairs),
        finish=program(finish_local, (rep, pairs, pairs), rep),
    )
