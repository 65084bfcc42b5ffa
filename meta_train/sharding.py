"""The device mesh of the ES estimators and moving arrays on and off it.

Both estimators split their antithetic pairs over one mesh axis, "pairs" (`AXIS`), and run
their compiled pieces as `shard_map`s over it (`sharded_program`); pair sums are `psum`s
over `AXIS` inside those programs.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

PyTree = Any
AXIS = "pairs"


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
