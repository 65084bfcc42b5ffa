"""The maths of antithetic evolution strategies, shared by `FullES` and `TruncatedPES`.

Pure functions of arrays and keys, jit-able (all but `rollout_length`, which gives the
host a Python int): perturbations εᵢ = σ·𝒩(0, I) regenerated from per-pair keys, the
antithetic θ ± εᵢ, the gradient sum Σᵢ Δᵢ εᵢ, and what ends an estimate: the sum over
pairs scaled by 1/(2σ²·N) and the mean meta-loss over the pairs with finite losses. The
functions that sum over pairs take `axis_name`: inside a `shard_map` over the pairs axis
the sums run over all devices' pairs; with None, over the pairs given.

Rollout and episode lengths have one sampler, `sample_length` (traced: PES draws inside
its compiled unroll); `rollout_length` is FullES's use of it on the host, which plans an
estimate's chunks from the length.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

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


def es_gradient_sum(theta: PyTree, pert_keys: jax.Array, deltas: jax.Array, std: float) -> PyTree:
    """Σᵢ Δᵢ εᵢ (shaped like θ) over the pairs of `pert_keys` [P] and `deltas` [P],
    regenerating each εᵢ in a scan (O(|θ|) memory)."""

    def add(acc, xs):
        key, delta = xs
        return jax.tree.map(lambda a, e: a + delta.astype(a.dtype) * e, acc, perturbation(theta, key, std)), None

    dtype = jnp.result_type(*jax.tree.leaves(theta))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, dtype), theta)
    total, _ = jax.lax.scan(add, zeros, (pert_keys, deltas))
    return jax.tree.map(lambda t, x: t.astype(x.dtype), total, theta)


class Aggregate(NamedTuple):
    """What an estimate ends with (see `aggregate_pairs`)."""

    grad: PyTree  # ĝ, shaped like θ
    meta_loss: jax.Array  # float scalar: mean pair loss over the included pairs, NaN if none
    included: jax.Array  # int32 scalar: how many pairs the meta-loss includes


def aggregate_pairs(
    grad_sum: PyTree, pair_loss: jax.Array, included: jax.Array, num_pairs: int, std: float, axis_name=None
) -> Aggregate:
    """ĝ = Σ grad_sum / (2σ²·N) with N = `num_pairs` (all pairs, so a dropped pair, whose
    terms the caller has zeroed, counts as Δ = 0), and the mean of `pair_loss` [P] over the
    pairs where `included` [P] (bool) holds. `grad_sum`, shaped like θ, and the means are
    summed over `axis_name` (None: no collective)."""
    grad = jax.tree.map(lambda g: g / (num_pairs * 2 * std**2), _psum(grad_sum, axis_name))
    count = _psum(jnp.sum(included), axis_name)
    total = _psum(jnp.sum(jnp.where(included, pair_loss, 0.0)), axis_name)
    meta_loss = total / jnp.maximum(count, 1).astype(total.dtype)
    return Aggregate(grad, jnp.where(count > 0, meta_loss, jnp.nan), count)


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def rollout_length(key: jax.Array, min_length: int, max_length: int, multiple: int) -> int:
    """FullES's rollout length, a host int (the host plans the estimate's chunks from it):
    `sample_length` rounded down to a multiple of `multiple`, at least `multiple` (the
    reference's LogUniformLengthSchedule + FullES rounding)."""
    length = int(sample_length(key, min_length, max_length))
    return max(multiple, length - length % multiple)


def sample_length(key: jax.Array, min_length: int, max_length: int) -> jax.Array:
    """A rollout or episode length ~ LogUniform[min, max], traced: int32 int(exp(U(log min,
    log max))) computed in float32, clipped to [min, max] (float32 rounding may otherwise
    step outside)."""
    lo, hi = jnp.log(jnp.float32(min_length)), jnp.log(jnp.float32(max_length))
    length = jnp.floor(jnp.exp(lo + jax.random.uniform(key, (), jnp.float32) * (hi - lo)))
    return jnp.clip(length, min_length, max_length).astype(jnp.int32)
