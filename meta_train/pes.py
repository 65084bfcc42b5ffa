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

from meta_train.estimators import (
    AXIS,
    _pair_keys,
    _stacked,
    antithetic_thetas,
    default_mesh,
    pair_rngs,
    perturbation,
    place,
    sharded_program,
    to_host,
)
from meta_train.learned_optimizer import VeLONetwork
from tasks.base import TaskFamily

PyTree = Any


class PESState(NamedTuple):
    """The persistent state of a `TruncatedPES`, all arrays with a leading pairs axis
    (sharded over "pairs"); a pytree, so it can be checkpointed with orbax.

    Attributes:
      cfg: the tasks' inner configurations [pairs, ...].
      params, model_state, opt: the inner runs [pairs, 2 (θ+ε, θ−ε), ...].
      step: int32 [pairs], training steps done in the current episode.
      length: int32 [pairs], the current episode's length (VeLO's `num_steps`).
      done: bool [pairs], the episode has ended; the next step resets it.
      accumulator: Aᵢ, θ-shaped leaves [pairs, ...θ].
    """

    cfg: PyTree
    params: PyTree
    model_state: PyTree
    opt: PyTree
    step: jax.Array
    length: jax.Array
    done: jax.Array
    accumulator: PyTree


class _Trace(NamedTuple):
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
        keys = jax.random.split(key, self.num_pairs)
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
        meta_loss, nonfinite, resets, trained = (to_host(x) for x in stats)
        metrics = {
            "meta_loss": float(meta_loss),
            "length": self.trunc_length,
            "inner_steps": 2 * int(trained),
            "resets": int(resets),
            "nonfinite_pairs": int(nonfinite),
        }
        return grad, PESState(*inner, accumulator=accumulator), metrics

    def _unroll(self, theta, state, key, family, mesh):
        """(inner state after the truncation, its traces (one per chunk), εᵢ keys)."""
        programs = _programs(self, family, mesh)
        k_pert, k_data, k_step = jax.random.split(key, 3)
        pert_keys = place(jax.random.split(k_pert, self.num_pairs), NamedSharding(mesh, P(AXIS)))
        rngs = pair_rngs(k_data, self.num_pairs)
        inner = tuple(state)[:-1]
        traces = []
        for c in range(self.trunc_length // self.chunk):
            batches = _stacked(family, rngs, "train", self.chunk)
            keys = _pair_keys(jax.random.fold_in(k_step, c), self.num_pairs, self.chunk)
            inner, trace = programs.chunk(theta, pert_keys, inner, batches, keys)
            traces.append(trace)
        return inner, tuple(traces), pert_keys


def sample_length(key: jax.Array, min_length: int, max_length: int) -> jax.Array:
    """int32 int(exp(U(log min, log max))), within [min, max] (traceable)."""
    lo, hi = jnp.log(jnp.float32(min_length)), jnp.log(jnp.float32(max_length))
    length = jnp.floor(jnp.exp(lo + jax.random.uniform(key, (), jnp.float32) * (hi - lo)))
    return jnp.clip(length, min_length, max_length).astype(jnp.int32)


def pes_gradient_terms(losses, mask, done, sign_delta, reference_attribution):
    """Per pair (ℓ_old, ℓ_new, reset, keep, nonfinite, pair loss, trained steps) from the
    truncation's traces (losses [n, 2, T], mask and done [n, T]); see the module doc.
    `reset`: A′ = ε; `keep`: A′ = A + ε (else A′ = 0)."""
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
    return l_old, l_new, reset, keep, nonfinite, pair_loss, count


@dataclasses.dataclass(frozen=True)
class _Programs:
    init: Any
    chunk: Any
    finish: Any


@functools.lru_cache(maxsize=64)
def _programs(pes: TruncatedPES, family: TaskFamily, mesh: Mesh) -> _Programs:
    """The compiled pieces of PES for one (estimator, family, mesh)."""
    lopt, std = pes.lopt, pes.std

    def both(x):
        return jax.tree.map(lambda a: jnp.stack([a, a]), x)

    def init_pair(theta, key):
        k_task, k_len, k_off = jax.random.split(key, 3)
        k_cfg, k_init = jax.random.split(k_task)
        cfg = family.sample(k_cfg)
        params, model_state = family.init(k_init, cfg)
        length = sample_length(k_len, pes.min_length, pes.max_length)
        if pes.random_offset:
            length = length - jax.random.randint(k_off, (), 0, length, jnp.int32)
        opt = lopt.init(theta, params, length)
        zero = jnp.zeros((), jnp.int32)
        acc = jax.tree.map(jnp.zeros_like, theta)
        return PESState(cfg, both(params), both(model_state), both(opt), zero, length, jnp.zeros((), bool), acc)

    def init_local(theta, keys):
        return jax.vmap(init_pair, in_axes=(None, 0))(theta, keys)

    def chunk_local(theta, pert_keys, inner, batches, keys):
        thetas, pair_axes, side_axes = antithetic_thetas(lopt, theta, pert_keys, std)

        def train_pair(th2, cfg, params, model_state, opt, batch, key):
            def side(th, p, s, o):
                (loss, s), grads = family.loss_and_grad(p, s, key, batch, cfg)
                p, o = lopt.update(th, o, grads, p, loss)
                return p, s, o, family.normalizer(loss, cfg)

            return jax.vmap(side, in_axes=(side_axes, 0, 0, 0))(th2, params, model_state, opt)

        def reset_pair(th2, length, key):
            k_cfg, k_init = jax.random.split(key)
            cfg = family.sample(k_cfg)
            params, model_state = family.init(k_init, cfg)
            opt = jax.vmap(lambda th: lopt.init(th, params, length), in_axes=(side_axes,), axis_size=2)(th2)
            return cfg, both(params), both(model_state), opt

        def step(carry, xs):
            cfg, params, model_state, opt, count, length, done = carry
            batch, key = xs  # [pairs, ...]
            k_train, k_reset, k_len = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(key), 1, 0)
            train = jax.vmap(train_pair, in_axes=(pair_axes,) + (0,) * 6)
            params1, state1, opt1, losses = train(thetas, cfg, params, model_state, opt, batch, k_train)

            def with_resets(trained):
                fresh = jax.vmap(reset_pair, in_axes=(pair_axes, 0, 0))(thetas, length, k_reset)

                def pick(new, old):
                    return jnp.where(done.reshape(done.shape + (1,) * (old.ndim - 1)), new, old)

                return jax.tree.map(pick, fresh, trained)

            trained = (cfg, params1, state1, opt1)
            cfg, params, model_state, opt = jax.lax.cond(jnp.any(done), with_resets, lambda t: t, trained)
            count = jnp.where(done, 0, count + 1)
            ended = ~done & (count >= length)
            new_length = jax.vmap(lambda k: sample_length(k, pes.min_length, pes.max_length))(k_len)
            length = jnp.where(ended, new_length, length)
            losses = jnp.where(done[:, None], 0.0, losses)
            return (cfg, params, model_state, opt, count, length, ended), (losses, ~done, ended)

        steps_first = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), (batches, keys))
        inner, (losses, mask, ended) = jax.lax.scan(step, tuple(inner), steps_first)
        return inner, _Trace(jnp.transpose(losses, (1, 2, 0)), mask.T, ended.T)

    def finish_local(theta, accumulator, pert_keys, traces):
        losses, mask, done = (jnp.concatenate(parts, axis=-1) for parts in zip(*traces))
        l_old, l_new, reset, keep, nonfinite, pair_loss, count = pes_gradient_terms(
            losses, mask, done, pes.sign_delta, pes.reference_attribution
        )

        def one(total, xs):
            acc, key, lo, ln, rs, kp = xs
            eps = perturbation(theta, key, std)
            summed = jax.tree.map(jnp.add, acc, eps)
            total = jax.tree.map(
                lambda g, a, e: g + lo.astype(g.dtype) * a + ln.astype(g.dtype) * e, total, summed, eps
            )
            new_acc = jax.tree.map(lambda a, e: jnp.where(rs, e, jnp.where(kp, a, jnp.zeros_like(a))), summed, eps)
            return total, new_acc

        zeros = jax.tree.map(jnp.zeros_like, theta)
        total, new_acc = jax.lax.scan(one, zeros, (accumulator, pert_keys, l_old, l_new, reset, keep))
        total = jax.lax.psum(total, AXIS)
        grad = jax.tree.map(lambda g: g / (pes.num_pairs * 2 * std**2), total)
        ok = ~nonfinite & (count > 0)
        included = jax.lax.psum(jnp.sum(ok.astype(jnp.float32)), AXIS)
        meta_loss = jax.lax.psum(jnp.sum(jnp.where(ok, pair_loss, 0.0)), AXIS) / jnp.maximum(included, 1.0)
        meta_loss = jnp.where(included > 0, meta_loss, jnp.nan)
        stats = (
            meta_loss,
            jax.lax.psum(jnp.sum(nonfinite), AXIS),
            jax.lax.psum(jnp.sum(done), AXIS),
            jax.lax.psum(jnp.sum(count), AXIS),
        )
        return grad, new_acc, stats

    pairs, rep = P(AXIS), P()
    program = functools.partial(sharded_program, mesh)

    return _Programs(
        init=program(init_local, (rep, pairs), pairs),
        chunk=program(chunk_local, (rep, pairs, pairs, pairs, pairs), pairs, donate_argnums=2),
        finish=program(finish_local, (rep, pairs, pairs, pairs), (rep, pairs, rep), donate_argnums=1),
    )
