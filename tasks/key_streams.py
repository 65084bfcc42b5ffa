"""Named random-key streams: the one place that says where every random draw comes from.

A draw takes its key from `stream(key, name, *indices)` = fold_in(key, id of `name`),
then fold_in of each index in order, never from arithmetic on seeds (`seed + 1`) or from
a key split among several purposes (a stream's key may be split among the pairs or steps
of its one purpose). Different names give unrelated keys whatever the indices, so, e.g.,
the task pool of (phase 0, epoch 0) and the first estimate of outer step 0 no longer
share a key (`tests/tasks/test_key_streams.py` checks the streams are distinct).

The streams, by the key they start from:

- a meta-training run, from `PRNGKey(config.seed)` (meta_train.train):
  `theta_init` (random θ), `pool` (phase, epoch: the families of a resampling epoch),
  `pick` (step, estimate with FullES; phase, epoch, estimate with PES: which family of
  the pool an estimate trains on), `estimate` (step, estimate), `estimator_init` (step,
  estimate: PES's persistent inner runs), `evaluation` (the held-out evaluation before
  and after), `validation` (entry: the fixed validation tasks);
- one estimate, from its `estimate` key (meta_train.estimators, meta_train.pes):
  `length` (the rollout length), `tasks` (pair: the pair's task), `perturbation` (pair:
  εᵢ), `data` (the host data streams), `loss` (step: the inner steps' loss keys),
  `recompute` (the final-loss batches' keys); PES's episodes: `episode_length`,
  `offset` (the first episode's random cut), `reset` (a reset step's new task);
- one task, from its task key (tasks.rollout.instantiate): `config` (the inner
  configuration, `family.sample`) and `init` (the initial weights, `family.init`);
- one evaluation curve, from its seed key (eval.training): `task`, `train_loss`
  (step), `eval_loss` (evaluation index, batch: the index of the logged step in
  `RunSettings.eval_steps` and of the batch within that evaluation);
- one training run of `tasks.base.train_scan`, from its key: `task`, `train_loss` (step);
- one learned-optimizer task's loss (tasks.families.lopt.LOpt), from its loss key:
  `task` (unroll: the inner task of each unroll of the outer batch); each unroll, from
  its task key: `train_loss` (step);
- the cost model's timing (tasks.cost.measure_step_seconds), from `root(seed)`: `task`
  (task: the vmapped tasks); each task, from its task key: `train_loss` (step).

`streams(key, name, *indices)` stacks the keys of a range of the last index, e.g. the
per-step keys of a `lax.scan` over steps; a key depends only on its indices (a step's key
on the step's number), never on how the steps are chunked.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

# The streams' ids; a new stream gets a new name here (ids are derived from the name,
# so a name's keys never change when others are added).
STREAMS = (
    "theta_init",
    "pool",
    "pick",
    "estimate",
    "estimator_init",
    "evaluation",
    "validation",
    "length",
    "tasks",
    "perturbation",
    "data",
    "loss",
    "recompute",
    "episode_length",
    "offset",
    "reset",
    "config",
    "init",
    "task",
    "train_loss",
    "eval_loss",
)


def stream_id(name: str) -> int:
    """The integer folded into a key for stream `name` (a CRC-32 of the name, < 2³¹)."""
    if name not in STREAMS:
        raise ValueError(f"unknown key stream {name!r}; the streams are listed in tasks.key_streams.STREAMS")
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def stream(key: jax.Array, name: str, *indices) -> jax.Array:
    """The key of stream `name` under `key`, at `indices` (ints or traced int scalars)."""
    key = jax.random.fold_in(key, stream_id(name))
    for i in indices:
        key = jax.random.fold_in(key, i)
    return key


def streams(key: jax.Array, name: str, *indices) -> jax.Array:
    """`stream(key, name, *indices)` for each entry of the last index (an int array [n]):
    the n keys, stacked [n] (e.g. `streams(key, "train_loss", first + jnp.arange(n))`)."""
    if not indices:
        raise ValueError(f"streams(key, {name!r}) needs at least one index (the int array [n] to stack over)")
    *prefix, last = indices
    last = jnp.asarray(last)
    if last.ndim != 1:
        raise ValueError(f"streams: the last index must be a 1-d int array, got shape {last.shape}")
    return jax.vmap(lambda i: stream(key, name, *prefix, i))(last)


def root(seed: int) -> jax.Array:
    """A run's root key."""
    return jax.random.PRNGKey(seed)
