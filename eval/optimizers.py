"""Optimizers under evaluation, as hashable factories `spec(h, num_steps) -> optax transform`
where h is the grid hyperparameter (the learning rate; ignored by VeLO).

    spec = optimizers.parse("adam")           # any optax alias taking a learning rate
    spec = optimizers.parse("velo", weights="runs/tiny")   # a meta_train workdir, a weights file, or None
    spec.grid                                 # learning rates to tune over ((0.0,) for VeLO)

Hand-designed competitors with schedules: "adamw_cosine" (AdamW, cosine decay to 0 over
the run), "sgd_momentum" (momentum 0.9), "adam_ref" (the reference's baseline Adam:
eps_root 1e-8).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from meta_train import workdir
from velojax import optimizer as velo_optimizer
from velojax.config import VeLOConfig

#: The reference's Adam sweep: {1e-7, 3e-7, ..., 3e-1, 1} (spec §6.3).
REFERENCE_LRS = tuple(float(f"{m}e{e}") for e in range(-7, 0) for m in (1, 3)) + (1.0,)
#: The default grid for tuned competitors: 1e-4 ... 1e-1 in half-decades.
COMPETITOR_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
_SCHEDULED = {
    "adam_ref": lambda lr, n: optax.adam(lr, eps_root=1e-8),
    "adamw_cosine": lambda lr, n: optax.adamw(optax.cosine_decay_schedule(lr, max(n, 1))),
    "sgd_momentum": lambda lr, n: optax.sgd(lr, momentum=0.9),
}


@dataclasses.dataclass(frozen=True)
class OptaxSpec:
    """`optax.<alias>(learning_rate)` (or a scheduled competitor), tuned over `grid`."""

    alias: str
    grid: tuple[float, ...] = COMPETITOR_LRS

    def __post_init__(self):
        if self.alias not in _SCHEDULED and not callable(getattr(optax, self.alias, None)):
            raise ValueError(
                f"unknown optimizer {self.alias!r}: not an optax alias nor one of {', '.join(sorted(_SCHEDULED))}"
            )
        if not self.grid or any(not np.isfinite(h) or h <= 0 for h in self.grid):
            raise ValueError(f"{self.alias}: the learning-rate grid must be positive numbers, got {self.grid}")

    @property
    def label(self) -> str:
        return self.alias

    def __call__(self, h: jax.Array, num_steps: int) -> optax.GradientTransformation:
        if self.alias in _SCHEDULED:
            return _SCHEDULED[self.alias](h, num_steps)
        return getattr(optax, self.alias)(h)


@dataclasses.dataclass(frozen=True)
class VeLOSpec:
    """VeLO with the given meta-parameters; `num_steps` = the run length. Compared and
    hashed by `source` (a path or "pretrained") and a fingerprint of the weights."""

    source: str
    fingerprint: str
    weights: Any = dataclasses.field(compare=False, hash=False, repr=False, default=None)
    config: VeLOConfig | None = dataclasses.field(compare=False, hash=False, repr=False, default=None)
    label: str = "velo"
    grid: tuple[float, ...] = (0.0,)

    def __call__(self, h: jax.Array, num_steps: int) -> optax.GradientTransformation:
        del h
        return velo_optimizer.velo(num_steps, weights=self.weights, config=self.config)


def velo(weights: str | Path | None = None, label: str = "velo", step: int | None = None) -> VeLOSpec:
    """VeLO from shipped weights by name, a weights file or its directory, a meta_train
    workdir (`meta_train.workdir.weights`: the best θ by validation, else the final, else
    the newest checkpoint's; or the checkpoint of `step`), or the official pretrained weights."""
    if step is not None and not (weights is not None and workdir.is_workdir(weights)):
        raise ValueError("a step applies to a meta_train workdir only")
    if weights is None:
        meta, config = velo_optimizer.resolve_weights(None)
        source = "pretrained"
    elif str(weights) in velo_optimizer.available_weights():
        meta, config = velo_optimizer.resolve_weights(str(weights))
        source = f"shipped:{weights}"
    elif workdir.is_workdir(weights):
        meta, config, chosen = workdir.weights(weights, step)
        source = chosen.describe()
    else:
        if not Path(weights).exists():
            raise FileNotFoundError(
                f"no VeLO weights at {weights} (expected a shipped name, a weights file, its directory, or a workdir)"
            )
        meta, config = velo_optimizer.resolve_weights(str(weights))
        source = str(weights)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(meta):
        digest.update(np.asarray(leaf).tobytes())
    return VeLOSpec(source, digest.hexdigest()[:16], meta, config, label)


def parse(
    name: str, *, weights: str | Path | None = None, grid: tuple[float, ...] | None = None, step: int | None = None
):
    """ "velo" (with `weights`, and `step` for a workdir) or an optax alias / scheduled
    competitor (with `grid`)."""
    if name == "velo":
        return velo(weights, step=step)
    if weights is not None or step is not None:
        raise ValueError(f"--weights and --step apply to velo only, not {name!r}")
    return OptaxSpec(name, tuple(grid) if grid else COMPETITOR_LRS)
