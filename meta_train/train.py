"""The outer loop: curriculum, FullES or PES estimates, meta-optimizer, checkpoints, metrics.

A run is a pure function of its config: the outer step t uses the key fold_in(seed, t),
and the task pool of a phase is redrawn from (seed, phase, t // resample_every). So the
checkpointed state is just (θ, meta-optimizer state, step) — plus, with PES, the
estimator's persistent inner runs and accumulators — and a run restarted from a
checkpoint computes exactly what an uninterrupted run computes.

With PES, estimate e of every outer step keeps one family of the pool for a whole
resampling epoch (so that its inner runs can persist); its PES state is re-initialised
(at the current θ) when the epoch or the phase changes.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import tasks
from meta_train import checkpointing, estimators
from meta_train import pes as pes_lib
from meta_train.config import MetaTrainConfig, Phase
from meta_train.learned_optimizer import VeLONetwork
from meta_train.sharding import default_mesh, place, to_host
from meta_train.tensorboard_log import HELD_OUT_TAG, VALIDATION_TAG, ScalarLog
from meta_train.workdir import best_validation, prune_step_thetas, save_step_theta, step_theta_path
from tasks import phases as task_phases
from tasks.base import TaskFamily, with_batch_size
from velojax import meta_params as meta_params_lib
from velojax.files import write_atomic

PyTree = Any


class TrainState(dict):
    """{"theta", "opt_state", "step"} and, with PES, "pes" (one `PESState` per estimate
    of an outer step): all a run needs to continue."""


@functools.lru_cache(maxsize=8)  # one object per config: it is a static argument of _apply
def meta_optimizer(config: MetaTrainConfig) -> optax.GradientTransformation:
    """clip ±clip → mean over `accumulate` steps → Adam(meta_lr, eps_root); a step with a
    non-finite gradient is skipped (its count is in the state)."""
    lr = config.meta_lr
    if config.meta_lr_final_fraction != 1.0:  # decays per Adam step (every `accumulate` outer steps)
        lr = optax.cosine_decay_schedule(lr, max(1, config.total_steps // config.accumulate),
                                         alpha=config.meta_lr_final_fraction)  # fmt: skip
    adam = optax.adam(lr, eps_root=config.eps_root)
    inner = optax.chain(optax.clip(config.clip), optax.MultiSteps(adam, every_k_schedule=config.accumulate))
    return optax.apply_if_finite(inner, max_consecutive_errors=2**31 - 1)


def estimator(config: MetaTrainConfig, phase: Phase) -> estimators.Estimator:
    """The config's estimator (FullES or PES) for `phase`."""
    return pes_estimator(config, phase) if config.estimator == "pes" else full_es(config, phase)


def full_es(config: MetaTrainConfig, phase: Phase) -> estimators.FullES:
    return estimators.FullES(
        VeLONetwork(config.network()),
        num_pairs=config.num_pairs,
        std=config.std,
        min_length=phase.min_length,
        max_length=phase.max_length,
        chunk=config.chunk,
        length_multiple=config.length_multiple,
        loss_type=config.loss_type,
        recompute_batches=config.recompute_batches,
        sign_delta=config.sign_delta,
    )


def pes_estimator(config: MetaTrainConfig, phase: Phase) -> pes_lib.TruncatedPES:
    """PES whose episodes have the phase's lengths (VeLO's num_steps per episode)."""
    return pes_lib.TruncatedPES(
        VeLONetwork(config.network()),
        num_pairs=config.num_pairs,
        std=config.std,
        trunc_length=config.trunc_length,
        chunk=config.chunk,
        min_length=phase.min_length,
        max_length=phase.max_length,
        sign_delta=config.sign_delta,
    )


def initial_theta(config: MetaTrainConfig) -> PyTree:
    """θ at step 0 as `config.init` names it (see `MetaTrainConfig`)."""
    key, network = jax.random.PRNGKey(config.seed), config.network()
    if config.init == "hand_designed":
        return meta_params_lib.hand_designed_meta_params(network, lr_mult=config.init_lr_mult)
    if config.init == "scheduled":
        return meta_params_lib.scheduled_meta_params(
            network, config.init_lr_mult, key, config.init_noise, decay=config.init_decay
        )
    return VeLONetwork(network).init_theta(key)


