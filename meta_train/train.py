"""The outer loop: curriculum, FullES or PES estimates, meta-optimizer, checkpoints, metrics.

A run is a pure function of its config: every draw comes from a named key stream of
`PRNGKey(seed)` (`tasks.key_streams`): outer step t's estimates from stream "estimate"
(t, e), the task pool of a phase from stream "pool" (phase, t // resample_every). So the
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
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import tasks
from meta_train import checkpointing, estimators
from meta_train.config import CONFIG_FORMAT, MetaTrainConfig, Phase
from meta_train.learned_optimizer import VeLONetwork
from meta_train.sharding import default_mesh, place, to_host
from meta_train.tensorboard_log import HELD_OUT_TAG, VALIDATION_TAG, ScalarLog
from meta_train.workdir import best_validation, prune_step_thetas, save_step_theta, step_theta_path
from tasks import phases as task_phases
from tasks.base import TaskFamily, with_batch_size
from tasks.key_streams import root, stream
from velojax import meta_params as meta_params_lib
from velojax.files import write_atomic

PyTree = Any


class TrainState(dict):
    """{"theta", "opt_state", "step"} and, with an estimator whose states persist (PES),
    "estimator_states" (one per estimate of an outer step, e.g. a `PESState`): all a run
    needs to continue."""


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
    return config.estimator.build(config.network(), phase)


def evaluator(config: MetaTrainConfig, num_pairs: int, length: int) -> estimators.FullES:
    """The FullES whose `evaluate` scores θ (no perturbation): `num_pairs` tasks, rollouts
    of exactly `length` steps, final loss over `eval_recompute_batches` batches."""
    return estimators.FullES(
        VeLONetwork(config.network()),
        num_pairs=num_pairs,
        min_length=length,
        max_length=length,
        chunk=config.estimator.chunk,
        length_multiple=_divisor_at_most(config.estimator.chunk, length),
        loss_type="last_recompute",
        recompute_batches=config.eval_recompute_batches,
    )


def initial_theta(config: MetaTrainConfig) -> PyTree:
    """θ at step 0 as `config.init` names it (see `MetaTrainConfig`)."""
    key, network = stream(root(config.seed), "theta_init"), config.network()
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
    key = stream(root(config.seed), "pool", phase_index, epoch)
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
    # PES keeps a family for its state's lifetime (a resampling epoch), FullES picks per step
    when = _pes_epoch(config, step) if _persistent(config) else (step,)
    pick = stream(root(config.seed), "pick", *when, estimate)
    return pool[int(jax.random.randint(pick, (), 0, len(pool)))]


def _persistent(config: MetaTrainConfig) -> bool:
    """Whether the estimator's states persist across outer steps (PES's inner runs)."""
    return config.estimator.persistent


def _pes_epoch(config: MetaTrainConfig, step: int) -> tuple[int, int]:
    """(phase, resampling epoch) of `step`: PES states live as long as it does not change."""
    index, phase = config.phase_at(step)
    return index, step // phase.resample_every


def init_estimator_states(config: MetaTrainConfig, step: int, theta: PyTree, mesh=None) -> tuple:
    """Fresh estimator states (at θ) for the estimates of outer step `step`, from (seed,
    step): PES's inner runs, FullES's empty states."""
    _, phase = config.phase_at(step)
    es = estimator(config, phase)
    return tuple(
        es.init(theta, stream(root(config.seed), "estimator_init", step, e), family_at(config, step, e), mesh)
        for e in range(config.estimates_per_step)
    )


@functools.partial(jax.jit, static_argnums=0)
def _apply(tx, theta, opt_state, grad):
    updates, opt_state = tx.update(grad, opt_state, theta)
    norm = optax.tree.norm(grad)
    return optax.apply_updates(theta, updates), opt_state, norm


class Estimates(NamedTuple):
    """An outer step's estimates: their mean ĝ, each one's metrics, the estimator states after them."""

    grad: PyTree
    metrics: list[dict[str, float]]
    states: tuple


def estimate(config: MetaTrainConfig, state: TrainState, mesh=None) -> Estimates:
    """The `estimates_per_step` FullES or PES estimates of outer step `state["step"]`, each
    on its own family of the phase's pool (key: stream "estimate" (step, e)). With PES,
    the buffers of `state["estimator_states"]` are reused (do not use them afterwards); a new
    resampling epoch or phase starts from fresh states."""
    step = int(state["step"])
    es = estimator(config, config.phase_at(step)[1])
    es_states = state.get("estimator_states")  # only PES has states that persist across outer steps
    if es_states is None or step == 0 or _pes_epoch(config, step) != _pes_epoch(config, step - 1):
        es_states = init_estimator_states(config, step, state["theta"], mesh)
    grads, metrics, new_states = [], [], []
    for e in range(config.estimates_per_step):
        key = stream(root(config.seed), "estimate", step, e)
        g, s, m = es.estimate(state["theta"], es_states[e], key, family_at(config, step, e), mesh, donate=True)
        grads.append(g), metrics.append(m), new_states.append(s)
    grad = jax.tree.map(lambda *gs: sum(gs) / len(gs), *grads) if len(grads) > 1 else grads[0]
    return Estimates(grad, metrics, tuple(new_states))


def update(config: MetaTrainConfig, state: TrainState, estimates: Estimates) -> tuple[TrainState, jax.Array]:
    """(the state after the meta-optimizer's step on ĝ, ‖ĝ‖)."""
    theta, opt_state, grad_norm = _apply(meta_optimizer(config), state["theta"], state["opt_state"], estimates.grad)
    new = TrainState(theta=theta, opt_state=opt_state, step=np.int64(int(state["step"]) + 1))
    if _persistent(config):
        new["estimator_states"] = estimates.states
    return new, grad_norm


def outer_step(config: MetaTrainConfig, state: TrainState, mesh=None) -> tuple[TrainState, dict[str, float]]:
    """One outer step, `estimate` then `update`: (the new state, its metrics row). With
    PES, the buffers of `state["estimator_states"]` are reused (do not use `state` afterwards)."""
    step = int(state["step"])
    estimates = estimate(config, state, mesh)
    new, grad_norm = update(config, state, estimates)
    metrics = estimates.metrics
    losses = [m["meta_loss"] for m in metrics if np.isfinite(m["meta_loss"])]
    row = {
        "step": step + 1,
        "meta_loss": float(np.mean(losses)) if losses else float("nan"),
        "grad_norm": float(to_host(grad_norm)),
        "theta_norm": float(to_host(optax.tree.norm(new["theta"]))),
        "inner_steps": int(sum(m["inner_steps"] for m in metrics)),
        "length": int(np.mean([m["length"] for m in metrics])),
        "nonfinite_pairs": int(sum(m["nonfinite_pairs"] for m in metrics)),
        "skipped_updates": int(to_host(new["opt_state"].total_notfinite)),
        "family": family_at(config, step, 0).name,
    }
    if _persistent(config):
        row["resets"] = int(sum(m["resets"] for m in metrics))
    return new, row


def evaluate(config: MetaTrainConfig, theta: PyTree, key: jax.Array, mesh=None) -> float:
    """Mean normalised final loss (last_recompute) of θ on `eval_pairs` held-out tasks of
    the first phase's first family, at `eval_length` steps (no perturbation)."""
    length = config.eval_length or config.phases[0].max_length
    return evaluator(config, config.eval_pairs, length).evaluate(theta, key, task_pool(config, 0, 0)[0], mesh)


def validate(config: MetaTrainConfig, theta: PyTree) -> dict[str, float]:
    """{"<task>@<length>": θ's mean normalised final loss (`last_recompute`, no
    perturbation) over `validation_seeds` seeds} for every `config.validation` entry. The
    same task seeds and data at every call, so values at different steps compare. The
    seeds are spread over as many devices as divide their number."""
    mesh, out = default_mesh(config.validation_seeds), {}
    for i, (name, length) in enumerate(config.validation):
        key = stream(root(config.seed), "validation", i)
        out[f"{name}@{length}"] = evaluator(config, config.validation_seeds, length).evaluate(
            theta, key, tasks.get(name), mesh
        )
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
    run = _Run.open(config, Path(workdir), init_theta)
    state = run.restore()
    run.evaluate_before()
    run.validate_resumed(state)
    bar = _progress(config.total_steps, run.start, progress and run.lead)
    done_steps = 0
    try:
        while int(state["step"]) < config.total_steps and (stop_after is None or done_steps < stop_after):
            state, row = outer_step(config, state, run.mesh)
            done_steps += 1
            run.log(state, row)
            run.checkpoint(state)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{row['meta_loss']:.3f}", inner_steps_per_s=f"{row['inner_steps_per_s']:.0f}")
    finally:  # an error in a step still closes the metrics file and the progress bar
        bar.close()
        run.log_file.close()
    return run.close(state, call_t0)


@dataclasses.dataclass
class _Run:
    """The files of a run in its workdir, and the steps of `train` that read or write them."""

    config: MetaTrainConfig
    workdir: Path
    init_theta: PyTree | None
    lead: bool
    mesh: Any
    ckpt: checkpointing.Checkpointer
    start: int = 0
    fresh: Any = None  # the initial state (its θ is evaluated before the first step)
    summary: dict = dataclasses.field(default_factory=dict)
    rows: list = dataclasses.field(default_factory=list)
    scalars: Any = None
    validation: Any = None
    log_file: Any = None
    t0: float = 0.0
    inner: int = 0

    @classmethod
    def open(cls, config: MetaTrainConfig, workdir: Path, init_theta: PyTree | None) -> _Run:
        """Check the workdir against the config (writing config.json if new) and the cluster."""
        lead = jax.process_index() == 0
        if jax.process_count() > 1:  # every process must own a share of every program's pairs
            for name, value in (("estimator.num_pairs", config.num_pairs), ("eval_pairs", config.eval_pairs)):
                if value % jax.device_count():
                    raise ValueError(f"{name}={value} must be a multiple of the {jax.device_count()} devices of "
                                     f"the {jax.process_count()} processes")  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        _check_config(config, workdir, write=lead)
        ckpt = checkpointing.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
        return cls(config, workdir, init_theta, lead, default_mesh(config.num_pairs), ckpt)

    @property
    def summary_path(self) -> Path:
        return self.workdir / "summary.json"

    def restore(self) -> TrainState:
        """The latest checkpoint's state, or the initial one; drops what a killed run wrote past it."""
        config, mesh = self.config, self.mesh
        fresh = init_state(config, self.init_theta)
        self.fresh = fresh = TrainState(place(dict(fresh), NamedSharding(mesh, P())), step=fresh["step"])
        template, latest = fresh, self.ckpt.latest_step()
        if _persistent(config) and latest:  # the PES states of the families of step latest - 1
            states = init_estimator_states(config, latest - 1, fresh["theta"], mesh)
            template = TrainState(fresh, estimator_states=states)
        state = self.ckpt.restore_latest(template) or fresh
        self.start = int(state["step"])
        metrics_path = self.workdir / "metrics.jsonl"
        self.rows = _read_metrics(metrics_path, upto=self.start)
        if self.lead:
            _write_metrics(metrics_path, self.rows)  # drop rows past the checkpoint (a killed run's)
        if self.summary_path.is_file() and self.start > 0:
            self.summary = json.loads(self.summary_path.read_text())
        self.scalars = ScalarLog(self.workdir / "tensorboard", self.start, enabled=self.lead)
        self.validation = _Validation(config, self.workdir, self.summary, self.start, self.lead)
        if self.lead and self.start:  # a kill may have come between the checkpoint and its θ, or in a θ's write
            _theta_beside_checkpoint(config, self.workdir, self.ckpt, state, self.validation.best, rewrite=False)
        self.log_file = open(metrics_path if self.lead else os.devnull, "a")
        self.t0 = time.perf_counter()
        return state

    def evaluate_before(self) -> None:
        """The held-out evaluation of the initial θ (once per run)."""
        if "eval_before" not in self.summary and self.config.eval_pairs:
            self.summary["eval_before"] = evaluate(self.config, self.fresh["theta"], self._eval_key)
            self.scalars.scalar(HELD_OUT_TAG, self.summary["eval_before"], 0)

    def validate_resumed(self, state: TrainState) -> None:
        """Validation at step 0, or at a resumed step whose validation a kill lost."""
        if self.validation.due(self.start):
            self.scalars.scalar(VALIDATION_TAG, self.validation.run(state["theta"], self.start), self.start)
            _write_summary(self.summary_path, self.summary, self.lead)

    def log(self, state: TrainState, row: dict) -> None:
        """Add throughput and (when due) validation to `row`; append it to metrics.jsonl and TensorBoard."""
        self.inner += row["inner_steps"]
        row["elapsed_s"] = round(time.perf_counter() - self.t0, 3)
        row["inner_steps_per_s"] = round(self.inner / max(row["elapsed_s"], 1e-9), 1)
        if self.validation.due(row["step"]):
            row["val_meta_loss"] = self.validation.run(state["theta"], row["step"])
            _write_summary(self.summary_path, self.summary, self.lead)
            if self.lead:  # watchable while it runs
                _plot(self.rows + [row], self.workdir / "meta_loss.png", self.config.name, self.validation.history)
        self.log_file.write(json.dumps(row) + "\n")
        self.log_file.flush()
        self.scalars.write(row)
        self.rows.append(row)

    def checkpoint(self, state: TrainState) -> None:
        """Checkpoint (and its θ) every `checkpoint_every` steps and at the last step."""
        step = int(state["step"])
        if step % self.config.checkpoint_every == 0 or step == self.config.total_steps:
            self.ckpt.save(step, state)
            if self.lead:
                _theta_beside_checkpoint(self.config, self.workdir, self.ckpt, state, self.validation.best)

    def close(self, state: TrainState, call_t0: float) -> dict[str, Any]:
        """After the last step: held-out evaluation and the final θ; then summary.json."""
        self.ckpt.wait()
        config, total = self.config, self.config.total_steps
        if int(state["step"]) >= total:
            from velojax.checkpoint import save_weights

            if config.eval_pairs:
                self.summary["eval_after"] = evaluate(config, state["theta"], self._eval_key)
                self.scalars.scalar(HELD_OUT_TAG, self.summary["eval_after"], total)
            self.summary["steps"] = total
            if self.lead:
                theta = jax.tree.map(to_host, state["theta"])
                save_weights(self.workdir / "theta", theta, gen_id=config.name, step=total)
                _plot(self.rows, self.workdir / "meta_loss.png", config.name, self.validation.history)
        if self.validation.best is not None:
            self.summary["best"] = {k: self.validation.best[k] for k in ("step", "val_meta_loss")}
        # wall time of the calls that returned (a killed call's time is not counted)
        self.summary["wall_time_s"] = round(self.summary.get("wall_time_s", 0.0) + time.perf_counter() - call_t0, 1)
        self.scalars.close()
        _write_summary(self.summary_path, self.summary, self.lead)
        return self.summary

    @property
    def _eval_key(self) -> jax.Array:
        return stream(root(self.config.seed), "evaluation")


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
        text = path.read_text()
        if json.loads(text).get("format", 1) < CONFIG_FORMAT:
            raise checkpointing.CheckpointError(
                f"{workdir} holds a run of config format {json.loads(text).get('format', 1)}, written before the "
                f"named key streams (format {CONFIG_FORMAT}): continuing it would not continue the same run. Its "
                f"weights still load (`python -m eval --weights {workdir}`, `python -m meta_train export --workdir "
                f"{workdir} --to PATH`); start the run in another --workdir"
            )
        saved = MetaTrainConfig.from_json(text)
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
