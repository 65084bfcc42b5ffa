"""Meta-training configuration: plain frozen dataclasses, JSON round trip, CLI overrides."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from velojax.config import VELO, VeLOConfig

ESTIMATORS = ("full_es", "pes")


@dataclasses.dataclass(frozen=True)
class Phase:
    """One curriculum phase: `steps` outer steps, rollout lengths ~ LogUniform[min, max],
    and the tasks. Tasks are either fixed tasks by name (`tasks`) or a `tasks.phases`
    distribution (`distribution` = 1 or 2, cost-filtered by its `max_time` budgets).
    A pool of `pool_size` families (the tasks, or draws from the distribution) is
    redrawn every `resample_every` outer steps; each estimate uses one family of the pool.
    `offline` replaces every dataset by offline ones; `batch_size` overrides the tasks'."""

    steps: int
    min_length: int
    max_length: int
    tasks: tuple[str, ...] = ()
    distribution: int | None = None
    offline: bool = False
    batch_size: int | None = None
    pool_size: int = 8
    resample_every: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if bool(self.tasks) == (self.distribution is not None):
            raise ValueError("a Phase needs exactly one of `tasks` (fixed-task names) or `distribution` (1 or 2)")
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
    clipped gradients; a non-finite gradient is skipped (and counted), never applied."""

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
    clip: float = 3.0
    accumulate: int = 1
    eps_root: float = 1e-8
    seed: int = 0
    checkpoint_every: int = 25
    keep_checkpoints: int = 3
    eval_pairs: int = 8  # held-out tasks evaluated before and after (0: none)
    eval_length: int | None = None  # default: the first phase's max_length

    def __post_init__(self):
        object.__setattr__(self, "phases", tuple(self.phases))
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