def init_state(config: MetaTrainConfig, theta: PyTree | None = None) -> TrainState:
    if theta is None:
        theta = initial_theta(config)
    return TrainState(theta=theta, opt_state=meta_optimizer(config).init(theta), step=np.int64(0))


@functools.lru_cache(maxsize=32)
def task_pool(config: MetaTrainConfig, phase_index: int, epoch: int) -> tuple[TaskFamily, ...]:
    """The families of phase `phase_index` during resampling epoch `epoch`."""
    phase = config.phases[phase_index]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), phase_index), epoch)
    if phase.tasks:
        pool = [tasks.get(name) for name in phase.tasks]
    elif phase.custom is not None:
        pool = [phase.custom.sample(k) for k in jax.random.split(key, phase.pool_size)]
    else:
        datasets = task_phases.OFFLINE_DATASETS if phase.offline else None
        pool = [
            task_phases.sample_task(k, phase=phase.distribution, datasets=datasets).family
            for k in jax.random.split(key, phase.pool_size)
        ]
    if phase.batch_size is not None:
        pool = [with_batch_size(f, phase.batch_size) for f in pool]
    return tuple(pool)


def task_pools(config: MetaTrainConfig) -> list[tuple[int, int, tuple[TaskFamily, ...]]]:
    """[(phase, resampling epoch, pool)] of every pool a whole run of `config` draws
    from (a run is a function of its config, so this lists every task it can train on)."""
    pools, start = [], 0
    for index, phase in enumerate(config.phases):
        for epoch in range(start // phase.resample_every, (start + phase.steps - 1) // phase.resample_every + 1):
            pools.append((index, epoch, task_pool(config, index, epoch)))
        start += phase.steps
    return pools


def family_at(config: MetaTrainConfig, step: int, estimate: int = 0) -> TaskFamily:
    """The family of estimate `estimate` of outer step `step`: drawn from the pool per step
    with FullES, per resampling epoch with PES (whose inner runs persist)."""
    index, phase = config.phase_at(step)
    pool = task_pool(config, index, step // phase.resample_every)
    if config.estimator == "pes":
        pick = jax.random.PRNGKey(config.seed + 3)
        for i in (*_pes_epoch(config, step), estimate):
            pick = jax.random.fold_in(pick, i)
    else:
        pick = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step), estimate)
    return pool[int(jax.random.randint(pick, (), 0, len(pool)))]


def _pes_epoch(config: MetaTrainConfig, step: int) -> tuple[int, int]:
    """(phase, resampling epoch) of `step`: PES states live as long as it does not change."""
    index, phase = config.phase_at(step)
    return index, step // phase.resample_every


def init_estimator_states(config: MetaTrainConfig, step: int, theta: PyTree, mesh=None) -> tuple:
    """Fresh estimator states (at θ) for the estimates of outer step `step`, from (seed,
    step): PES's inner runs, FullES's empty states."""
    _, phase = config.phase_at(step)
    es = estimator(config, phase)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 4), step)
    return tuple(
        es.init(theta, jax.random.fold_in(key, e), family_at(config, step, e), mesh)
        for e in range(config.estimates_per_step)
    )


@functools.partial(jax.jit, static_argnums=0)
def _apply(tx, theta, opt_state, grad):
    updates, opt_state = tx.update(grad, opt_state, theta)
    norm = optax.tree.norm(grad)
    return optax.apply_updates(theta, updates), opt_state, norm


