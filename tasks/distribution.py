"""Task distributions a meta-training phase can name itself: which families, the ranges
their configurations are drawn from, which datasets, and a cost budget.

    dist = TaskDistribution(
        families=(FamilyRange("image_mlp", widths=(16, 96)), FamilyRange("image_conv", depths=(1, 2))),
        max_step_mflops=60.0,
        exclude=("ImageMLP_FashionMnist12_Tanh48x48_bs32",),   # fixed tasks never drawn
    )
    family = dist.sample(jax.random.PRNGKey(0))   # an ImageMLP / ImageConv / ImageMLPAE

Every draw is a fixed-architecture family (haiku-default initialisation, a named
activation), so two draws with the same configuration are the same family (equal and
hashable) and compile once. The budget is analytic: FLOPs of one training step
(`TaskFamily.step_flops`, forward + backward) of one task, so it means the same on every
machine; a draw over it (or equal to an excluded fixed task) is redrawn. Unlike VeLO's
phase distributions (`tasks.phases`) nothing is calibrated or timed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.image_conv import ImageConv
from tasks.families.image_mlp import ImageMLP
from tasks.families.image_mlp_ae import ImageMLPAE

KINDS = ("image_mlp", "image_conv", "image_mlp_ae")
_ACTIVATIONS = {name for name, _ in sampling.ACTIVATIONS}


def _log_int(rng: np.random.Generator, low: int, high: int) -> int:
    """An int in [low, high], log-uniform (`sampling.log_int`, the reference's, never draws high)."""
    return min(high, int(np.floor(sampling.log_float(rng, low, high + 1))))


def _check_range(name: str, lo_hi: tuple[int, int], low: int = 1) -> None:
    if len(lo_hi) != 2 or not low <= lo_hi[0] <= lo_hi[1]:
        raise ValueError(f"{name} must be (low, high) with {low} <= low <= high, got {lo_hi}")


@dataclasses.dataclass(frozen=True)
class FamilyRange:
    """One family of a `TaskDistribution` and where its configurations come from.

    Ranges are inclusive (low, high): sizes, widths and batch sizes are log-uniform,
    depths uniform; `image_sizes` is capped at the dataset's native size. `depths` counts
    hidden layers (MLP, autoencoder) or conv layers (ConvNet: the first strides 2, the
    rest 1)."""

    kind: str
    weight: float = 1.0
    datasets: tuple[str, ...] = ("fashion_mnist", "synthetic_shapes")
    image_sizes: tuple[int, int] = (8, 28)
    widths: tuple[int, int] = (16, 128)
    depths: tuple[int, int] = (1, 3)
    batch_sizes: tuple[int, int] = (32, 256)
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")

    def __post_init__(self):
        for name in ("datasets", "image_sizes", "widths", "depths", "batch_sizes", "activations"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON
        if self.kind not in KINDS:
            raise ValueError(f"FamilyRange.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.weight > 0:
            raise ValueError(f"FamilyRange.weight must be > 0, got {self.weight}")
        for dataset in self.datasets:
            common.image_info(dataset)  # raises for unknown or non-image datasets
        if not self.datasets:
            raise ValueError("FamilyRange.datasets must name at least one image dataset")
        unknown = sorted(set(self.activations) - _ACTIVATIONS)
        if unknown or not self.activations:
            raise ValueError(f"unknown activations {unknown}; known: {sorted(_ACTIVATIONS)}")
        _check_range("image_sizes", self.image_sizes, 2)
        _check_range("widths", self.widths)
        _check_range("depths", self.depths, 1 if self.kind == "image_conv" else 0)
        _check_range("batch_sizes", self.batch_sizes)

    def sample(self, rng: np.random.Generator) -> TaskFamily:
        dataset = sampling.choice(rng, self.datasets)
        native = common.image_info(dataset)[0][0]
        size = min(_log_int(rng, *self.image_sizes), native)
        width = _log_int(rng, *self.widths)
        depth = int(rng.integers(self.depths[0], self.depths[1] + 1))
        batch = _log_int(rng, *self.batch_sizes)
        act = sampling.choice(rng, self.activations)
        return build(self.kind, dataset, size, (width,) * depth, act, batch)


def build(kind: str, dataset: str, image_size: int, widths: tuple[int, ...], activation: str, batch_size: int):
    """The family a `FamilyRange` of `kind` draws for this configuration (also how fixed
    tasks of the same distribution are written, e.g. in `tasks.small_fixed`)."""
    kw = dict(batch_size=batch_size, image_size=image_size, activation=activation, sampled_init=False)
    if kind == "image_mlp":
        return ImageMLP(dataset, tuple(widths), **kw)
    if kind == "image_conv":
        return ImageConv(dataset, tuple(widths), **kw)
    if kind == "image_mlp_ae":  # the reference's fixed-task settings: plain MSE to a sigmoid output
        return ImageMLPAE(dataset, tuple(widths), log_loss=False, center_data=False, constrain_output=True,
                          normalizer_type="clip", **kw)  # fmt: skip
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@dataclasses.dataclass(frozen=True)
class TaskDistribution:
    """A weighted mixture of `FamilyRange`s under a per-step cost budget.

    Attributes:
      families: the families and their ranges (weights need not sum to 1).
      max_step_mflops: FLOPs of one training step of one task, in millions, at most.
      exclude: fixed-task names (`tasks.get`) that are never drawn (validation and
        held-out evaluation tasks).
      max_attempts: draws before giving up on the budget (a config error, raised).
    """

    families: tuple[FamilyRange, ...]
    max_step_mflops: float = 100.0
    exclude: tuple[str, ...] = ()
    max_attempts: int = 1000

    def __post_init__(self):
        families = tuple(f if isinstance(f, FamilyRange) else FamilyRange(**f) for f in self.families)
        object.__setattr__(self, "families", families)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not families:
            raise ValueError("a TaskDistribution needs at least one FamilyRange")
        if not self.max_step_mflops > 0:
            raise ValueError(f"max_step_mflops must be > 0, got {self.max_step_mflops}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskDistribution:
        return cls(**d)

    def excluded_families(self) -> frozenset:
        from tasks import registry  # the registry imports the fixed tasks written with `build`

        return frozenset(registry.get(name) for name in self.exclude)

    def sample(self, key: jax.Array) -> TaskFamily:
        """One family, reproducible from `key`: a family by weight, then a configuration
        under the budget that is not an excluded task."""
        rng = sampling.rng_from_key(key)
        weights = np.asarray([f.weight for f in self.families], np.float64)
        excluded = self.excluded_families()
        for _ in range(self.max_attempts):
            family_range = self.families[int(rng.choice(len(self.families), p=weights / weights.sum()))]
            family = family_range.sample(rng)
            if family.step_flops() <= self.max_step_mflops * 1e6 and family not in excluded:
                return family
        raise ValueError(
            f"no task under max_step_mflops={self.max_step_mflops} in {self.max_attempts} draws: "
            "raise the budget or shrink the ranges"
        )
