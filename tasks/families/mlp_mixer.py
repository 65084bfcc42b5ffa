"""MLP-Mixer classifier (reference: tasks/fixed/mlp_mixer.py, which uses
`vision_transformer`'s models_mixer.MlpMixer). The reference has fixed tasks only; the
sampler here is this project's addition."""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.image_mlp import IMAGE_DATASETS
from tasks.families.resnet import draw_kernels
from tasks.families.vit import PATCH_SIZES

# Kernels are zero placeholders here and drawn by `MLPMixer.init` as flax's default
# lecun_normal (what models_mixer uses), all from one draw (`draw_kernels`).
_Dense = functools.partial(nn.Dense, kernel_init=nn.initializers.zeros)

# flax's variance_scaling truncated normal divides by the std of N(0, 1) truncated to [-2, 2].
_LECUN_FACTOR = 1.0 / 0.87962566103423978


class _MlpBlock(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x):
        return _Dense(x.shape[-1])(nn.gelu(_Dense(self.mlp_dim)(x)))


class _MixerBlock(nn.Module):
    """x + token-mixing MLP over LN(x)^T, then + channel-mixing MLP over LN(x)."""

    tokens_mlp_dim: int
    channels_mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = _MlpBlock(self.tokens_mlp_dim, name="token_mixing")(jnp.swapaxes(nn.LayerNorm()(x), 1, 2))
        x = x + jnp.swapaxes(y, 1, 2)
        return x + _MlpBlock(self.channels_mlp_dim, name="channel_mixing")(nn.LayerNorm()(x))


class _MixerModule(nn.Module):
    num_classes: int
    patch_size: int
    hidden_dim: int
    num_blocks: int
    tokens_mlp_dim: int
    channels_mlp_dim: int

    @nn.compact
    def __call__(self, x):
        p = (self.patch_size, self.patch_size)
        # SAME padding (flax's default, as in models_mixer): ceil(side / patch) patches per axis.
        x = nn.Conv(self.hidden_dim, p, strides=p, padding="SAME", kernel_init=nn.initializers.zeros, name="stem")(x)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        for i in range(self.num_blocks):
            x = _MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, name=f"block_{i}")(x)
        x = jnp.mean(nn.LayerNorm(name="pre_head_layer_norm")(x), axis=1)
        return _Dense(self.num_classes, name="head")(x)