def outer_step(config: MetaTrainConfig, state: TrainState, mesh=None) -> tuple[TrainState, dict[str, float]]:
    """One outer step: `estimates_per_step` FullES or PES estimates (each on its own family
    of the phase's pool), averaged, then the meta-optimizer. With PES, the buffers of
    `state["pes"]` are reused for the new state (do not use `state` afterwards)."""
    step = int(state["step"])
    _, phase = config.phase_at(step)
    use_pes = config.estimator == "pes"
    es = estimator(config, phase)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    es_states = state.get("pes")  # only PES has states that persist across outer steps
    if es_states is None or step == 0 or _pes_epoch(config, step) != _pes_epoch(config, step - 1):
        es_states = init_estimator_states(config, step, state["theta"], mesh)
    grads, metrics, new_states = [], [], []
    for e in range(config.estimates_per_step):
        family = family_at(config, step, e)
        g, s, m = es.estimate(state["theta"], es_states[e], jax.random.fold_in(key, e), family, mesh, donate=True)
        grads.append(g), metrics.append(m), new_states.append(s)
    grad = jax.tree.map(lambda *gs: sum(gs) / len(gs), *grads) if len(grads) > 1 else grads[0]
    tx = meta_optimizer(config)
    theta, opt_state, grad_norm = _apply(tx, state["theta"], state["opt_state"], grad)
    losses = [m["meta_loss"] for m in metrics if np.isfinite(m["meta_loss"])]
    out = {
        "step": step + 1,
        "meta_loss": float(np.mean(losses)) if losses else float("nan"),
        "grad_norm": float(to_host(grad_norm)),
        "theta_norm": float(to_host(optax.tree.norm(theta))),
        "inner_steps": int(sum(m["inner_steps"] for m in metrics)),
        "length": int(np.mean([m["length"] for m in metrics])),
        "nonfinite_pairs": int(sum(m["nonfinite_pairs"] for m in metrics)),
        "skipped_updates": int(to_host(opt_state.total_notfinite)),
        "family": family_at(config, step, 0).name,
    }
    new = TrainState(theta=theta, opt_state=opt_state, step=np.int64(step + 1))
    if use_pes:
        new["pes"] = tuple(new_states)
        out["resets"] = int(sum(m["resets"] for m in metrics))
    return new, out


def evaluate(config: MetaTrainConfig, theta: PyTree, key: jax.Array, mesh=None) -> float:
    """Mean normalised final loss (last_recompute) of θ on `eval_pairs` held-out tasks of
    the first phase's first family, at `eval_length` steps (no perturbation)."""
    phase = config.phases[0]
    length = config.eval_length or phase.max_length
    es = dataclasses.replace(full_es(config, phase), num_pairs=config.eval_pairs, min_length=length, max_length=length)
    family = task_pool(config, 0, 0)[0]
    return es.evaluate(theta, key, family, mesh)


def validate(config: MetaTrainConfig, theta: PyTree) -> dict[str, float]:
    """{"<task>@<length>": θ's mean normalised final loss (`last_recompute`, no
    perturbation) over `validation_seeds` seeds} for every `config.validation` entry. The
    same task seeds and data at every call, so values at different steps compare. The
    seeds are spread over as many devices as divide their number."""
    base, mesh = full_es(config, config.phases[0]), default_mesh(config.validation_seeds)
    out = {}
    for i, (name, length) in enumerate(config.validation):
        es = dataclasses.replace(
            base, num_pairs=config.validation_seeds, min_length=length, max_length=length,
            length_multiple=_divisor_at_most(config.chunk, length), loss_type="last_recompute",
        )  # fmt: skip
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 5), i)
        out[f"{name}@{length}"] = es.evaluate(theta, key, tasks.get(name), mesh)
    return out


def _divisor_at_most(chunk: int, length: int) -> int:
    """The largest divisor of `chunk` that divides `length` (so a length is run exactly)."""
    return max(d for d in range(1, chunk + 1) if chunk % d == 0 and length % d == 0)


class _Validation:
    """Validation results in `summary["validation"]` ([{step, val_meta_loss, tasks}]) and
    the best θ by them, written to `workdir/best_theta` (official weights format)."""

    def __init__(self, config: MetaTrainConfig, workdir: Path, summary: dict, start: int, lead: bool):
        self.config, self.path, self.lead = config, workdir / "best_theta", lead
        self.history = [v for v in summary.get("validation", []) if v["step"] <= start]  # drop a killed run's
        summary["validation"] = self.history

    @property
    def best(self) -> dict | None:
        return best_validation(self.history)

    def due(self, step: int) -> bool:
        every, total = self.config.validate_every, self.config.total_steps
        done = any(v["step"] == step for v in self.history)
        return bool(self.config.validation) and not done and (step in (0, total) or (every and step % every == 0))

    def run(self, theta: PyTree, step: int) -> float:
        per_task = validate(self.config, theta)
        values = np.asarray(list(per_task.values()), np.float64)
        mean = float(values.mean()) if np.all(np.isfinite(values)) else float("nan")
        before = self.best
        self.history.append({"step": step, "val_meta_loss": mean, "tasks": per_task})
        if self.lead and np.isfinite(mean) and (before is None or mean < before["val_meta_loss"]):
            from velojax.checkpoint import save_weights

            save_weights(self.path, jax.tree.map(to_host, theta), gen_id=f"{self.config.name}-best", step=step)
        return mean


