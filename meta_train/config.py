"""Meta-training configuration: plain frozen dataclasses, JSON round trip, CLI overrides.

The estimator is a nested config, `FullESConfig` or `PESConfig`, holding every field of
its estimator; `build(network, phase)` makes the estimator for a curriculum phase.
`config.json` files carry `format` (`CONFIG_FORMAT`); files of format 1 (the estimator's
fields flat in the config, written before the named key streams) are migrated on load.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, ClassVar, Union

from meta_train.estimators import FullES
from meta_train.learned_optimizer import VeLONetwork
from meta_train.pes import TruncatedPES
from tasks.distribution import TaskDistribution
from velojax.config import VELO, VeLOConfig

INITS = ("random", "hand_designed", "scheduled")
# 2: the nested estimator config and the named key streams (tasks.key_streams).
CONFIG_FORMAT = 2


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
class FullESConfig:
    """`meta_train.estimators.FullES` over full rollouts of the phase's lengths (see there
    for every field). Validated on construction by building the estimator."""

    kind: ClassVar[str] = "full_es"
    persistent: ClassVar[bool] = False  # every estimate starts its rollouts afresh
    num_pairs: int = 8
    std: float = 0.01
    chunk: int = 10
    length_multiple: int | None = None  # rollout lengths: multiples of it (default: chunk)
    loss_type: str = "last_recompute"
    recompute_batches: int = 10
    recompute_split: str = "train"
    sign_delta: float | None = 1.0

    def __post_init__(self):
        self.build(None, Phase(steps=1, min_length=1, max_length=1, tasks=("-",)))

    def build(self, network: VeLOConfig | None, phase: Phase) -> FullES:
        """The estimator for `phase` (rollouts of LogUniform[min_length, max_length] steps)."""
        return FullES(VeLONetwork(network), min_length=phase.min_length, max_length=phase.max_length,
                      **_fields(self))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PESConfig:
    """`meta_train.pes.TruncatedPES`: persistent episodes of the phase's lengths,
    `trunc_length` inner steps per estimate, the average training loss as meta-loss (see
    there for every field). Validated on construction by building the estimator."""

    kind: ClassVar[str] = "pes"
    # the inner runs persist across outer steps (in the train state and its checkpoints),
    # so an estimate keeps its family for a resampling epoch
    persistent: ClassVar[bool] = True
    num_pairs: int = 8
    std: float = 0.01
    trunc_length: int = 50
    chunk: int = 10
    sign_delta: float | None = None
    random_offset: bool = True
    reference_attribution: bool = False

    def __post_init__(self):
        self.build(None, Phase(steps=1, min_length=1, max_length=1, tasks=("-",)))

    def build(self, network: VeLOConfig | None, phase: Phase) -> TruncatedPES:
        """The estimator for `phase` (episodes of LogUniform[min_length, max_length] steps)."""
        return TruncatedPES(VeLONetwork(network), min_length=phase.min_length, max_length=phase.max_length,
                            **_fields(self))  # fmt: skip


EstimatorConfig = Union[FullESConfig, PESConfig]  # noqa: UP007 (a runtime value: a field's annotation)
ESTIMATORS = {c.kind: c for c in (FullESConfig, PESConfig)}


def _fields(config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """Everything a meta-training run depends on (the run is a function of it).

    Network: VeLO's architecture at `lstm_hidden_size` x `param_inits` (512 x 256 is
    VeLO). Estimator: `estimator`, a `FullESConfig` or a `PESConfig` (its `num_pairs`
    antithetic pairs), with `estimates_per_step` estimates averaged per outer step.
    Meta-optimizer (reference spec §4.1): element-wise clip to ±`clip`, then
    Adam(`meta_lr`, eps_root) stepping every `accumulate` outer steps on the mean of the
    clipped gradients, with the learning rate cosine-decayed to `meta_lr_final_fraction`
    of `meta_lr` over the run (1.0: constant); a non-finite gradient is skipped (and
    counted), never applied.

    Initial θ (`init`): "random" (the reference's initialisation), "hand_designed"
    (`velojax.meta_params.hand_designed_meta_params(lr_mult=init_lr_mult)`) or
    "scheduled" (`scheduled_meta_params(lr_mult=init_lr_mult, decay=init_decay)`, its
    other parts at `init_noise` x the random initialisation). `--init-theta` on the CLI overrides it.

    Evaluation (before the first and after the last step): θ's normalised final loss
    (`last_recompute` over `eval_recompute_batches` batches, no perturbation) on
    `eval_pairs` held-out tasks of the first phase's first family, at exactly `eval_length`
    steps (default max_length, which FullES's rollouts all but never reach: their lengths
    are drawn LogUniform in [min, max] and rounded down to a multiple of the chunk).
    Validation: every `validate_every` outer steps (and before the first and after the
    last), the same loss on each `validation` entry (fixed-task name, rollout length),
    `validation_seeds` task seeds each; the mean is logged as `val_meta_loss` and the best
    θ by it is kept (`best_theta/`). The tasks should never be in a training pool (list
    them in the custom distributions' `exclude`)."""

    name: str
    phases: tuple[Phase, ...]
    lstm_hidden_size: int = VELO.lstm_hidden_size
    param_inits: int = VELO.param_inits
    estimator: EstimatorConfig = FullESConfig()
    estimates_per_step: int = 1
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
    eval_recompute_batches: int = 100  # batches of the final loss in evaluation and validation
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
        if not isinstance(self.estimator, (FullESConfig, PESConfig)):
            raise TypeError(
                f"estimator must be a FullESConfig or a PESConfig, got {self.estimator!r} "
                "(on the command line: estimator=full_es or estimator=pes, then estimator.FIELD=VALUE)"
            )
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
        names = ("estimates_per_step", "accumulate", "checkpoint_every", "keep_checkpoints", "eval_recompute_batches")
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def num_pairs(self) -> int:
        """The estimator's antithetic pairs per estimate."""
        return self.estimator.num_pairs

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
        d = dataclasses.asdict(self)
        d["estimator"] = {"kind": self.estimator.kind, **d["estimator"]}
        return {"format": CONFIG_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        """The config of `to_dict`'s output; a format-1 dict is migrated (`migrate`)."""
        d = dict(d)
        fmt = d.pop("format", 1)
        if fmt == 1:
            d = migrate(d)
        elif fmt != CONFIG_FORMAT:
            raise ValueError(f"config format {fmt} is newer than this velojax's ({CONFIG_FORMAT}); upgrade velojax")
        d["phases"] = tuple(Phase(**p) for p in d["phases"])
        estimator = dict(d["estimator"])
        kind = estimator.pop("kind")
        if kind not in ESTIMATORS:
            raise ValueError(f"unknown estimator kind {kind!r}; known: {', '.join(ESTIMATORS)}")
        d["estimator"] = ESTIMATORS[kind](**estimator)
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MetaTrainConfig:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, overrides: list[str]) -> MetaTrainConfig:
        """Apply `field=value` strings, parsed by field type: top-level fields;
        `estimator=full_es|pes` (a new estimator config of that kind, keeping the fields
        the two share: num_pairs, std, chunk, sign_delta), then `estimator.FIELD=value`;
        and, for the names in `PHASE_OVERRIDES`, that field of every phase
        (`steps=N` sets every phase's steps to N)."""
        changes, phase_changes, estimator_changes = {}, {}, {}
        estimator = self.estimator
        fields = {f.name: f for f in dataclasses.fields(self)}
        for item in overrides:
            name, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not of the form field=value")
            sub = name.removeprefix("estimator.")
            if name == "estimator":
                if raw not in ESTIMATORS:
                    raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {raw!r}")
                kind = ESTIMATORS[raw]
                shared = {f.name for f in dataclasses.fields(kind)} & set(_fields(estimator))
                estimator = kind(**{k: v for k, v in _fields(estimator).items() if k in shared})
            elif name != sub:
                estimator_changes[sub] = raw
            elif name in PHASE_OVERRIDES:
                phase_changes[name] = _parse(raw, int)
            elif name in fields and name != "phases":
                changes[name] = _parse(raw, _field_type(type(self), name))
            else:
                for kind in ESTIMATORS.values():
                    if name in {f.name for f in dataclasses.fields(kind)}:
                        raise ValueError(f"{name!r} is a field of the estimator: write estimator.{name}={raw}")
                known = sorted([n for n in fields if n != "phases"] + list(PHASE_OVERRIDES))
                raise ValueError(f"unknown config field {name!r}; known: {', '.join(known)}, estimator.FIELD")
        own = {f.name for f in dataclasses.fields(estimator)}
        for sub in estimator_changes:
            if sub not in own:
                raise ValueError(
                    f"{type(estimator).__name__} has no field {sub!r}; its fields: {', '.join(sorted(own))}"
                )
        parsed = {sub: _parse(raw, _field_type(type(estimator), sub)) for sub, raw in estimator_changes.items()}
        estimator = dataclasses.replace(estimator, **parsed)
        phases = tuple(dataclasses.replace(p, **phase_changes) for p in self.phases)
        return dataclasses.replace(self, phases=phases, estimator=estimator, **changes)


# Phase fields that `with_overrides` sets in every phase.
PHASE_OVERRIDES = ("steps", "min_length", "max_length", "pool_size", "batch_size", "resample_every")

# Format 1 kept the estimator's fields flat in the config (and `estimator` a name): those
# fields with their format-1 defaults.
_FLAT_ESTIMATOR_DEFAULTS = {"num_pairs": 8, "std": 0.01, "chunk": 10, "length_multiple": None,
                            "loss_type": "last_recompute", "recompute_batches": 100, "sign_delta": 1.0,
                            "trunc_length": 50}  # fmt: skip


def migrate(old: dict[str, Any]) -> dict[str, Any]:
    """A format-1 config dict as a format-2 one: the flat estimator fields (with their
    format-1 defaults where absent) go into the nested estimator of kind `estimator`
    ("full_es" if absent), keeping the fields that kind has; `recompute_batches` also sets
    `eval_recompute_batches` (format 1 evaluated with the training setting)."""
    d = dict(old)
    kind = d.pop("estimator", "full_es")
    flat = {name: d.pop(name, default) for name, default in _FLAT_ESTIMATOR_DEFAULTS.items()}
    own = {f.name for f in dataclasses.fields(ESTIMATORS[kind])}
    d["estimator"] = {"kind": kind, **{k: v for k, v in flat.items() if k in own}}
    d["eval_recompute_batches"] = flat["recompute_batches"]
    return d


def _field_type(cls: type, name: str) -> type:
    """The type a CLI value of field `name` parses to: its annotation, without `| None`."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    return hint if isinstance(hint, type) else str


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
