"""Random choices shared by the family samplers (reference: `parametric_utils`).

Static choices (architecture, dataset, batch size) are drawn on the host from a numpy
Generator seeded by a JAX key, so a sampler is reproducible from one key and fast. The
per-task choices (activation, initialiser) are arrays applied with `lax.switch`, so the
tasks of one family run under one vmap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def rng_from_key(key: jax.Array) -> np.random.Generator:
    """A numpy Generator determined by a JAX PRNG key."""
    bits = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    return np.random.default_rng(bits.astype(np.uint64).tolist())


def choice(rng: np.random.Generator, options: Sequence):
    """A uniform choice."""
    return options[int(rng.integers(len(options)))]


def log_float(rng: np.random.Generator, low: float, high: float) -> float:
    """exp(U(log low, log high))."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def log_int(rng: np.random.Generator, low: int, high: int) -> int:
    """floor(exp(U(log low, log high))): effectively an int in [low, high - 1] (the reference's floor)."""
    return int(math.floor(log_float(rng, low, high)))


# ----------------------------------------------------------------- activations


def _leaky_relu(x):
    return jax.nn.leaky_relu(x, negative_slope=-0.5)  # the reference's entry, slope -0.5 kept


ACTIVATIONS = (
    ("relu", jax.nn.relu),
    ("relu", jax.nn.relu),  # listed twice in the reference: kept, so relu is drawn 2/12 of the time
    ("relu6", jax.nn.relu6),
    ("selu", jax.nn.selu),
    ("tanh", jnp.tanh),
    ("cos", jnp.cos),
    ("sin", jnp.sin),
    ("sigmoid", jax.nn.sigmoid),
    ("silu", jax.nn.silu),
    ("swish", jax.nn.silu),  # identical to silu, as in the reference
    ("gelu", jax.nn.gelu),
    ("leaky_relu", _leaky_relu),
)
ACTIVATION_INDEX = {name: i for i, (name, _) in reversed(list(enumerate(ACTIVATIONS)))}


def activation(index: jax.Array | int, x: jax.Array) -> jax.Array:
    """Apply the activation with this (possibly traced) index."""
    return jax.lax.switch(jnp.asarray(index, jnp.int32), [fn for _, fn in ACTIVATIONS], x)


def sample_activation(key: jax.Array) -> jax.Array:
    return jax.random.randint(key, (), 0, len(ACTIVATIONS), jnp.int32)


# ----------------------------------------------------------------- initialisers

INITIALIZERS = (
    "orthogonal",
    "uniform",
    "variance_scaling_normal",
    "variance_scaling_normal",
    "variance_scaling_uniform",
)


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def initialize(
    index: jax.Array | int, scale: jax.Array | float, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32
):
    """A weight from initialiser `index` (INITIALIZERS) with `scale` (both may be traced).
    fan_in is the product of all dims but the last; variance scaling uses scale as a
    variance factor."""
    fan_in = _fan_in(shape)
    scale = jnp.asarray(scale, jnp.float32)

    def orthogonal(k):
        if len(shape) < 2:
            return jax.random.normal(k, shape) * scale / math.sqrt(fan_in)
        return orthogonal_matrix(k, (int(np.prod(shape[:-1])), shape[-1])).reshape(shape) * scale

    def uniform(k):
        lim = math.sqrt(3.0 / fan_in)
        return jax.random.uniform(k, shape, jnp.float32, -lim, lim) * scale

    def vs_normal(k):
        return jax.random.normal(k, shape, jnp.float32) * jnp.sqrt(scale / fan_in)

    def vs_uniform(k):
        lim = jnp.sqrt(3.0 * scale / fan_in)
        return jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0) * lim

    branches = [orthogonal, uniform, vs_normal, vs_normal, vs_uniform]
    return jax.lax.switch(jnp.asarray(index, jnp.int32), branches, key).astype(dtype)


def orthogonal_matrix(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """A Haar-random matrix with orthonormal columns (or rows, if wider than tall): the Q of
    a Gaussian matrix's QR with R's diagonal made positive, by Gram-Schmidt with
    re-orthogonalisation. Pure matmuls: LAPACK's QR (which jnp.linalg.qr calls on CPU) can
    stall for seconds in OpenBLAS threads on small, busy machines."""
    rows, cols = shape
    if rows < cols:
        return orthogonal_matrix(key, (cols, rows)).T
    a = jax.random.normal(key, shape, jnp.float32)

    def column(j, q):
        v = a[:, j]
        for _ in range(2):  # twice is enough (Kahan-Parlett)
            v = v - q @ (q.T @ v)
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    return jax.lax.fori_loop(0, cols, column, jnp.zeros(shape, jnp.float32))


def sample_initializer(key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {
        "init": jax.random.randint(k1, (), 0, len(INITIALIZERS), jnp.int32),
        "init_scale": jax.random.uniform(k2, (), jnp.float32, 0.5, 2.0),
    }


def sample_inner(key: jax.Array, with_activation: bool = True, with_initializer: bool = True) -> dict[str, jax.Array]:
    """The usual per-task inner configuration: initialiser and activation."""
    k1, k2 = jax.random.split(key)
    cfg = sample_initializer(k1) if with_initializer else {}
    if with_activation:
        cfg["activation"] = sample_activation(k2)
    return cfg
