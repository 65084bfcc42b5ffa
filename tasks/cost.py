"""Problem-size control (reference spec section 4.3): a cost model that predicts the
seconds per inner training step of `num_tasks` vmapped tasks, and rejection sampling of
configurations under a `max_time` budget.

The reference predicted TPUv4 time with learned timing models that are not public. Here
the prediction is linear in analytic features of a family, which need no model building
(thousands of samples per second):

    seconds = overhead + per_flop[kind] * n * step_flops + per_byte * n * batch_bytes
              + per_sequential_step * sequential_steps

with n = num_tasks and a FLOP cost per family kind (convolutions, recurrences and dense
layers run at very different rates on a CPU).

`REFERENCE` fixes the coefficients to an assumed TPUv4-like device so that the
reference's budgets (2e-5 ... 3e-3 s) select problem sizes of the same order as VeLO's
distribution; `calibrate()` fits them to this machine by timing a few tasks (the
reference's `unroll_8x10` measurement: 8 vmapped tasks, SGD, 10-step unrolls), cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import rollout
from tasks.base import TaskFamily
from tasks.key_streams import root, streams
from velojax.files import cache_dir, write_atomic


def batch_bytes(family: TaskFamily) -> int:
    return int(sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(family.batch_spec())))


def family_kind(family: TaskFamily) -> str:
    """The class name of the un-augmented family (e.g. "ImageConv")."""
    base = family.base() if hasattr(family, "base") else family
    return type(base).__name__


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Linear step-time model (see module doc). `per_flop` maps a family kind to its
    seconds per FLOP, with `default_per_flop` for kinds it does not list."""

    overhead: float
    default_per_flop: float
    per_byte: float
    per_sequential_step: float = 0.0
    per_flop: tuple[tuple[str, float], ...] = ()
    num_tasks: int = 8
    device: str = ""

    def seconds(self, family: TaskFamily) -> float:
        """Predicted seconds per inner step of `num_tasks` vmapped tasks of `family`."""
        n = self.num_tasks
        rate = dict(self.per_flop).get(family_kind(family), self.default_per_flop)
        return (
            self.overhead
            + rate * n * family.step_flops()
            + self.per_byte * n * batch_bytes(family)
            + self.per_sequential_step * family.sequential_steps()
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CostModel:
        data = json.loads(text)
        data["per_flop"] = tuple((k, float(v)) for k, v in data.get("per_flop", ()))
        return cls(**data)


# An assumed TPUv4-like device (reference budgets): ~5 us per step of fixed overhead,
# 20 TFLOP/s effective on these small problems for every kind of layer, 100 GB/s for input
# data, 0.1 us per sequential step. The reference's learned timing models are not public;
# these constants are this project's choice.
REFERENCE = CostModel(
    overhead=5e-6,
    default_per_flop=1 / 2e13,
    per_byte=1 / 1e11,
    per_sequential_step=1e-7,
    device="reference TPUv4 (assumed)",
)


def rejection_sample(
    sample_config: Callable[[np.random.Generator], TaskFamily],
    rng: np.random.Generator,
    max_time: float,
    cost_model: CostModel = REFERENCE,
    max_attempts: int = 512,
) -> tuple[TaskFamily, float] | None:
    """The first config whose predicted step time is within `max_time`, and that time; None
    after `max_attempts` rejections."""
    for _ in range(max_attempts):
        family = sample_config(rng)
        seconds = cost_model.seconds(family)
        if seconds <= max_time:
            return family, seconds
    return None


# ---------------------------------------------------------------- measuring and calibrating


def measure_step_seconds(
    family: TaskFamily, num_tasks: int = 8, steps: int = 10, repeats: int = 3, seed: int = 0
) -> float:
    """Wall seconds per inner step of `num_tasks` vmapped tasks trained with SGD over a
    jitted `steps`-step unroll (best of `repeats`, after a warm-up; batches and keys
    pre-sampled). Task i is `rollout.instantiate`d from stream ("task", i) of `root(seed)`,
    its step t's loss key is its stream ("train_loss", t)."""
    rng = np.random.default_rng(seed)
    stepper = rollout.OptaxStepper(optax.sgd(1e-3), pass_loss=False)
    task_keys = streams(root(seed), "task", jnp.arange(num_tasks))

    def begin(key):
        cfg, params, state = rollout.instantiate(family, key)
        return cfg, rollout.start(stepper, params, state, steps)

    cfgs, runs = jax.jit(jax.vmap(begin))(task_keys)
    # [steps, num_tasks], as the batches
    loss_keys = jax.vmap(lambda k: streams(k, "train_loss", jnp.arange(steps)), out_axes=1)(task_keys)
    batches = jax.tree.map(
        lambda *xs: np.stack(xs).reshape((steps, num_tasks) + xs[0].shape),
        *[family.get_batch(rng, "train") for _ in range(steps * num_tasks)],
    )

    def unroll(cfgs, runs, batches, keys):  # the tasks' scans over steps, vmapped: one scan of vmapped steps
        train = functools.partial(rollout.train, family, stepper)
        return jax.vmap(train, in_axes=(0, 0, 1, 1))(cfgs, runs, batches, keys)

    run = jax.jit(unroll)
    jax.block_until_ready(run(cfgs, runs, batches, loss_keys))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(cfgs, runs, batches, loss_keys))
        best = min(best, time.perf_counter() - start)
    return best / steps


