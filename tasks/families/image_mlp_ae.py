"""Image MLP autoencoder (reference: tasks/parametric/image_mlp_ae.py, tasks/fixed/image_mlp_ae.py)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.image_mlp import IMAGE_DATASETS

SWITCHES = ("log_loss", "center_data", "constrain_output")


def _select(flag, on_true, on_false):
    """on_true() if flag else on_false(): a Python branch for a static bool, `jnp.where` for a
    (traced, per-task) array, so both kinds of switch share one code path."""
    if isinstance(flag, bool):
        return on_true() if flag else on_false()
    return jnp.where(flag, on_true(), on_false())


def _sample_switches(key: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
    """A fair boolean per name (the reference's choice over [True, False])."""
    keys = jax.random.split(key, max(len(names), 1))
    return {name: jax.random.bernoulli(k) for name, k in zip(names, keys)}


class SwitchedImageMLP(common.ImageFamily):
    """Shared by the image MLP (V)AEs: flattened inputs, and per-task boolean `switches`
    (a field set to None is sampled per task into cfg; a bool fixes it for the family)."""

    switches: ClassVar[tuple[str, ...]] = ()

    @property
    def input_dim(self) -> int:
        return int(np.prod(common.image_shape(self.dataset, self.image_size)))

    def sample(self, key):
        k_inner, k_switch = jax.random.split(key)
        cfg = sampling.sample_inner(
            k_inner, with_activation=self.activation is None, with_initializer=self.sampled_init
        )
        cfg.update(_sample_switches(k_switch, tuple(n for n in self.switches if getattr(self, n) is None)))
        return cfg

    def _switch(self, name: str, cfg):
        value = getattr(self, name)
        return cfg[name] if value is None else value

    def _switch_name_parts(self) -> list[str]:
        return [f"{name}{int(getattr(self, name))}" for name in self.switches if getattr(self, name) is not None]


@dataclasses.dataclass(frozen=True)
class ImageMLPAE(SwitchedImageMLP, TaskFamily):
    """Flattened image x -> MLP(hidden_sizes + (D,)) -> reconstruction of x.

    Per-task switches (None: a random boolean per task, in cfg; a bool: fixed for the family):
    `center_data` maps x to 2(x - 0.5); `constrain_output` squashes the output with tanh when
    centred, else sigmoid; `log_loss` takes log(. + 1e-8) of each example's mean squared error.
    The loss is the batch mean. `normalizer_type="log"` is the parametric family's
    normaliser, "clip" the fixed tasks' clip(L, 0, 1)."""

    dataset: str
    hidden_sizes: tuple[int, ...]
    batch_size: int = 128
    image_size: int | None = None
    activation: str | None = None
    sampled_init: bool = True
    log_loss: bool | None = None
    center_data: bool | None = None
    constrain_output: bool | None = None
    normalizer_type: str = "log"
    switches: ClassVar[tuple[str, ...]] = SWITCHES

    def __post_init__(self):
        if self.normalizer_type not in ("log", "clip"):
            raise ValueError(f"normalizer_type must be 'log' or 'clip', not {self.normalizer_type!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))  # hashable

    def describe(self) -> str:
        parts = [
            f"ImageMLPAE_{self.dataset}",
            f"{self.image_size or 'native'}px",
            "x".join(map(str, self.hidden_sizes)) or "linear",
            self.activation or "sampledact",
            f"bs{self.batch_size}",
        ]
        parts += self._switch_name_parts()
        parts += [] if self.sampled_init else ["defaultinit"]
        parts += [] if self.normalizer_type == "log" else [f"{self.normalizer_type}norm"]
        return "_".join(parts)

    def _model(self, cfg):
        return common.MLP(
            sizes=tuple(self.hidden_sizes) + (self.input_dim,),
            act=common.act_fn(self.activation, cfg),
            kernel_init=common.kernel_init(cfg),
        )

    def init(self, key, cfg):
        x = jnp.zeros((self.batch_size, self.input_dim), jnp.float32)
        return common.split_variables(self._model(cfg).init(key, x))

    def per_example_error(self, params, batch, cfg) -> jax.Array:
        """Each example's mean squared reconstruction error [B] (before the log of log_loss)."""
        x = common.to_float(batch["image"]).reshape(batch["image"].shape[0], -1)
        center = self._switch("center_data", cfg)
        x = _select(center, lambda: 2.0 * (x - 0.5), lambda: x)
        out = self._model(cfg).apply({"params": params}, x)
        pred = _select(
            self._switch("constrain_output", cfg),
            lambda: _select(center, lambda: jnp.tanh(out), lambda: jax.nn.sigmoid(out)),
            lambda: out,
        )
        return jnp.mean(jnp.square(pred.astype(jnp.float32) - x.astype(jnp.float32)), axis=1)

    def loss(self, params, state, key, batch, cfg):
        del key  # deterministic model
        err = self.per_example_error(params, batch, cfg)
        err = _select(self._switch("log_loss", cfg), lambda: jnp.log(err + 1e-8), lambda: err)
        return jnp.mean(err), state

    def normalizer(self, loss, cfg=None):
        """The reference's normaliser. The "log" one depends on the task's log_loss switch:
        pass `cfg` when it is per-task; without it a negative loss is taken as a log loss
        (an MSE is >= 0), which is exact unless a log loss is >= 0 (per-example MSEs near or
        above 1)."""
        if self.normalizer_type == "clip":
            return jnp.clip(jnp.where(jnp.isfinite(loss), loss, 1.0), 0.0, 1.0)
        log_loss = self.log_loss
        if log_loss is None:
            log_loss = loss < 0 if cfg is None else cfg["log_loss"]
        # max(., 0) keeps log's NaN out of the unused branch (and its gradient).
        out = _select(log_loss, lambda: loss, lambda: jnp.log(jnp.maximum(loss, 0.0) + 1e-8))
        out = jnp.where(jnp.isfinite(out), out, 1.0)
        return jnp.clip(out, -12.0, 1.0) * 0.5 + 10.0

    def forward_flops(self) -> float:
        return common.dense_flops((self.input_dim, *self.hidden_sizes, self.input_dim), self.batch_size)


def sample_image_mlp_ae(rng: np.random.Generator, datasets: tuple[str, ...] = IMAGE_DATASETS) -> ImageMLPAE:
    """The reference's sampler: hidden log_int(8,128) x layers {0..4}, image log_int(4,32),
    batch log_int(4,512), dataset uniform (in that order)."""
    hidden = sampling.log_int(rng, 8, 128)
    layers = sampling.choice(rng, (0, 1, 2, 3, 4))
    image_size = sampling.log_int(rng, 4, 32)
    batch_size = sampling.log_int(rng, 4, 512)
    dataset = sampling.choice(rng, datasets)
    return ImageMLPAE(dataset=dataset, hidden_sizes=(hidden,) * layers, batch_size=batch_size, image_size=image_size)


def _fixed() -> dict:
    """The reference's fixed autoencoders (spec section 6.2): relu, haiku-default init, loss =
    batch mean of each example's mean (x - sigmoid(MLP(x)))^2 on [0, 1] pixels, normaliser
    clip(L, 0, 1); native image sizes."""
    f = {}

    def add(name, dataset, hidden, batch_size):
        f[f"ImageMLPAE_{name}_bs{batch_size}"] = lambda: ImageMLPAE(
            dataset,
            hidden,
            batch_size=batch_size,
            activation="relu",
            sampled_init=False,
            log_loss=False,
            center_data=False,
            constrain_output=True,
            normalizer_type="clip",
        )

    add("Cifar10_32x32x32", "cifar10", (32, 32, 32), 128)
    add("Cifar10_256x256x256", "cifar10", (256, 256, 256), 128)
    add("Cifar10_256x256x256", "cifar10", (256, 256, 256), 1024)
    add("Cifar10_128x32x128", "cifar10", (128, 32, 128), 256)
    add("Mnist_128x32x128", "mnist", (128, 32, 128), 128)
    add("FashionMnist_128x32x128", "fashion_mnist", (128, 32, 128), 128)
    return f


FIXED = _fixed()
