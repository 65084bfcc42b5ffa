"""Vision Transformer classifier (reference: tasks/parametric/vit.py, tasks/fixed/vit.py,
which use `vision_transformer`'s models_vit.VisionTransformer with a token classifier)."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.image_mlp import IMAGE_DATASETS

PATCH_SIZES = (2, 4, 8, 12, 16)

_xavier = nn.initializers.xavier_uniform()


class _MlpBlock(nn.Module):
    mlp_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        # models_vit's initialisers: Xavier-uniform kernels, N(0, 1e-6) biases.
        dense = functools.partial(nn.Dense, kernel_init=_xavier, bias_init=nn.initializers.normal(1e-6))
        y = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(dense(self.mlp_dim)(x)))
        return nn.Dropout(self.dropout, deterministic=not train)(dense(x.shape[-1])(y))


class _EncoderBlock(nn.Module):
    """Pre-LN block: x + Dropout(MHA(LN x)), then + MLP(LN x)."""

    mlp_dim: int
    num_heads: int
    dropout: float
    attention_dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            kernel_init=_xavier,
            broadcast_dropout=False,
            dropout_rate=self.attention_dropout,
            deterministic=not train,
        )(nn.LayerNorm()(x))
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        return x + _MlpBlock(self.mlp_dim, self.dropout)(nn.LayerNorm()(x), train)


class _ViTModule(nn.Module):
    num_classes: int
    patch: tuple[int, int]
    hidden_size: int
    mlp_dim: int
    num_heads: int
    num_layers: int
    dropout: float
    attention_dropout: float
    zero_head: bool

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(self.hidden_size, self.patch, strides=self.patch, padding="VALID", name="embedding")(x)
        n, h, w, c = x.shape
        cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c)).astype(x.dtype), x.reshape(n, h * w, c)], axis=1)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], c))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for i in range(self.num_layers):
            x = _EncoderBlock(self.mlp_dim, self.num_heads, self.dropout, self.attention_dropout, name=f"block_{i}")(
                x, train
            )
        x = nn.LayerNorm(name="encoder_norm")(x)[:, 0]
        head_init = nn.initializers.zeros if self.zero_head else nn.initializers.lecun_normal()
        return nn.Dense(self.num_classes, kernel_init=head_init, name="head")(x)


@dataclasses.dataclass(frozen=True)
class ViT(common.ImageFamily, TaskFamily):
    """Patch embedding (VALID conv) -> class token + learned position embeddings -> pre-LN
    transformer blocks (MHA; GELU MLP) -> LayerNorm -> logits from the class token; softmax
    CE. Dropout and attention dropout are active in the training loss (rng: `key`).

    A patch larger than the image is clamped to the image's side (per axis); `patch_size`
    keeps the sampled value. `zero_head` zero-initialises the logits weights as the
    reference does (every task starts at loss log C); False uses LeCun-normal."""

    dataset: str
    patch_size: int
    hidden_size: int
    mlp_dim: int
    num_heads: int
    num_layers: int
    batch_size: int = 128
    image_size: int | None = None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    zero_head: bool = True

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")

    def describe(self) -> str:
        parts = [
            f"ViT_{self.dataset}",
            f"{self.image_size or 'native'}px",
            f"patch{self.patch_size}",
            f"d{self.hidden_size}_mlp{self.mlp_dim}_h{self.num_heads}_l{self.num_layers}",
            f"bs{self.batch_size}",
        ]
        if self.dropout or self.attention_dropout:
            parts.append(f"drop{self.dropout:g}_attdrop{self.attention_dropout:g}")
        parts += [] if self.zero_head else ["randhead"]
        return "_".join(parts)

    @property
    def patch(self) -> tuple[int, int]:
        """The patch used: patch_size clamped to the image's height and width."""
        h, w, _ = common.image_shape(self.dataset, self.image_size)
        return min(self.patch_size, h), min(self.patch_size, w)

    def _model(self) -> _ViTModule:
        return _ViTModule(
            num_classes=self.num_classes,
            patch=self.patch,
            hidden_size=self.hidden_size,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            dropout=float(self.dropout),
            attention_dropout=float(self.attention_dropout),
            zero_head=self.zero_head,
        )

    def init(self, key, cfg):
        return common.compiled_init(self, key, cfg)

    def _init(self, key, cfg):
        del cfg  # the reference samples nothing per task
        x = jnp.zeros((self.batch_size, *common.image_shape(self.dataset, self.image_size)), jnp.float32)
        return common.split_variables(self._model().init({"params": key, "dropout": key}, x))

    def loss(self, params, state, key, batch, cfg):
        del cfg
        logits = self._model().apply(
            {"params": params, **state}, common.to_float(batch["image"]), rngs={"dropout": key}
        )
        return common.cross_entropy(logits, batch["label"]), state

    def normalizer(self, loss, cfg=None):
        return common.scaled_ce_normalizer(self.num_classes)(loss)

    def forward_flops(self) -> float:
        """Patch embedding, attention projections and products, MLPs, head (2 * MACs)."""
        h, w, c = common.image_shape(self.dataset, self.image_size)
        ph, pw = self.patch
        patches = (h // ph) * (w // pw)
        tokens, d, b = patches + 1, self.hidden_size, self.batch_size
        embed = 2.0 * b * patches * ph * pw * c * d
        per_layer = 2.0 * b * tokens * (4 * d * d + 2 * d * self.mlp_dim) + 2.0 * b * 2 * tokens * tokens * d
        return embed + self.num_layers * per_layer + common.dense_flops((d, self.num_classes), b)


def sample_vit(rng: np.random.Generator, datasets: tuple[str, ...] = IMAGE_DATASETS) -> ViT:
    """The reference's sampler (draw order kept): layers log_int(1,16); heads log_int(1,16);
    hidden = heads x (log_int(8,64) if heads < 4 else log_int(8,32)); mlp_dim
    log_int(32,512); dataset; image log_int(8,64); batch log_int(4,256); patch
    {2,4,8,12,16}; dropout, attention dropout U(0,0.8), both zero with probability 0.3."""
    layers = sampling.log_int(rng, 1, 16)
    heads = sampling.log_int(rng, 1, 16)
    hidden = heads * (sampling.log_int(rng, 8, 64) if heads < 4 else sampling.log_int(rng, 8, 32))
    mlp_dim = sampling.log_int(rng, 32, 512)
    dataset = sampling.choice(rng, datasets)
    image_size = sampling.log_int(rng, 8, 64)
    batch_size = sampling.log_int(rng, 4, 256)
    patch = sampling.choice(rng, PATCH_SIZES)
    dropout = float(rng.uniform(0.0, 0.8))
    attention_dropout = float(rng.uniform(0.0, 0.8))
    keep = float(rng.uniform() > 0.3)
    return ViT(
        dataset=dataset,
        patch_size=patch,
        hidden_size=hidden,
        mlp_dim=mlp_dim,
        num_heads=heads,
        num_layers=layers,
        batch_size=batch_size,
        image_size=image_size,
        dropout=dropout * keep,
        attention_dropout=attention_dropout * keep,
    )


# name -> (patch, hidden, mlp_dim, heads, layers) of the reference's two configs.
_SIZES = {"wideshallow": (16, 384, 1536, 6, 6), "skinnydeep": (16, 128, 512, 4, 10)}
# name -> dataset, all at their native size (ImageNet and Food-101 at 64x64, CIFAR-100 at 32x32).
_DATASETS = {"ImageNet64": "imagenet64", "Food101_64": "food101_64", "Cifar100": "cifar100"}


def _fixed_vit(dataset: str, size: str) -> ViT:
    patch, hidden, mlp_dim, heads, layers = _SIZES[size]
    return ViT(dataset, patch, hidden, mlp_dim, heads, layers, batch_size=128)


FIXED = {
    f"VIT_{label}_{size}": functools.partial(_fixed_vit, dataset, size)
    for label, dataset in _DATASETS.items()
    for size in _SIZES
}