def train(
    config: MetaTrainConfig,
    workdir: str | Path,
    *,
    init_theta: PyTree | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) `config` in `workdir`: checkpoints/<step> (orbax) and, next to each,
    theta_at/<step>/params (its θ in `velojax.checkpoint.load_weights` format, pruned with
    the checkpoints), metrics.jsonl (mirrored as TensorBoard scalars in tensorboard/),
    meta_loss.png, theta/ (the final θ, same format), summary.json. Every file is written
    atomically (a reader, or a rerun after a kill, never sees a torn one).
    `stop_after` stops after that many outer steps of this call (for tests).
    With `config.validation`, θ is validated before the first step, every
    `validate_every` steps and after the last (`val_meta_loss` in the metrics, the
    history in summary.json) and the best θ so far is in best_theta/.

    With several processes (`jax.distributed`), every process runs this with the same
    arguments and a shared `workdir`; process 0 writes the metrics, plot and θ."""
    call_t0 = time.perf_counter()
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    if jax.process_count() > 1:  # every process must own a share of every program's pairs
        for name in ("num_pairs", "eval_pairs"):
            if getattr(config, name) % jax.device_count():
                raise ValueError(f"{name}={getattr(config, name)} must be a multiple of the {jax.device_count()} "
                                 f"devices of the {jax.process_count()} processes")  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    _check_config(config, workdir, write=lead)
    mesh = default_mesh(config.num_pairs)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    fresh = init_state(config, init_theta)
    fresh = TrainState(place(dict(fresh), NamedSharding(mesh, P())), step=fresh["step"])
    template, latest = fresh, ckpt.latest_step()
    if config.estimator == "pes" and latest:  # the PES states of the families of step latest - 1
        template = TrainState(fresh, pes=init_estimator_states(config, latest - 1, fresh["theta"], mesh))
    state = ckpt.restore_latest(template) or fresh
    start = int(state["step"])
    metrics_path = workdir / "metrics.jsonl"
    rows = _read_metrics(metrics_path, upto=start)
    if lead:
        _write_metrics(metrics_path, rows)  # drop rows past the checkpoint (a killed run's)

    eval_key = jax.random.PRNGKey(config.seed + 2)
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() and start > 0 else {}
    scalars = ScalarLog(workdir / "tensorboard", start, enabled=lead)
    if "eval_before" not in summary and config.eval_pairs:
        summary["eval_before"] = evaluate(config, fresh["theta"], eval_key)
        scalars.scalar(HELD_OUT_TAG, summary["eval_before"], 0)
    validation = _Validation(config, workdir, summary, start, lead)
    if lead and start:  # a kill may have come between the checkpoint and its θ, or in a θ's write
        _theta_beside_checkpoint(config, workdir, ckpt, state, validation.best, rewrite=False)
    if validation.due(start):  # step 0 (or a resumed step whose validation was lost)
        scalars.scalar(VALIDATION_TAG, validation.run(state["theta"], start), start)
        _write_summary(summary_path, summary, lead)

    total = config.total_steps
    bar = _progress(total, start, progress and lead)
    t0, done_steps, inner = time.perf_counter(), 0, 0
    with open(metrics_path if lead else os.devnull, "a") as log:
        while int(state["step"]) < total and (stop_after is None or done_steps < stop_after):
            state, row = outer_step(config, state, mesh)
            done_steps += 1
            inner += row["inner_steps"]
            row["elapsed_s"] = round(time.perf_counter() - t0, 3)
            row["inner_steps_per_s"] = round(inner / max(row["elapsed_s"], 1e-9), 1)
            if validation.due(row["step"]):
                row["val_meta_loss"] = validation.run(state["theta"], row["step"])
                _write_summary(summary_path, summary, lead)
                if lead:  # watchable while it runs
                    _plot(rows + [row], workdir / "meta_loss.png", config.name, validation.history)
            log.write(json.dumps(row) + "\n")
            log.flush()
            scalars.write(row)
            rows.append(row)
            step = int(state["step"])
            if step % config.checkpoint_every == 0 or step == total:
                ckpt.save(step, state)
                if lead:
                    _theta_beside_checkpoint(config, workdir, ckpt, state, validation.best)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{row['meta_loss']:.3f}", inner_steps_per_s=f"{row['inner_steps_per_s']:.0f}")
    bar.close()
    ckpt.wait()
    if int(state["step"]) >= total:
        from velojax.checkpoint import save_weights

        if config.eval_pairs:
            summary["eval_after"] = evaluate(config, state["theta"], eval_key)
            scalars.scalar(HELD_OUT_TAG, summary["eval_after"], total)
        summary["steps"] = total
        if lead:
            save_weights(workdir / "theta", jax.tree.map(to_host, state["theta"]), gen_id=config.name, step=total)
            _plot(rows, workdir / "meta_loss.png", config.name, validation.history)
    if validation.best is not None:
        summary["best"] = {k: validation.best[k] for k in ("step", "val_meta_loss")}
    # wall time of the calls that returned (a killed call's time is not counted)
    summary["wall_time_s"] = round(summary.get("wall_time_s", 0.0) + time.perf_counter() - call_t0, 1)
    scalars.close()
    _write_summary(summary_path, summary, lead)
    return summary


def _theta_beside_checkpoint(
    config: MetaTrainConfig, workdir: Path, ckpt: checkpointing.Checkpointer, state: TrainState, best: dict | None,
    rewrite: bool = True,
) -> None:  # fmt: skip
    """Write the θ of the checkpoint just saved as theta_at/<step>/params (for eval and
    export: see `meta_train.workdir`), then remove those of pruned checkpoints, except the
    best step's."""
    step = int(state["step"])
    if rewrite or not step_theta_path(workdir, step).is_file():
        save_step_theta(workdir, step, jax.tree.map(to_host, state["theta"]), gen_id=f"{config.name}-step{step}")
    prune_step_thetas(workdir, set(ckpt.steps()) | ({int(best["step"])} if best else set()))


