"""Image MLP variational autoencoder (reference: tasks/parametric/image_mlp_vae.py and
tasks/generative_model_utils.py). No fixed tasks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.image_mlp import IMAGE_DATASETS
from tasks.families.image_mlp_ae import SwitchedImageMLP, _select

SWITCHES = ("center_data", "per_dim_loss")
BIN_SIZE = 1.0 / 255.0  # the reference's quantisation bin, also for centred data


def quantized_normal_log_prob(x, mean, log_scale, key, bin_size: float = BIN_SIZE):
    """The reference's quantised-normal log-likelihood, elementwise: the Normal(mean,
    exp(log_scale)) log-density at x plus uniform noise in +-bin/2 (dequantisation), plus
    log(bin_size), i.e. the log-probability of the noisy pixel's bin under a density that
    is flat over the bin."""
    x = x + jax.random.uniform(key, x.shape, x.dtype, -0.5 * bin_size, 0.5 * bin_size)
    z = (x - mean) * jnp.exp(-log_scale)
    return -0.5 * jnp.square(z) - log_scale - 0.5 * math.log(2 * math.pi) + math.log(bin_size)


def normal_kl(mean, log_scale):
    """KL(N(mean, exp(log_scale)^2) || N(0, 1)), elementwise."""
    return 0.5 * (jnp.square(mean) + jnp.exp(2.0 * log_scale) - 1.0) - log_scale


class VAE(nn.Module):
    """x [B, D] -> encoder MLP -> (mean, log-std) of z [B, n_z] -> one reparameterised sample
    -> decoder MLP -> (mean, log-std) of x, clipped to +-10. Returns (log p(x|z), KL) [B]."""

    enc_sizes: Sequence[int]
    dec_sizes: Sequence[int]
    n_z: int
    act: Callable
    kernel_init: Callable

    @nn.compact
    def __call__(self, x, key):
        d = x.shape[-1]
        z_key, noise_key = jax.random.split(key)
        enc = common.MLP(tuple(self.enc_sizes) + (2 * self.n_z,), self.act, self.kernel_init, name="encoder")(x)
        z_mean, z_log_scale = jnp.split(enc.astype(jnp.float32), 2, axis=-1)
        z = z_mean + jnp.exp(z_log_scale) * jax.random.normal(z_key, z_mean.shape, jnp.float32)
        kl = jnp.sum(normal_kl(z_mean, z_log_scale), axis=-1)
        dec = common.MLP(tuple(self.dec_sizes) + (2 * d,), self.act, self.kernel_init, name="decoder")(
            z.astype(x.dtype)
        )
        x_mean, x_log_scale = jnp.split(jnp.clip(dec.astype(jnp.float32), -10.0, 10.0), 2, axis=-1)
        log_px = jnp.sum(quantized_normal_log_prob(x.astype(jnp.float32), x_mean, x_log_scale, noise_key), axis=-1)
        return log_px, kl


@dataclasses.dataclass(frozen=True)
class ImageMLPVAE(SwitchedImageMLP, TaskFamily):
    """A VAE on flattened images (see `VAE`); loss = batch mean of -ELBO in nats, with one
    z sample drawn from the loss `key`, the prior N(0, 1) and a quantised-normal likelihood.

    Per-task switches (None: a random boolean per task, in cfg; a bool: fixed for the family):
    `center_data` maps pixels to 2(x - 0.5); `per_dim_loss` divides the loss by D = H*W*C."""

    dataset: str
    enc_hidden_sizes: tuple[int, ...]
    dec_hidden_sizes: tuple[int, ...]
    n_z: int = 32
    batch_size: int = 128
    image_size: int | None = None
    activation: str | None = None
    sampled_init: bool = True
    center_data: bool | None = None
    per_dim_loss: bool | None = None
    switches: ClassVar[tuple[str, ...]] = SWITCHES

    def __post_init__(self):
        # Tuples of ints, so that the family stays hashable whatever the caller passed.
        object.__setattr__(self, "enc_hidden_sizes", tuple(int(h) for h in self.enc_hidden_sizes))
        object.__setattr__(self, "dec_hidden_sizes", tuple(int(h) for h in self.dec_hidden_sizes))

    def describe(self) -> str:
        parts = [
            f"ImageMLPVAE_{self.dataset}",
            f"{self.image_size or 'native'}px",
            "enc" + ("x".join(map(str, self.enc_hidden_sizes)) or "linear"),
            f"z{self.n_z}",
            "dec" + ("x".join(map(str, self.dec_hidden_sizes)) or "linear"),
            self.activation or "sampledact",
            f"bs{self.batch_size}",
        ]
        parts += self._switch_name_parts()
        parts += [] if self.sampled_init else ["defaultinit"]
        return "_".join(parts)

    def _model(self, cfg):
        return VAE(
            enc_sizes=self.enc_hidden_sizes,
            dec_sizes=self.dec_hidden_sizes,
            n_z=self.n_z,
            act=common.act_fn(self.activation, cfg),
            kernel_init=common.kernel_init(cfg),
        )

    def init(self, key, cfg):
        x = jnp.zeros((self.batch_size, self.input_dim), jnp.float32)
        return common.split_variables(self._model(cfg).init(key, x, key))

    def elbo_terms(self, params, key, batch, cfg) -> tuple[jax.Array, jax.Array]:
        """(log p(x|z), KL(q(z|x) || p(z))), each [B], on the (possibly centred) pixels."""
        x = common.to_float(batch["image"]).reshape(batch["image"].shape[0], -1)
        x = _select(self._switch("center_data", cfg), lambda: 2.0 * (x - 0.5), lambda: x)
        return self._model(cfg).apply({"params": params}, x, key)

    def loss(self, params, state, key, batch, cfg):
        log_px, kl = self.elbo_terms(params, key, batch, cfg)
        nelbo = jnp.mean(kl - log_px)
        d = float(self.input_dim)
        return _select(self._switch("per_dim_loss", cfg), lambda: nelbo / d, lambda: nelbo), state

    def normalizer(self, loss, cfg=None):
        """Nats per pixel clipped to [0, 10] (NaN/inf -> 10): L if per_dim_loss else L / D.
        Pass `cfg` when per_dim_loss is per-task; without it the loss is taken as per
        dimension (a whole-image loss then saturates at 10 rather than looking good)."""
        per_dim = self.per_dim_loss
        if per_dim is None:
            per_dim = True if cfg is None else cfg["per_dim_loss"]
        out = _select(per_dim, lambda: loss, lambda: loss / float(self.input_dim))
        out = jnp.where(jnp.isfinite(out), out, 10.0)
        return jnp.clip(out, 0.0, 10.0)

    def forward_flops(self) -> float:
        d, b = self.input_dim, self.batch_size
        enc = common.dense_flops((d, *self.enc_hidden_sizes, 2 * self.n_z), b)
        return enc + common.dense_flops((self.n_z, *self.dec_hidden_sizes, 2 * d), b)


def sample_image_mlp_vae(rng: np.random.Generator, datasets: tuple[str, ...] = IMAGE_DATASETS) -> ImageMLPVAE:
    """The reference's sampler, in its order of draws: encoder hidden log_int(4,128), decoder
    hidden log_int(4,128), encoder layers {0..4}, decoder layers {0..4}, image
    log_int(4,32), batch log_int(4,512), n_z log_int(2,128), dataset uniform."""
    enc_hidden = sampling.log_int(rng, 4, 128)
    dec_hidden = sampling.log_int(rng, 4, 128)
    enc_layers = sampling.choice(rng, (0, 1, 2, 3, 4))
    dec_layers = sampling.choice(rng, (0, 1, 2, 3, 4))
    image_size = sampling.log_int(rng, 4, 32)
    batch_size = sampling.log_int(rng, 4, 512)
    n_z = sampling.log_int(rng, 2, 128)
    dataset = sampling.choice(rng, datasets)
    return ImageMLPVAE(
        dataset=dataset,
        enc_hidden_sizes=(enc_hidden,) * enc_layers,
        dec_hidden_sizes=(dec_hidden,) * dec_layers,
        n_z=n_z,
        batch_size=batch_size,
        image_size=image_size,
    )
