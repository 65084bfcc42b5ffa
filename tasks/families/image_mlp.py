"""Image MLP classifier (reference: tasks/parametric/image_mlp.py, tasks/fixed/image_mlp.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common

# The reference's sampler draws from these (sorted names); `datasets=` swaps in others.
IMAGE_DATASETS = ("cifar100", "cifar10", "fashion_mnist", "imagenet16", "mnist")


@dataclasses.dataclass(frozen=True)
class ImageMLP(common.ImageFamily, TaskFamily):
    """Flattened image -> MLP -> logits. `activation=None` and `sampled_init=True` make the
    activation and initialiser per-task random choices (the parametric family); the fixed
    tasks name them. `loss_type="mse"` regresses one-hot targets."""

    dataset: str
    hidden_sizes: tuple[int, ...]
    batch_size: int = 128
    image_size: int | None = None
    activation: str | None = None
    sampled_init: bool = True
    loss_type: str = "ce"
    dropout: float = 0.0
    norm: str | None = None
    grayscale: bool = False  # average the colour channels first (the reference's "BW" datasets)

    def describe(self) -> str:
        parts = [
            f"ImageMLP_{self.dataset}",
            f"{self.image_size or 'native'}px",
            "x".join(map(str, self.hidden_sizes)) or "linear",
        ]
        parts.append(self.activation or "sampledact")
        parts += [f"bs{self.batch_size}"] + ([self.loss_type] if self.loss_type != "ce" else [])
        parts += [f"drop{self.dropout}"] if self.dropout else []
        parts += [f"{self.norm}norm"] if self.norm else []
        parts += ["bw"] if self.grayscale else []
        return "_".join(parts)

    def sample(self, key):
        return sampling.sample_inner(key, with_activation=self.activation is None, with_initializer=self.sampled_init)

    def _model(self, cfg):
        return common.MLP(
            sizes=tuple(self.hidden_sizes) + (self.num_classes,),
            act=common.act_fn(self.activation, cfg),
            kernel_init=common.kernel_init(cfg),
            norm=self.norm,
            dropout=self.dropout,
        )

    def _inputs(self, batch):
        x = common.to_float(batch["image"])
        if self.grayscale:
            x = jnp.mean(x, axis=-1, keepdims=True)
        return x.reshape(x.shape[0], -1)

    def _input_size(self) -> int:
        h, w, c = common.image_shape(self.dataset, self.image_size)
        return h * w * (1 if self.grayscale else c)

    def init(self, key, cfg):
        x = jnp.zeros((self.batch_size, self._input_size()), jnp.float32)
        return common.split_variables(self._model(cfg).init({"params": key, "dropout": key}, x))

    def loss(self, params, state, key, batch, cfg):
        logits, new_state = self._model(cfg).apply(
            {"params": params, **state}, self._inputs(batch), rngs={"dropout": key}, mutable=list(state)
        )
        if self.loss_type == "mse":
            target = jax.nn.one_hot(batch["label"], self.num_classes)
            loss = jnp.mean(jnp.square(logits.astype(jnp.float32) - target))
        else:
            loss = common.cross_entropy(logits, batch["label"])
        return loss, dict(new_state)

    def normalizer(self, loss, cfg=None):
        if self.loss_type == "mse":
            return jnp.clip(jnp.where(jnp.isfinite(loss), loss, 1.0), 0.0, 1.0) * 10.0
        return common.classification_normalizer(self.num_classes)(loss)

    def forward_flops(self) -> float:
        return common.dense_flops((self._input_size(), *self.hidden_sizes, self.num_classes), self.batch_size)


def sample_image_mlp(rng: np.random.Generator, datasets: tuple[str, ...] = IMAGE_DATASETS) -> ImageMLP:
    """The reference's sampler: hidden log_int(8,128) x layers {0..4}, image log_int(4,32),
    batch log_int(4,512), dataset uniform."""
    hidden = sampling.log_int(rng, 8, 128)
    layers = int(rng.integers(0, 5))
    image_size = sampling.log_int(rng, 4, 32)
    batch_size = sampling.log_int(rng, 4, 512)
    dataset = sampling.choice(rng, datasets)
    return ImageMLP(dataset=dataset, hidden_sizes=(hidden,) * layers, batch_size=batch_size, image_size=image_size)


def _fixed() -> dict:
    """The reference's fixed ImageMLP tasks (spec section 6.2): haiku-default init, batch 128
    unless named, CIFAR at 32x32, (Fashion-)MNIST at 28x28 unless named (8 = 8x8)."""
    f = {}

    def add(name, dataset, hidden, act, **kw):
        f[f"ImageMLP_{name}"] = lambda: ImageMLP(dataset, hidden, activation=act, sampled_init=False, **kw)

    add("FashionMnist8_Relu32", "fashion_mnist", (32,), "relu", image_size=8)
    add("FashionMnist_Relu128x128", "fashion_mnist", (128, 128), "relu")
    add("Mnist_128x128x128_Relu", "mnist", (128,) * 3, "relu")
    add("Cifar10_8_Relu32", "cifar10", (32,), "relu", image_size=8)
    add("Imagenet16_Relu256x256x256", "imagenet16", (256,) * 3, "relu")
    add("Cifar100_128x128x128_Relu", "cifar100", (128,) * 3, "relu")
    for bs in (64, 128, 256):
        add(f"Cifar10_128x128x128_Tanh_bs{bs}", "cifar10", (128,) * 3, "tanh", batch_size=bs)
    add("Cifar10_128x128x128_Relu", "cifar10", (128,) * 3, "relu")
    add("Cifar10_128x128x128_Relu_MSE", "cifar10", (128,) * 3, "relu", loss_type="mse")
    for norm, label in (("batch", "BatchNorm"), ("layer", "LayerNorm")):
        for act in ("relu", "tanh"):
            add(f"Cifar10_128x128x128_{label}_{act.capitalize()}", "cifar10", (128,) * 3, act, norm=norm)
    for rate in (2, 5, 8):
        add(
            f"Cifar10_128x128_Dropout0{rate}_Relu_MSE",
            "cifar10",
            (128, 128),
            "relu",
            loss_type="mse",
            dropout=rate / 10,
        )
    for width in (256, 1024, 4096, 8192):
        add(f"Cifar10_{width}x{width}_Relu", "cifar10", (width, width), "relu")
    return f


FIXED = _fixed()
