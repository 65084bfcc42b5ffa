"""Meta-training configuration: plain frozen dataclasses, JSON round trip, CLI overrides."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tasks.distribution import TaskDistribution
from velojax.config import VELO, VeLOConfig

ESTIMATORS = ("full_es", "pes")
INITS = ("random", "hand_designed", "scheduled")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One curriculum phase: `steps` outer steps, rollout lengths ~ LogUniform[min, max],
    and the tasks. Tasks are fixed tasks by name (`tasks`), a VeLO phase distribution of
    `tasks.phases` (`distribution` = 1 or 2, cost-filtered by its `max_time` budgets), or
    the phase's own `tasks.distribution.TaskDistribution` (`custom`: families, ranges,
    datasets, a FLOPs budget, excluded fixed tasks).
    A pool of `pool_size` families (the tasks, or draws from the distribution) is
    redrawn every `resample_every` outer steps; each estimate uses one family of the pool.
    `offline` replaces every dataset by offline ones; `batch_size` overrides the tasks'."""

    steps: int
    min_length: int
    max_length: int
    tasks: tuple[str, ...] = ()
    distribution: int | None = None
    custom: TaskDistribution | None = None
    offline: bool = False
    batch_size: int | None = None
    pool_size: int = 8
    resample_every: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if isinstance(self.custom, dict):  # from JSON
            object.__setattr__(self, "custom", TaskDistribution.from_dict(self.custom))
        if sum((bool(self.tasks), self.distribution is not None, self.custom is not None)) != 1:
            raise ValueError(
                "a Phase needs exactly one of `tasks` (fixed-task names), `distribution` (1 or 2) "
                "or `custom` (a tasks.distribution.TaskDistribution)"
            )
        if self.steps < 1 or self.pool_size < 1 or self.resample_every < 1:
            raise ValueError("steps, pool_size and resample_every must be >= 1")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}")


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """Everything a meta-training run depends on (the run is a function of it).

    Network: VeLO's architecture at `lstm_hidden_size` x `param_inits` (512 x 256 is
    VeLO). Estimator: `estimator` = "full_es" (FullES, rollouts of the phase's lengths,
    `loss_type`) or "pes" (TruncatedPES: persistent episodes of the phase's lengths,
    `trunc_length` steps per estimate, average training loss), with `num_pairs`
    antithetic pairs per estimate and `estimates_per_step` estimates averaged per outer
    step. Meta-optimizer (reference spec §4.1): element-wise clip to ±`clip`, then
    Adam(`meta_lr`, eps_root) stepping every `accumulate` outer steps on the mean of the
    clipped gradients, with the learning rate cosine-decayed to `meta_lr_final_fraction`
    of `meta_lr` over the run (1.0: constant); a non-finite gradient is skipped (and
    counted), never applied.

    Initial θ (`init`): "random" (the reference's initialisation), "hand_designed"
    (`velojax.meta_params.hand_designed_meta_params(lr_mult=init_lr_mult)`) or
    "scheduled" (`scheduled_meta_params(lr_mult=init_lr_mult, decay=init_decay)`, its
    other parts at `init_noise` x the random initialisation). `--init-theta` on the CLI overrides it.

    Validation: every `validate_every` outer steps (and before the first and after the
    last), θ's normalised final loss (`last_recompute`) on each `validation` entry
    (fixed-task name, rollout length), `validation_seeds` task seeds each; the mean is
    logged as `val_meta_loss` and the best θ by it is kept (`best_theta/`). The tasks
    should never be in a training pool (list them in the custom distributions'
    `exclude`)."""

    name: str
    phases: tuple[Phase, ...]
    lstm_hidden_size: int = VELO.lstm_hidden_size
    param_inits: int = VELO.param_inits
    num_pairs: int = 8
    estimates_per_step: int = 1
    std: float = 0.01
    chunk: int = 10
    length_multiple: int | None = None  # FullES rollout lengths: multiples of it (default: chunk)
    loss_type: str = "last_recompute"
    recompute_batches: int = 100
    sign_delta: float | None = 1.0
    estimator: str = "full_es"
    trunc_length: int = 50  # PES: inner steps per estimate (a multiple of chunk)
    meta_lr: float = 3e-4
    meta_lr_final_fraction: float = 1.0
    clip: float = 3.0
    accumulate: int = 1
    eps_root: float = 1e-8
    seed: int = 0
    checkpoint_every: int = 25
    keep_checkpoints: int = 3
    eval_pairs: int = 8  # held-out tasks evaluated before and after (0: none)
    eval_length: int | None = None  # default: the first phase's max_length
    init: str = "random"
    init_lr_mult: float = 10.0
    init_noise: float = 0.1
    init_decay: float = 0.0
    validation: tuple[tuple[str, int], ...] = ()
    validate_every: int = 0  # 0: only before the first and after the last step
    validation_seeds: int = 2

    def __post_init__(self):
        object.__setattr__(self, "phases", tuple(self.phases))
        object.__setattr__(self, "validation", tuple((str(t), int(n)) for t, n in self.validation))
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.validate_every < 0 or self.validation_seeds < 1:
            raise ValueError("validate_every must be >= 0 and validation_seeds >= 1")
        if any(n < 1 for _, n in self.validation):
            raise ValueError(f"validation lengths must be >= 1, got {self.validation}")
        if not 0.0 <= self.meta_lr_final_fraction <= 1.0:
            raise ValueError(f"meta_lr_final_fraction must be in [0, 1], got {self.meta_lr_final_fraction}")
        if not self.phases:
            raise ValueError("a MetaTrainConfig needs at least one Phase")
        for name in ("num_pairs", "estimates_per_step", "accumulate", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.length_multiple is not None and not (
            self.length_multiple >= 1 and self.chunk % self.length_multiple == 0
        ):
            raise ValueError(f"length_multiple ({self.length_multiple}) must be >= 1 and divide chunk ({self.chunk})")
        if self.estimator == "pes" and (self.trunc_length < 1 or self.trunc_length % self.chunk):
            raise ValueError(f"trunc_length ({self.trunc_length}) must be a positive multiple of chunk ({self.chunk})")

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def network(self) -> VeLOConfig:
        if (self.lstm_hidden_size, self.param_inits) == (VELO.lstm_hidden_size, VELO.param_inits):
            return VELO
        return VeLOConfig.small(self.lstm_hidden_size, self.param_inits)

    def phase_at(self, step: int) -> tuple[int, Phase]:
        """(index, phase) of outer step `step` (0-based); the last phase past the end."""
        end = 0
        for i, phase in enumerate(self.phases):
            end += phase.steps
            if step < end:
                return i, phase
        return len(self.phases) - 1, self.phases[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        d = dict(d)
        d["phases"] = tuple(Phase(**p) for p in d["phases"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MetaTrainConfig:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, overrides: list[str]) -> MetaTrainConfig:
        """Apply `field=value` strings to top-level fields, or to every phase's field for
        the names in `PHASE_OVERRIDES` (`steps=N` sets every phase's steps to N), parsed
        by field type."""
        changes, phase_changes = {}, {}
        fields = {f.name: f for f in dataclasses.fields(self)}
        for item in overrides:
            name, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not of the form field=value")
            if name in PHASE_OVERRIDES:
                phase_changes[name] = _parse(raw, int)
            elif name in fields and name != "phases":
                current = getattr(self, name)
                changes[name] = _parse(raw, type(current) if current is not None else float)
            else:
                known = sorted([n for n in fields if n != "phases"] + list(PHASE_OVERRIDES))
                raise ValueError(f"unknown config field {name!r}; known: {', '.join(known)}")
        phases = tuple(dataclasses.replace(p, **phase_changes) for p in self.phases)
        return dataclasses.replace(self, phases=phases, **changes)


# Phase fields that `with_overrides` sets in every phase.
PHASE_OVERRIDES = ("steps", "min_length", "max_length", "pool_size", "batch_size", "resample_every")


def _parse(raw: str, kind: type):
    if raw.lower() == "none":
        return None
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"not a boolean: {raw!r}")
        return raw.lower() in ("true", "1")
    if kind is int:
        return int(float(raw)) if "e" in raw.lower() else int(raw)
    return kind(raw)
