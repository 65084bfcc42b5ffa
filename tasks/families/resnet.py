"""ResNet image classifier with BatchNorm state (reference: tasks/resnet.py,
tasks/parametric/image_resnet.py, tasks/fixed/resnet.py)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.image_mlp import IMAGE_DATASETS

GROUP_STRIDES = (1, 2, 2, 2)
CHANNEL_PATTERNS = ((1, 1, 1, 1), (1, 2, 4, 8), (1, 2, 2, 4), (1, 2, 2, 2), (1, 2, 4, 4))
BN_DECAY, BN_EPS = 0.9, 1e-5


def _conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> nn.Conv:
    # No bias, as in the reference. The kernel is drawn by `ResNet.init` (`draw_kernels`).
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        use_bias=False,
        kernel_init=nn.initializers.zeros,
        name=name,
    )


def _batch_norm(name: str | None = None, zero_scale: bool = False) -> nn.BatchNorm:
    # Always training mode, as in the reference: batch statistics normalise, and the
    # running averages (the model state) are only updated.
    return nn.BatchNorm(
        use_running_average=False,
        momentum=BN_DECAY,
        epsilon=BN_EPS,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        name=name,
    )


class _BottleneckV1(nn.Module):
    """Post-activation bottleneck: (1x1, 3x3 strided, 1x1) conv-BN, ReLU between, the last
    BN scale zero-initialised; ReLU after adding the (projected) shortcut."""

    channels: int
    stride: int
    projection: bool

    @nn.compact
    def __call__(self, x):
        shortcut = x
        if self.projection:
            shortcut = _batch_norm("shortcut_bn")(_conv(self.channels, 1, self.stride, "shortcut_conv")(x))
        inner = self.channels // 4
        y = nn.relu(_batch_norm("bn_0")(_conv(inner, 1, name="conv_0")(x)))
        y = nn.relu(_batch_norm("bn_1")(_conv(inner, 3, self.stride, "conv_1")(y)))
        y = _batch_norm("bn_2", zero_scale=True)(_conv(self.channels, 1, name="conv_2")(y))
        return nn.relu(y + shortcut)


class _BottleneckV2(nn.Module):
    """Pre-activation bottleneck: (BN, ReLU, conv) x 3; the projection shortcut is taken
    from the first pre-activation."""

    channels: int
    stride: int
    projection: bool

    @nn.compact
    def __call__(self, x):
        shortcut = x
        inner = self.channels // 4
        convs = ((inner, 1, 1), (inner, 3, self.stride), (self.channels, 1, 1))
        for i, (features, kernel, stride) in enumerate(convs):
            x = nn.relu(_batch_norm(f"bn_{i}")(x))
            if i == 0 and self.projection:
                shortcut = _conv(self.channels, 1, self.stride, "shortcut_conv")(x)
            x = _conv(features, kernel, stride, f"conv_{i}")(x)
        return x + shortcut


class _ResNetModule(nn.Module):
    num_classes: int
    blocks_per_group: tuple[int, ...]
    channels_per_group: tuple[int, ...]
    initial_conv_channels: int
    initial_conv_kernel_size: int
    initial_conv_stride: int
    max_pool: bool
    version: str
    act: Callable

    @nn.compact
    def __call__(self, x):
        v2 = self.version == "v2"
        x = _conv(self.initial_conv_channels, self.initial_conv_kernel_size, self.initial_conv_stride, "initial_conv")(
            x
        )
        if not v2:
            x = self.act(_batch_norm("initial_bn")(x))
        if self.max_pool:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        block = _BottleneckV2 if v2 else _BottleneckV1
        for g, (blocks, channels, stride) in enumerate(
            zip(self.blocks_per_group, self.channels_per_group, GROUP_STRIDES)
        ):
            for b in range(blocks):
                # The reference's blocks use ReLU whatever `act` is; `act` is the stem's (v1)
                # or the final (v2) activation only.
                x = block(channels, stride if b == 0 else 1, projection=b == 0, name=f"group_{g}_block_{b}")(x)
        if v2:
            x = self.act(_batch_norm("final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="logits")(x)  # see draw_kernels


def draw_kernels(key, params, skip=(), stddev_factor: float = 1.0):
    """Every param named "kernel" (except under the top-level modules in `skip`) drawn as
    TruncatedNormal(-2, 2) * stddev_factor / sqrt(fan_in), fan_in = prod(shape[:-1]), all
    from one draw. Factor 1 is haiku's default (the reference ResNet's), 1/0.8796 flax's
    lecun_normal. One draw because XLA compiles each random draw separately (~0.5 s apiece
    on a CPU) and a sampled ResNet has up to ~100 kernels."""
    flat = traverse_util.flatten_dict(params)
    names = [k for k in flat if k[-1] == "kernel" and k[0] not in skip]
    sizes = [flat[k].size for k in names]
    noise = jax.random.truncated_normal(key, -2.0, 2.0, (sum(sizes),), jnp.float32)
    for name, chunk in zip(names, jnp.split(noise, np.cumsum(sizes)[:-1])):
        shape = flat[name].shape
        stddev = stddev_factor / math.sqrt(np.prod(shape[:-1]))
        flat[name] = (chunk.reshape(shape) * stddev).astype(flat[name].dtype)
    return traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class ResNet(common.ImageFamily, TaskFamily):
    """Bottleneck ResNet (4 groups with strides 1, 2, 2, 2; projection shortcut in each
    group's first block; inner convs channels//4) with BatchNorm(decay 0.9, eps 1e-5) whose
    running statistics are the model state; spatial mean; linear logits; softmax CE.

    `version` "v1" is post-activation (the parametric family), "v2" pre-activation (the fixed
    tasks). `activation=None` makes the stem/final activation a per-task random choice.
    `zero_head` zero-initialises the logits weights as the reference does (so every task
    starts at loss log C); False draws them like the other layers."""

    dataset: str
    blocks_per_group: tuple[int, int, int, int]
    channels_per_group: tuple[int, int, int, int]
    batch_size: int = 128
    image_size: int | None = None
    initial_conv_channels: int = 64
    initial_conv_kernel_size: int = 7
    initial_conv_stride: int = 2
    max_pool: bool = True
    version: str = "v1"
    activation: str | None = None
    zero_head: bool = True

    def __post_init__(self):
        if self.version not in ("v1", "v2"):
            raise ValueError(f"version must be 'v1' or 'v2', not {self.version!r}")
        if len(self.blocks_per_group) != 4 or len(self.channels_per_group) != 4:
            raise ValueError("blocks_per_group and channels_per_group need 4 entries")
        if min(self.channels_per_group) < 4:
            raise ValueError("bottleneck blocks need at least 4 channels (inner convs use channels//4)")

    def describe(self) -> str:
        parts = [
            f"ResNet{self.version}_{self.dataset}",
            f"{self.image_size or 'native'}px",
            "blocks" + "x".join(map(str, self.blocks_per_group)),
            "ch" + "x".join(map(str, self.channels_per_group)),
            f"stem{self.initial_conv_channels}k{self.initial_conv_kernel_size}s{self.initial_conv_stride}",
        ]
        parts += ["maxpool"] if self.max_pool else []
        parts += [self.activation or "sampledact", f"bs{self.batch_size}"]
        parts += [] if self.zero_head else ["randhead"]
        return "_".join(parts)

    def sample(self, key):
        return sampling.sample_inner(key, with_activation=self.activation is None, with_initializer=False)

    def _model(self, cfg) -> _ResNetModule:
        return _ResNetModule(
            num_classes=self.num_classes,
            blocks_per_group=tuple(self.blocks_per_group),
            channels_per_group=tuple(self.channels_per_group),
            initial_conv_channels=self.initial_conv_channels,
            initial_conv_kernel_size=self.initial_conv_kernel_size,
            initial_conv_stride=self.initial_conv_stride,
            max_pool=self.max_pool,
            version=self.version,
            act=common.act_fn(self.activation, cfg),
        )

    def init(self, key, cfg):
        return common.compiled_init(self, key, cfg)

    def _init(self, key, cfg):
        x = jnp.zeros((self.batch_size, *common.image_shape(self.dataset, self.image_size)), jnp.float32)
        params, state = common.split_variables(self._model(cfg).init(key, x))
        return draw_kernels(key, params, skip=("logits",) if self.zero_head else ()), state

    def loss(self, params, state, key, batch, cfg):
        del key  # deterministic model
        logits, new_state = self._model(cfg).apply(
            {"params": params, **state}, common.to_float(batch["image"]), mutable=["batch_stats"]
        )
        return common.cross_entropy(logits, batch["label"]), dict(new_state)

    def normalizer(self, loss, cfg=None):
        return common.scaled_ce_normalizer(self.num_classes)(loss)

    def forward_flops(self) -> float:
        """Convolutions and the logits layer (2 * MACs); BatchNorm and pooling are ignored."""
        h, w, c = common.image_shape(self.dataset, self.image_size)
        total = 0.0

        def conv(h, w, cin, cout, kernel, stride):
            h, w = math.ceil(h / stride), math.ceil(w / stride)  # SAME padding
            return 2.0 * self.batch_size * h * w * kernel * kernel * cin * cout, h, w

        flops, h, w = conv(h, w, c, self.initial_conv_channels, self.initial_conv_kernel_size, self.initial_conv_stride)
        total += flops
        if self.max_pool:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        c = self.initial_conv_channels
        for blocks, channels, stride in zip(self.blocks_per_group, self.channels_per_group, GROUP_STRIDES):
            for b in range(blocks):
                s = stride if b == 0 else 1
                inner = channels // 4
                f0, _, _ = conv(h, w, c, inner, 1, 1)
                f1, h2, w2 = conv(h, w, inner, inner, 3, s)
                f2, _, _ = conv(h2, w2, inner, channels, 1, 1)
                fp = conv(h, w, c, channels, 1, s)[0] if b == 0 else 0.0
                total += f0 + f1 + f2 + fp
                h, w, c = h2, w2, channels
        return total + common.dense_flops((c, self.num_classes), self.batch_size)


def sample_resnet(rng: np.random.Generator, datasets: tuple[str, ...] = IMAGE_DATASETS) -> ResNet:
    """The reference's sampler (draw order kept): max_blocks log_int(1,10); 4 x blocks
    log_int(1,max_blocks); channel pattern x log_int(8,256); initial kernel {3,5,7};
    initial channels log_int(8,64); initial stride {1,2} drawn but unused (the reference
    never passes it, so stride 2); max_pool {T,F}; dataset; image log_int(8,64); batch
    log_int(4,256). v1 blocks, sampled activation."""
    max_blocks = sampling.log_int(rng, 1, 10)
    blocks = tuple(sampling.log_int(rng, 1, max_blocks) for _ in range(4))
    pattern = sampling.choice(rng, CHANNEL_PATTERNS)
    width = sampling.log_int(rng, 8, 256)
    kernel = sampling.choice(rng, (3, 5, 7))
    initial_channels = sampling.log_int(rng, 8, 64)
    sampling.choice(rng, (1, 2))  # the unused initial stride: drawn to keep the draw order
    max_pool = sampling.choice(rng, (True, False))
    dataset = sampling.choice(rng, datasets)
    image_size = sampling.log_int(rng, 8, 64)
    batch_size = sampling.log_int(rng, 4, 256)
    return ResNet(
        dataset=dataset,
        blocks_per_group=blocks,
        channels_per_group=tuple(width * p for p in pattern),
        batch_size=batch_size,
        image_size=image_size,
        initial_conv_channels=initial_channels,
        initial_conv_kernel_size=kernel,
        initial_conv_stride=2,
        max_pool=max_pool,
        version="v1",
    )


# (image size, batch, channels, initial kernel, blocks, max_pool) of Resnet_MultiRuntime_i (spec 6.2).
_MULTI_RUNTIME = (
    (16, 64, (8, 16, 16, 16), 3, (1, 1, 1, 1), True),
    (16, 64, (8, 16, 16, 32), 3, (1, 1, 1, 1), True),
    (16, 64, (64, 128, 128, 128), 3, (1, 1, 1, 1), True),
    (16, 192, (64, 128, 256, 512), 5, (1, 1, 1, 1), True),
    (16, 192, (128, 256, 512, 512), 5, (1, 1, 1, 1), True),
    (32, 128, (128, 256, 512, 512), 5, (1, 1, 1, 1), True),
    (32, 256, (128, 256, 512, 512), 3, (1, 1, 1, 1), True),
    (32, 256, (256, 512, 512, 1024), 5, (1, 1, 1, 1), True),
    (64, 256, (256, 512, 1024, 1024), 3, (1, 1, 1, 1), True),
    (64, 256, (256, 512, 1024, 1024), 3, (1, 2, 4, 5), True),
    (64, 256, (256, 512, 1024, 1024), 5, (1, 1, 3, 4), False),
)


def _multi_runtime(size, batch, channels, kernel, blocks, max_pool) -> ResNet:
    # The reference's defaults: 64 initial channels, stride 2, ReLU, zero-initialised logits.
    return ResNet(
        dataset=f"imagenet{size}",
        blocks_per_group=blocks,
        channels_per_group=channels,
        batch_size=batch,
        initial_conv_kernel_size=kernel,
        max_pool=max_pool,
        version="v2",
        activation="relu",
    )


FIXED = {f"Resnet_MultiRuntime_{i}": functools.partial(_multi_runtime, *cfg) for i, cfg in enumerate(_MULTI_RUNTIME)}
