"""The host side of an estimate's inner training: per-pair data streams, their batches one
chunk at a time, and the inner steps' loss keys.

Everything here depends only on (key, pair index, step number), never on the number of
devices or processes, nor on how the steps are cut into compiled calls, so an estimate
is the same whatever the mesh or the chunk size.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tasks.base import TaskFamily
from tasks.key_streams import stream

PyTree = Any


def pair_rngs(key: jax.Array, num_pairs: int) -> list[np.random.Generator]:
    """Host data streams, one per pair, depending only on (key, pair index): the same data
    whatever the number of devices or processes."""
    seed = [int(x) for x in np.asarray(jax.random.key_data(key)).ravel()]
    return [np.random.default_rng(seed + [i]) for i in range(num_pairs)]


def stacked(family: TaskFamily, rngs: list[np.random.Generator], split: str, num: int) -> PyTree:
    """[pairs, num, ...] host batches of `split`, pair i's from rngs[i] (advancing it)."""
    per_pair = [family.stacked_batches(rng, split, num) for rng in rngs]
    return jax.tree.map(lambda *xs: np.stack(xs), *per_pair)


def step_keys(key: jax.Array, num_pairs: int, start: int, num: int) -> jax.Array:
    """[pairs, num] loss keys of inner steps start … start+num-1 (shared by both sides of
    a pair), each from its step number: the same whatever the chunking."""
    steps = jnp.arange(start, start + num)
    return jnp.swapaxes(jax.vmap(lambda s: jax.random.split(jax.random.fold_in(key, s), num_pairs))(steps), 0, 1)


def per_pair_keys(key: jax.Array, name: str, num_pairs: int) -> jax.Array:
    """[pairs] keys: pair i's is stream(key, name, i) (`tasks.key_streams`)."""
    return jax.vmap(lambda i: stream(key, name, i))(jnp.arange(num_pairs))


def pair_keys(key: jax.Array, num_pairs: int, num: int) -> jax.Array:
    """[pairs, num] loss keys (shared by both sides of a pair)."""
    return jax.random.split(key, num_pairs * num).reshape(num_pairs, num, -1)


def chunk_sizes(length: int, chunk: int, multiple: int) -> list[int]:
    """The inner steps of each compiled call of a `length`-step rollout: calls of `chunk`
    steps, then the remainder in calls of `multiple` steps (`multiple` divides `chunk`;
    `length` is a multiple of `multiple`)."""
    return [chunk] * (length // chunk) + [multiple] * (length % chunk // multiple)