def _write_summary(path: Path, summary: dict, lead: bool) -> None:
    if lead:
        write_atomic(path, json.dumps(summary, indent=1))


def _check_config(config: MetaTrainConfig, workdir: Path, write: bool = True) -> None:
    path = workdir / "config.json"
    if path.is_file():
        saved = MetaTrainConfig.from_json(path.read_text())
        if saved != config:
            raise checkpointing.CheckpointError(
                f"{workdir} holds a run of a different config ({saved.name}); use another --workdir "
                f"or the same config and overrides (saved: {path})"
            )
    elif write:
        write_atomic(path, config.to_json())


def _read_metrics(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if row["step"] <= upto:
            rows.append(row)
    return rows


def _write_metrics(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _progress(total: int, start: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def _plot(rows: list[dict], path: Path, title: str, validation: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    losses = np.asarray([r["meta_loss"] for r in rows], float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=0.8, alpha=0.4, label="per step")
    if len(losses) >= 10:
        w = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, lw=2, label=f"mean of {w}")
    if validation:
        ax.plot([v["step"] for v in validation], [v["val_meta_loss"] for v in validation], "o-", lw=1.5,
                label="validation (held-out tasks, final loss)")  # fmt: skip
    ax.set(xlabel="outer step", ylabel="meta-loss (normalised)", title=title)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, png.getvalue())


__all__ = [
    "TrainState",
    "evaluate",
    "family_at",
    "init_estimator_states",
    "init_state",
    "meta_optimizer",
    "outer_step",
    "task_pools",
    "train",
    "validate",
]
