"""Image ConvNet classifier (reference: tasks/parametric/image_conv.py, tasks/fixed/conv.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.image_mlp import IMAGE_DATASETS


class ConvNet(nn.Module):
    """3x3 SAME convs (with bias) -> activation -> optional norm, spatial mean, Dense."""

    widths: Sequence[int]
    strides: Sequence[int]
    num_classes: int
    act: Callable
    kernel_init: Callable
    kernel_size: int = 3
    norm: str | None = None  # None, "layer" or "batch", after each activation

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        for width, stride in zip(self.widths, self.strides):
            x = nn.Conv(width, (k, k), strides=(stride, stride), padding="SAME", kernel_init=self.kernel_init)(x)
            x = self.act(x)
            if self.norm == "layer":
                x = nn.LayerNorm(epsilon=1e-5)(x)  # over channels, haiku's epsilon
            elif self.norm == "batch":
                # Batch statistics in every call, as the reference (is_training=True always).
                x = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)(x)
        x = jnp.mean(x, axis=(1, 2))
        # The head keeps haiku's default init even when the convs use the sampled one.
        return nn.Dense(self.num_classes, kernel_init=common.default_init)(x)


@dataclasses.dataclass(frozen=True)
class ImageConv(common.ImageFamily, TaskFamily):
    """Image -> `widths` convs with `strides` (default: 2 for the first layer, then 1) ->
    spatial mean -> Dense -> softmax CE. `activation=None` and `sampled_init=True` make the
    activation and the conv initialiser per-task random choices (the parametric family)."""

    dataset: str
    widths: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    batch_size: int = 128
    image_size: int | None = None
    activation: str | None = None
    sampled_init: bool = True
    norm: str | None = None
    kernel_size: int = 3

    def __post_init__(self):
        widths = tuple(int(w) for w in self.widths)
        strides = (2,) + (1,) * (len(widths) - 1) if self.strides is None else tuple(int(s) for s in self.strides)
        strides = strides[: len(widths)]
        if len(strides) != len(widths):
            raise ValueError(f"{len(strides)} strides for {len(widths)} conv layers")
        if self.norm not in (None, "layer", "batch"):
            raise ValueError(f"norm must be None, 'layer' or 'batch', not {self.norm!r}")
        # Normalised in place so that equal configurations compare (and hash) equal.
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "strides", strides)

    def describe(self) -> str:
        parts = [
            f"ImageConv_{self.dataset}",
            f"{self.image_size or 'native'}px",
            "x".join(map(str, self.widths)) or "noconv",
            "s" + "".join(map(str, self.strides)) if self.widths else "",
            self.activation or "sampledact",
            f"bs{self.batch_size}",
        ]
        parts += [f"{self.norm}norm"] if self.norm else []
        parts += [f"k{self.kernel_size}"] if self.kernel_size != 3 else []
        parts += [] if self.sampled_init else ["defaultinit"]
        return "_".join(p for p in parts if p)

    def sample(self, key):
        return sampling.sample_inner(key, with_activation=self.activation is None, with_initializer=self.sampled_init)

    def _model(self, cfg):
        return ConvNet(
            widths=self.widths,
            strides=self.strides,
            num_classes=self.num_classes,
            act=common.act_fn(self.activation, cfg),
            kernel_init=common.kernel_init(cfg),
            kernel_size=self.kernel_size,
            norm=self.norm,
        )

    def init(self, key, cfg):
        x = jnp.zeros((self.batch_size, *common.image_shape(self.dataset, self.image_size)), jnp.float32)
        return common.split_variables(self._model(cfg).init(key, x))

    def loss(self, params, state, key, batch, cfg):
        del key  # deterministic model
        logits, new_state = self._model(cfg).apply(
            {"params": params, **state}, common.to_float(batch["image"]), mutable=list(state)
        )
        return common.cross_entropy(logits, batch["label"]), dict(new_state)

    def normalizer(self, loss, cfg=None):
        return common.classification_normalizer(self.num_classes)(loss)

    def forward_flops(self) -> float:
        h, w, c = common.image_shape(self.dataset, self.image_size)
        flops = 0.0
        for width, stride in zip(self.widths, self.strides):
            h, w = -(-h // stride), -(-w // stride)  # SAME padding: ceil(size / stride)
            flops += 2.0 * self.batch_size * h * w * self.kernel_size**2 * c * width
            c = width
        return flops + common.dense_flops((c, self.num_classes), self.batch_size)


def sample_image_conv(rng: np.random.Generator, datasets: tuple[str, ...] = IMAGE_DATASETS) -> ImageConv:
    """The reference's sampler, in its order of draws: hidden log_int(4,64), layers {0..3},
    a first-stride draw the reference overwrites, num_stride {0,1,2} (the first num_stride
    layers stride 2, truncated to the layers), image log_int(4,32), dataset, batch
    log_int(4,512)."""
    hidden = sampling.log_int(rng, 4, 64)
    layers = sampling.choice(rng, (0, 1, 2, 3))
    sampling.choice(rng, (1, 2))  # the reference's unused first stride; drawn to keep the order
    num_stride = sampling.choice(rng, (0, 1, 2))
    strides = ((2,) * num_stride + (1,) * layers)[:layers]
    image_size = sampling.log_int(rng, 4, 32)
    dataset = sampling.choice(rng, datasets)
    batch_size = sampling.log_int(rng, 4, 512)
    return ImageConv(
        dataset=dataset, widths=(hidden,) * layers, strides=strides, batch_size=batch_size, image_size=image_size
    )


def fixed_conv(dataset: str, widths: tuple[int, ...], activation: str = "relu", **kw) -> ImageConv:
    """A conv task as the reference's fixed ones: haiku-default init, first layer stride 2,
    the rest stride 1, batch 128 unless given (e.g. `fixed_conv("cifar10", (16, 32),
    image_size=8)` is the LOpt tasks' inner Conv_Cifar10_8_16x32)."""
    return ImageConv(dataset, tuple(widths), activation=activation, sampled_init=False, **kw)


def _fixed() -> dict:
    """The reference's fixed Conv tasks (spec section 6.2). The number after an ImageNet
    name is not an image size: those use the dataset's native 16x16 or 32x32."""
    f = {}

    def add(name, dataset, widths, act="relu", **kw):
        f[f"Conv_{name}"] = lambda: fixed_conv(dataset, widths, act, **kw)

    add("Cifar10_16_32x64x64", "cifar10", (32, 64, 64), image_size=16)
    add("Cifar10_32x64x64", "cifar10", (32, 64, 64))
    add("Cifar10_32x64x64_Tanh", "cifar10", (32, 64, 64), "tanh")
    add("Cifar10_32x64x64_batchnorm", "cifar10", (32, 64, 64), norm="batch")
    add("Cifar10_32x64x64_layernorm", "cifar10", (32, 64, 64), norm="layer")
    add("Cifar100_32x64x64", "cifar100", (32, 64, 64))
    add("Cifar100_32x64x64_Tanh", "cifar100", (32, 64, 64), "tanh")
    add("imagenet16_16_64x128x128x128", "imagenet16", (64, 128, 128, 128))
    add("imagenet32_16_32x64x64", "imagenet32", (32, 64, 64))
    return f


FIXED = _fixed()
