"""A noisy quadratic: the smallest task, for tests and estimator checks (not in the
reference's distribution)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tasks.base import TaskFamily, spec


@dataclasses.dataclass(frozen=True)
class Quadratic(TaskFamily):
    """loss = 0.5 sum_i c_i (w_i - t_i - noise_i)^2, with per-task target t ~ N(0, 1) and
    curvatures c = 10^U(-1, 1) (in cfg), w initialised N(0, 1), and batch noise of scale
    `noise` averaged over the batch."""

    dim: int = 10
    batch_size: int = 4
    noise: float = 0.0

    def describe(self) -> str:
        return f"Quadratic_d{self.dim}_bs{self.batch_size}_noise{self.noise:g}"

    def sample(self, key):
        k1, k2 = jax.random.split(key)
        return {
            "target": jax.random.normal(k1, (self.dim,)),
            "curvature": 10.0 ** jax.random.uniform(k2, (self.dim,), minval=-1.0, maxval=1.0),
        }

    def init(self, key, cfg):
        return {"w": jax.random.normal(jax.random.fold_in(key, 1), (self.dim,))}, {}

    def loss(self, params, state, key, batch, cfg):
        shift = cfg["target"] + self.noise * jnp.mean(batch["noise"], axis=0)
        return 0.5 * jnp.sum(cfg["curvature"] * jnp.square(params["w"].astype(jnp.float32) - shift)), state

    def normalizer(self, loss, cfg=None):
        return jnp.log1p(jnp.where(jnp.isfinite(loss), loss, 1e6))

    def get_batch(self, rng, split):
        return {"noise": rng.standard_normal((self.batch_size, self.dim)).astype(np.float32)}

    def batch_spec(self):
        return {"noise": spec((self.batch_size, self.dim), np.float32)}

    def forward_flops(self) -> float:
        return 4.0 * self.dim * self.batch_size