@dataclasses.dataclass(frozen=True)
class MLPMixer(common.ImageFamily, TaskFamily):
    """Patch stem (SAME conv, stride = patch) -> Mixer blocks (token-mixing and
    channel-mixing GELU MLPs, each after a LayerNorm, with residuals) -> LayerNorm -> mean
    over tokens -> logits; softmax CE. No dropout, nothing sampled per task.

    `zero_head` zero-initialises the logits weights as the reference does (every task
    starts at loss log C); False uses LeCun-normal."""

    dataset: str
    hidden_dim: int
    num_blocks: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    patch_size: int = 16
    batch_size: int = 128
    image_size: int | None = None
    zero_head: bool = True

    def describe(self) -> str:
        parts = [
            f"MLPMixer_{self.dataset}",
            f"{self.image_size or 'native'}px",
            f"patch{self.patch_size}",
            f"d{self.hidden_dim}_b{self.num_blocks}_tok{self.tokens_mlp_dim}_ch{self.channels_mlp_dim}",
            f"bs{self.batch_size}",
        ]
        parts += [] if self.zero_head else ["randhead"]
        return "_".join(parts)

    @property
    def num_tokens(self) -> int:
        h, w, _ = common.image_shape(self.dataset, self.image_size)
        return math.ceil(h / self.patch_size) * math.ceil(w / self.patch_size)

    def _model(self) -> _MixerModule:
        return _MixerModule(
            num_classes=self.num_classes,
            patch_size=self.patch_size,
            hidden_dim=self.hidden_dim,
            num_blocks=self.num_blocks,
            tokens_mlp_dim=self.tokens_mlp_dim,
            channels_mlp_dim=self.channels_mlp_dim,
        )

    def init(self, key, cfg):
        return common.compiled_init(self, key, cfg)

    def _init(self, key, cfg):
        del cfg
        x = jnp.zeros((self.batch_size, *common.image_shape(self.dataset, self.image_size)), jnp.float32)
        params, state = common.split_variables(self._model().init(key, x))
        skip = ("head",) if self.zero_head else ()
        return draw_kernels(key, params, skip=skip, stddev_factor=_LECUN_FACTOR), state

    def loss(self, params, state, key, batch, cfg):
        del key, cfg  # deterministic model, nothing sampled per task
        logits = self._model().apply({"params": params, **state}, common.to_float(batch["image"]))
        return common.cross_entropy(logits, batch["label"]), state

    def normalizer(self, loss, cfg=None):
        return common.scaled_ce_normalizer(self.num_classes)(loss)

    def forward_flops(self) -> float:
        """Stem, token- and channel-mixing MLPs, head (2 * MACs)."""
        c = common.image_shape(self.dataset, self.image_size)[2]
        t, d, b = self.num_tokens, self.hidden_dim, self.batch_size
        stem = 2.0 * b * t * self.patch_size**2 * c * d
        per_block = 2.0 * b * 2 * (d * t * self.tokens_mlp_dim + t * d * self.channels_mlp_dim)
        return stem + self.num_blocks * per_block + common.dense_flops((d, self.num_classes), b)


def sample_mlp_mixer(rng: np.random.Generator, datasets: tuple[str, ...] = IMAGE_DATASETS) -> MLPMixer:
    """This project's sampler (the reference has none), in the spirit of `sample_vit`:
    blocks log_int(1,16); hidden log_int(8,512); token MLP log_int(8,256); channel MLP
    log_int(32,512); dataset; image log_int(8,64); batch log_int(4,256); patch
    {2,4,8,12,16}."""
    blocks = sampling.log_int(rng, 1, 16)
    hidden = sampling.log_int(rng, 8, 512)
    tokens_mlp = sampling.log_int(rng, 8, 256)
    channels_mlp = sampling.log_int(rng, 32, 512)
    dataset = sampling.choice(rng, datasets)
    image_size = sampling.log_int(rng, 8, 64)
    batch_size = sampling.log_int(rng, 4, 256)
    patch = sampling.choice(rng, PATCH_SIZES)
    return MLPMixer(
        dataset=dataset,
        hidden_dim=hidden,
        num_blocks=blocks,
        tokens_mlp_dim=tokens_mlp,
        channels_mlp_dim=channels_mlp,
        patch_size=patch,
        batch_size=batch_size,
        image_size=image_size,
    )


# name -> (hidden, blocks, token MLP, channel MLP) of the reference's two configs (patch 16).
_SIZES = {"small16": (768, 8, 384, 3072), "tiny16": (512, 5, 384, 2048)}
_DATASETS = {"ImageNet64": "imagenet64", "Food101_64": "food101_64", "Cifar100": "cifar100"}


def _fixed_mixer(dataset: str, size: str, batch_size: int) -> MLPMixer:
    hidden, blocks, tokens_mlp, channels_mlp = _SIZES[size]
    return MLPMixer(dataset, hidden, blocks, tokens_mlp, channels_mlp, patch_size=16, batch_size=batch_size)


def _fixed() -> dict:
    f = {}
    for label, dataset in _DATASETS.items():
        for size in _SIZES:
            f[f"MLPMixer_{label}_{size}"] = functools.partial(_fixed_mixer, dataset, size, 128)
        f[f"MLPMixer_{label}_bs256_tiny16"] = functools.partial(_fixed_mixer, dataset, "tiny16", 256)
    return f


FIXED = _fixed()
