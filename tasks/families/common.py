"""Pieces the families share: dataset facts, image preprocessing, losses, normalizers
(reference spec section 5.2), and flax layers whose initialiser and activation are the
per-task (traced) choices of `tasks.sampling`."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import data, sampling
from tasks.base import spec

# ------------------------------------------------------------------ data


def image_info(dataset: str) -> tuple[tuple[int, int, int], int]:
    kind, *rest = data.INFO[dataset]
    if kind != "image":
        raise ValueError(f"{dataset!r} is not an image dataset")
    return rest[0], rest[1]


def vocab_size(dataset: str) -> int:
    kind, *rest = data.INFO[dataset]
    if kind != "text":
        raise ValueError(f"{dataset!r} is not a text dataset")
    return rest[0]


def image_shape(dataset: str, image_size: int | None) -> tuple[int, int, int]:
    (h, w, c), _ = image_info(dataset)
    return (h, w, c) if image_size is None else (image_size, image_size, c)


def image_batch_spec(dataset: str, batch_size: int, image_size: int | None) -> dict:
    return {
        "image": spec((batch_size,) + image_shape(dataset, image_size), np.uint8),
        "label": spec((batch_size,), np.int32),
    }


def image_get_batch(
    dataset: str, rng: np.random.Generator, split: str, batch_size: int, image_size: int | None
) -> dict:
    return data.load(dataset).sample(rng, split, batch_size, image_size)


class ImageFamily:
    """Batches and class count of an image family: a mixin for TaskFamily subclasses with
    `dataset`, `batch_size` and `image_size` fields (list it before TaskFamily)."""

    @property
    def num_classes(self) -> int:
        return image_info(self.dataset)[1]

    def get_batch(self, rng: np.random.Generator, split: str) -> dict:
        return image_get_batch(self.dataset, rng, split, self.batch_size, self.image_size)

    def batch_spec(self) -> dict:
        return image_batch_spec(self.dataset, self.batch_size, self.image_size)


def to_float(images: jax.Array) -> jax.Array:
    """uint8 images to [0, 1] float32 (bf16 stays bf16)."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    return images.astype(jnp.float32) / 255.0


# ------------------------------------------------------------------ losses and normalizers


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def classification_normalizer(num_classes: int) -> Callable[[jax.Array], jax.Array]:
    """(clip(L, 0, log 2C) - log(C/5)) * 10 / log C; NaN/inf count as log 2C (ImageMLP, Conv, LMs)."""

    def normalizer(loss):
        max_loss = math.log(2 * num_classes)
        loss = jnp.where(jnp.isfinite(loss), loss, max_loss)
        return (jnp.clip(loss, 0.0, max_loss) - math.log(num_classes / 5)) * 10.0 / math.log(num_classes)

    return normalizer


def scaled_ce_normalizer(num_classes: int) -> Callable[[jax.Array], jax.Array]:
    """10 L / log 2C clipped to [0, 10] (ResNet, ViT, Mixer)."""

    def normalizer(loss):
        loss = jnp.where(jnp.isfinite(loss), loss, 10.0 * math.log(2 * num_classes))
        return jnp.clip(10.0 * loss / math.log(2 * num_classes), 0.0, 10.0)

    return normalizer


# ------------------------------------------------------------------ layers


def kernel_init(cfg: dict) -> Callable:
    """The task's sampled initialiser when cfg has one, else haiku's default
    (TruncatedNormal(1/sqrt(fan_in)), which the reference's fixed tasks use)."""
    if "init" in cfg:
        return lambda key, shape, dtype=jnp.float32: sampling.initialize(
            cfg["init"], cfg["init_scale"], key, shape, dtype
        )
    return default_init


def default_init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod(shape[:-1]))
    return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)


def act_fn(activation: str | None, cfg: dict) -> Callable[[jax.Array], jax.Array]:
    """A fixed activation by name, or the task's sampled one."""
    if activation is not None:
        return dict(sampling.ACTIVATIONS)[activation]
    return lambda x: sampling.activation(cfg["activation"], x)


class MLP(nn.Module):
    """Dense layers with an activation between them (none after the last)."""

    sizes: Sequence[int]
    act: Callable
    kernel_init: Callable
    norm: str | None = None  # None, "layer" or "batch" after each hidden Dense
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = True):
        for i, size in enumerate(self.sizes):
            x = nn.Dense(size, kernel_init=self.kernel_init)(x)
            if i < len(self.sizes) - 1:
                if self.norm == "layer":
                    x = nn.LayerNorm()(x)
                elif self.norm == "batch":
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                x = self.act(x)
                if self.dropout:
                    x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x


def split_variables(variables: dict) -> tuple[Any, dict]:
    """(params, model_state) of flax variables."""
    variables = dict(variables)
    params = variables.pop("params", {})
    return params, variables


def dense_flops(sizes: Sequence[int], batch: int) -> float:
    """2 * batch * sum(in * out) for a chain of dense layers sizes[0] -> ... -> sizes[-1]."""
    return 2.0 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


@functools.partial(jax.jit, static_argnums=0)
def compiled_init(family, key, cfg):
    """`family._init(key, cfg)` compiled once per family configuration: an eager flax init
    compiles every op (each random initialiser) separately, which takes seconds on a CPU."""
    return family._init(key, cfg)