def fit(families: Sequence[TaskFamily], seconds: Sequence[float], num_tasks: int = 8, device: str = "") -> CostModel:
    """Non-negative least squares on relative error, minimising sum ((pred - t) / t)^2, with
    one FLOP rate per family kind present in `families`."""
    from scipy.optimize import nnls

    n = num_tasks
    kinds = sorted({family_kind(f) for f in families})
    rows = []
    for f in families:
        flops = [n * f.step_flops() if family_kind(f) == k else 0.0 for k in kinds]
        rows.append([1.0, n * batch_bytes(f), float(f.sequential_steps())] + flops)
    x, t = np.array(rows), np.asarray(seconds)
    coef, _ = nnls(x / t[:, None], np.ones_like(t))
    rates = tuple((k, float(c)) for k, c in zip(kinds, coef[3:]))
    positive = [c for _, c in rates if c > 0]
    return CostModel(
        overhead=float(coef[0]),
        default_per_flop=float(np.median(positive)) if positive else 0.0,
        per_byte=float(coef[1]),
        per_sequential_step=float(coef[2]),
        per_flop=rates,
        num_tasks=n,
        device=device,
    )


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's processor or machine type."""
    try:  # the model name says more than "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_id() -> str:
    """What a step time depends on: CPU model and count, jax version, device kind. Not the
    host name: machines of one kind (CI runners, a cluster's nodes) share a calibration."""
    parts = (cpu_model(), f"{os.cpu_count()}cpu", f"jax{jax.__version__}", jax.devices()[0].device_kind)
    return "|".join(parts)


def cache_path() -> Path:
    return cache_dir() / "cost_model.json"


def calibrate(
    families: Sequence[TaskFamily], num_tasks: int = 8, use_cache: bool = True, progress: bool = False
) -> CostModel:
    """A cost model for this machine, fitted on timings of `families` (e.g.
    `phases.calibration_families()`), cached in `cache_path()` per machine and family set."""
    families = list(families)
    key = {"machine": machine_id(), "families": [f.name for f in families], "num_tasks": num_tasks}
    path = cache_path()
    if use_cache and path.is_file():
        cached = json.loads(path.read_text())
        if all(cached.get(k) == v for k, v in key.items()):
            return CostModel.from_json(json.dumps(cached["model"]))
    bar = contextlib.nullcontext(families)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(families, desc="timing tasks", unit="task")
    with bar as timed, jax.numpy_dtype_promotion("standard"):  # closed on an error: the message gets its own line
        seconds = [measure_step_seconds(f, num_tasks) for f in timed]
    model = fit(families, seconds, num_tasks, device=f"this machine ({jax.devices()[0].device_kind}, calibrated)")
    if use_cache:
        write_atomic(path, json.dumps(key | {"model": dataclasses.asdict(model)}))
    return model


__all__ = ["REFERENCE", "CostModel", "batch_bytes", "calibrate", "fit", "measure_step_seconds", "rejection_sample"]
