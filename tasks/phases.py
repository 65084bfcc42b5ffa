"""The meta-training task distributions of VeLO's phases (reference spec sections 4.2 and
5.1): a step-time budget, a base family, a configuration under that budget (rejection
sampling with `tasks.cost`), then a random stack of augmentations. Reproducible from one
key; no model is built and no data is loaded.

    task = phases.sample_task(jax.random.PRNGKey(0), phase=1)
    task.family          # the augmented TaskFamily
    task.max_time, task.seconds, task.base_kind, task.augmentations
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping

import jax
import numpy as np

from tasks import augmentations as aug
from tasks import cost, sampling
from tasks.base import TaskFamily

# (budget in seconds per inner step of 8 vmapped tasks, weight). Phase 1's weights sum to
# 1.1 in the reference; they are normalised, as jax.random.choice did there.
BUDGETS = {
    1: ((2e-5, 0.65), (1e-4, 0.3), (4e-4, 0.1), (1e-3, 0.05)),
    2: ((1e-4, 0.4), (4e-4, 0.2), (1e-3, 0.2), (3e-3, 0.2)),
}
SMALL_FAMILIES = ("image_mlp", "image_conv", "image_mlp_ae", "image_mlp_vae", "vit")
LARGE_FAMILIES = ("rnn_lm", "transformer_lm", "resnet", "lopt")
LARGE_FROM = 1e-4  # the large families open at this budget

# family kind -> (module, sampler, kind of data it takes)
SAMPLERS = {
    "image_mlp": ("image_mlp", "sample_image_mlp", "image"),
    "image_conv": ("image_conv", "sample_image_conv", "image"),
    "image_mlp_ae": ("image_mlp_ae", "sample_image_mlp_ae", "image"),
    "image_mlp_vae": ("image_mlp_vae", "sample_image_mlp_vae", "image"),
    "vit": ("vit", "sample_vit", "image"),
    "resnet": ("resnet", "sample_resnet", "image"),
    "rnn_lm": ("rnn_lm", "sample_rnn_lm", "text"),
    "transformer_lm": ("transformer_lm", "sample_transformer_lm", "text"),
    "lopt": ("lopt", "sample_lopt", "image"),
    "mlp_mixer": ("mlp_mixer", "sample_mlp_mixer", "image"),
}


#: Datasets for the samplers that need no download: real Fashion-MNIST (the Debian package's
#: copy), procedural images, the Python standard library's source as bytes or words.
OFFLINE_DATASETS = {"image": ("fashion_mnist_local", "synthetic_shapes"), "text": ("pystdlib_bytes", "pystdlib_words")}


def family_sampler(kind: str, datasets: Mapping[str, tuple[str, ...]] | None = None) -> Callable:
    """The config sampler of a family kind, optionally with other datasets
    (datasets={"image": (...), "text": (...)})."""
    module, name, data_kind = SAMPLERS[kind]
    fn = getattr(importlib.import_module(f"tasks.families.{module}"), name)
    if datasets and data_kind in datasets:
        return lambda rng: fn(rng, datasets=tuple(datasets[data_kind]))
    return fn


@dataclasses.dataclass(frozen=True)
class SampledTask:
    family: TaskFamily  # the base family with its augmentations
    base_kind: str
    max_time: float
    seconds: float  # the cost model's prediction for the base family
    augmentations: tuple[str, ...]


def sample_augmentations(rng: np.random.Generator, family: TaskFamily, is_lopt: bool) -> TaskFamily:
    """The reference's random augmentation stack, innermost first, in its draw order:
    reparam, ES, reduced batch (not for LOpt tasks), bf16, gradient normalisation,
    subsampled directions, asynchronous delay."""
    level = sampling.choice(rng, (None, None, "global", "global", "tensor", "tensor", "parameter"))
    if level is not None:
        scale_range = sampling.choice(rng, ((1e-3, 1e3), (1e-2, 1e2), (0.1, 10.0)))
        family = aug.reparam_weights(family, level, scale_range)
    if rng.uniform() < 0.08:
        std = sampling.log_float(rng, 0.001, 0.1)
        family = aug.es_gradient(family, std, sampling.choice(rng, (1, 2, 4, 8, 16)))
    if not is_lopt and rng.uniform() < 0.2:  # no draw at all for LOpt tasks, as in the reference
        family = aug.reduced_batch(family, rng.uniform(0.01, 1.0))
    if rng.uniform() < 0.2:
        family = aug.bfloat16(family)
    if rng.uniform() < 0.05:
        family = aug.normalize_gradient(family)
    if rng.uniform() < 0.08:
        # the reference passes this float to a key split; we take its integer part
        directions = int(sampling.log_float(rng, 1.0, 1024.0))
        family = aug.subsample_directions(family, directions, bool(rng.integers(2)))
    if rng.uniform() < 0.05:
        # the reference's buffer gives an effective delay of D - 1 (1 for D = 1): kept
        drawn = sampling.log_int(rng, 1, 8)
        family = aug.delayed_gradients(family, max(1, drawn - 1))
    return family


def sample_task(
    key: jax.Array,
    phase: int = 1,
    cost_model: cost.CostModel = cost.REFERENCE,
    datasets: Mapping[str, tuple[str, ...]] | None = None,
    kinds: tuple[str, ...] | None = None,
    max_attempts: int = 512,
) -> SampledTask:
    """One task of phase 1 or 2. `datasets` replaces the datasets the samplers draw from
    (e.g. offline ones); `kinds` restricts the families (default: the phase's). A family
    whose configs all exceed the budget after `max_attempts` is redrawn."""
    if phase not in BUDGETS:
        raise ValueError(f"phase must be one of {sorted(BUDGETS)}, got {phase}")
    rng = sampling.rng_from_key(key)
    budgets, weights = zip(*BUDGETS[phase])
    max_time = float(budgets[rng.choice(len(budgets), p=np.asarray(weights) / sum(weights))])
    open_kinds = SMALL_FAMILIES + (LARGE_FAMILIES if phase > 1 or max_time >= LARGE_FROM else ())
    if kinds is not None:
        open_kinds = tuple(k for k in open_kinds if k in kinds) or tuple(kinds)
    while True:
        kind = sampling.choice(rng, open_kinds)
        found = cost.rejection_sample(family_sampler(kind, datasets), rng, max_time, cost_model, max_attempts)
        if found is not None:
            break
    base, seconds = found
    family = sample_augmentations(rng, base, kind == "lopt")
    tags = tuple(family.augmentations()) if isinstance(family, aug.Augmented) else ()
    return SampledTask(family=family, base_kind=kind, max_time=max_time, seconds=seconds, augmentations=tags)


def calibration_families(per_kind: int = 3, max_time: float = 1e-4, seed: int = 0) -> list[TaskFamily]:
    """`per_kind` configurations of every family kind on offline data, under `max_time`
    reference seconds (quick to time, varied enough to fit `cost.calibrate`)."""
    rng = np.random.default_rng(seed)
    families = []
    for kind in SMALL_FAMILIES + LARGE_FAMILIES:
        for _ in range(per_kind):
            found = cost.rejection_sample(family_sampler(kind, OFFLINE_DATASETS), rng, max_time, cost.REFERENCE)
            if found is not None:
                families.append(found[0])
    return families
