"""Training curves of one task under an optimizer, over a grid of one hyperparameter (the
learning rate) and several seeds, in jitted `lax.scan` chunks fed from the host.

The logged loss follows the reference (spec §6.3): every `eval_every` steps, the mean loss
over `eval_batches` fresh train-split batches; at the last step, over `final_eval_batches`.
Runs are vmapped: seeds (each its own task config, initial weights and data) outside,
hyperparameters (sharing their seed's init and data) inside. The run axes are split over
the available devices when they divide evenly (hyperparameters first, padded if needed).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tasks import rollout
from tasks.base import TaskFamily
from tasks.key_streams import root, stream, streams

OptimizerFactory = Callable[[jax.Array, int], optax.GradientTransformation]


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a task is trained and logged. `chunk` = steps per compiled call (host memory)."""

    steps: int
    seeds: int = 1
    eval_every: int = 10
    eval_batches: int = 5
    final_eval_batches: int = 10
    chunk: int = 500

    def __post_init__(self):
        for name in ("steps", "seeds", "eval_every", "eval_batches", "final_eval_batches", "chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RunSettings.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def eval_steps(self) -> np.ndarray:
        """Steps at which the loss is logged: 0, k, 2k, ... and the last step."""
        return np.unique(np.append(np.arange(0, self.steps + 1, self.eval_every), self.steps))


@dataclasses.dataclass(frozen=True)
class Curves:
    """steps [E]; loss [H, S, E] (hyperparameters × seeds × logged steps), float64."""

    steps: np.ndarray
    loss: np.ndarray
    hparams: np.ndarray

    def mean_over_seeds(self) -> np.ndarray:
        """[H, E]; a run that diverged (non-finite) makes its hyperparameter's curve NaN there."""
        loss = np.where(np.isfinite(self.loss), self.loss, np.nan)
        return loss.mean(axis=1)

    @property
    def final(self) -> np.ndarray:
        """[H] seed-averaged loss at the last step."""
        return self.mean_over_seeds()[:, -1]


def train_curves(
    family: TaskFamily,
    make_optimizer: OptimizerFactory,
    hparams,
    settings: RunSettings,
    seed: int = 0,
    devices: list | None = None,
) -> Curves:
    """Train `family` with `make_optimizer(h, settings.steps)` for every h in `hparams`
    (1-d; pass [0.0] for an optimizer without one) and every seed; see the module doc."""
    hparams = np.atleast_1d(np.asarray(hparams, np.float32))
    if hparams.ndim != 1 or hparams.size == 0:
        raise ValueError(f"hparams must be a non-empty 1-d array, got shape {hparams.shape}")
    num_h, num_s = hparams.size, settings.seeds
    devices = list(jax.devices() if devices is None else devices)
    run_sharding, data_sharding, padded = _layout(num_h, num_s, devices)
    hp = jnp.asarray(np.concatenate([hparams, np.repeat(hparams[-1:], padded - num_h)]))
    progs = _programs(family, make_optimizer, settings.steps, run_sharding, data_sharding)
    # Training and evaluation batches come from separate host streams per seed, so that
    # which batch a step or an evaluation gets does not depend on the chunking.
    train_rngs = [np.random.default_rng([seed, s, 0]) for s in range(num_s)]
    eval_rngs = [np.random.default_rng([seed, s, 1]) for s in range(num_s)]
    keys = jnp.stack([jax.random.fold_in(root(seed), s) for s in range(num_s)])

    def train_batches(n):  # [S, n, ...]
        return _stack([family.stacked_batches(r, "train", n) for r in train_rngs])

    def eval_batches(n):  # [S, n, ...] train-split batches
        return _stack([family.stacked_batches(r, "train", n) for r in eval_rngs])

    carry, cfgs = progs.init(hp, keys)
    logged = [progs.evaluate(hp, carry, cfgs, eval_batches(settings.eval_batches), keys, 0, 0)]
    k, done = settings.eval_every, 0
    blocks_per_chunk = max(1, settings.chunk // k)
    full_blocks = settings.steps // k
    while done < full_blocks:
        nb = min(blocks_per_chunk, full_blocks - done)
        train = _blocks(train_batches(nb * k), nb)
        evals = _blocks(eval_batches(nb * settings.eval_batches), nb)
        carry, losses = progs.chunk(hp, carry, cfgs, train, evals, keys, done)
        logged.append(losses)
        done += nb
    tail = settings.steps - full_blocks * k
    if tail:
        carry = progs.train(hp, carry, cfgs, train_batches(tail), keys, full_blocks * k)
    if settings.steps % k == 0 and settings.final_eval_batches != settings.eval_batches or tail:
        final = _final_eval(progs, hp, carry, cfgs, keys, eval_batches, settings)
        if tail:
            logged.append(final)
        else:
            logged[-1] = jnp.concatenate([logged[-1][..., :-1], final], axis=-1)
    loss = np.concatenate([np.asarray(jax.device_get(x), np.float64) for x in logged], axis=-1)
    loss = np.moveaxis(loss, 0, 1)[:num_h]  # [S, H, E] -> [H, S, E]
    return Curves(settings.eval_steps, loss, hparams)


def _final_eval(progs, hp, carry, cfgs, keys, eval_batches, settings: RunSettings):
    """The mean loss over `final_eval_batches` (the last logged evaluation), in groups of
    `eval_batches` when they divide it, so that the program compiled for the periodic
    evaluations is reused; batch j has the same key either way."""
    e, f = settings.eval_batches, settings.final_eval_batches
    index = settings.eval_steps.size - 1
    if f % e:
        return progs.evaluate(hp, carry, cfgs, eval_batches(f), keys, index, 0)
    parts = [progs.evaluate(hp, carry, cfgs, eval_batches(e), keys, index, i * e) for i in range(f // e)]
    return sum(parts) / len(parts)


def _blocks(tree, nb: int):
    """[S, nb*n, ...] -> [S, nb, n, ...]."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0], nb, -1, *x.shape[2:]), tree)


def _stack(per_seed: list) -> object:
    return jax.tree.map(lambda *xs: np.stack(xs), *per_seed)


def _layout(num_h: int, num_s: int, devices: list):
    """(run sharding, data sharding, padded H): split hyperparameters over the devices
    (padding H), else seeds when they divide evenly, else one device."""
    n = len(devices)
    if n > 1 and num_h > 1:
        mesh = jax.make_mesh((n,), ("runs",), axis_types=(AxisType.Auto,), devices=devices)
        return NamedSharding(mesh, P(None, "runs")), NamedSharding(mesh, P()), -(-num_h // n) * n
    if n > 1 and num_s % n == 0:
        mesh = jax.make_mesh((n,), ("runs",), axis_types=(AxisType.Auto,), devices=devices)
        return NamedSharding(mesh, P("runs")), NamedSharding(mesh, P("runs")), num_h
    return None, None, num_h


@dataclasses.dataclass(frozen=True)
class _Programs:
    init: Callable  # (hp [H], keys [S]) -> (carry, cfgs), leaves [S, H, ...]
    # (hp, carry, cfgs, batches [S, n, ...], keys, logged index, first batch's number) -> losses [S, H, 1]
    evaluate: Callable
    # (hp, carry, cfgs, train [S, nb, k, ...], evals [S, nb, e, ...], keys, first block's number) -> (carry, [S, H, nb])
    chunk: Callable
    train: Callable  # (hp, carry, cfgs, batches [S, n, ...], keys, first step's number) -> carry


def _over_runs(fn):
    """fn(h, carry, cfg, data, key) for one run -> over [H] (sharing the seed's data and
    key) inside [S] (hyperparameters shared by every seed)."""
    per_seed = jax.vmap(fn, in_axes=(0, 0, 0, None, None))
    return jax.vmap(per_seed, in_axes=(None, 0, 0, 0, 0))


@functools.lru_cache(maxsize=32)
def _programs(family, make_optimizer, steps, run_sharding, data_sharding) -> _Programs:
    """Compiled programs for one (task, optimizer, length, layout); cached so that seeds,
    baselines and resumed runs reuse them. `make_optimizer` must hash by value. Each seed's
    key gives its task (stream "task"), step t's loss key ("train_loss", t) and the loss
    key of batch j of logged evaluation i ("eval_loss", i, j): a run's numbers do not
    depend on how its steps are chunked."""

    def stepper(h):
        return rollout.OptaxStepper(make_optimizer(h, steps))

    def init_one(h, key):
        cfg, params, state = rollout.instantiate(family, stream(key, "task"))
        return rollout.start(stepper(h), params, state, steps), cfg

    def eval_one(run, cfg, batches, key, index, first):
        n = jax.tree.leaves(batches)[0].shape[0]
        keys = streams(key, "eval_loss", index, first + jnp.arange(n))
        return jnp.mean(rollout.batch_losses(family, cfg, run.params, run.model_state, batches, keys))

    def train_steps(h, run, cfg, batches, key, first):
        n = jax.tree.leaves(batches)[0].shape[0]
        keys = streams(key, "train_loss", first + jnp.arange(n))
        return rollout.train(family, stepper(h), cfg, run, batches, keys)[0]

    def chunk_one(h, run, cfg, data, key):
        train, evals, start = data  # blocks [nb, k, ...]; start: the first block's number
        k = jax.tree.leaves(train)[0].shape[1]

        def block(r, xs):
            b, e, i = xs
            r = train_steps(h, r, cfg, b, key, (start + i) * k)
            return r, eval_one(r, cfg, e, key, start + i + 1, 0)  # block i ends at logged step start + i + 1

        nb = jax.tree.leaves(train)[0].shape[0]
        return jax.lax.scan(block, run, (train, evals, jnp.arange(nb)))

    def constrain(tree):
        if run_sharding is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, jax.tree.map(lambda _: run_sharding, tree))

    def place(x):
        return x if data_sharding is None else jax.device_put(x, data_sharding)

    @jax.jit
    def init(hp, keys):
        carry, cfgs = jax.vmap(lambda k: jax.vmap(lambda h: init_one(h, k))(hp))(keys)
        return constrain(carry), cfgs

    @jax.jit
    def evaluate(hp, carry, cfgs, batches, keys, index, first):
        fn = _over_runs(lambda h, c, g, b, k: eval_one(c, g, b, k, index, first))
        return fn(hp, carry, cfgs, batches, keys)[..., None]

    @functools.partial(jax.jit, donate_argnums=1)
    def chunk(hp, carry, cfgs, train, evals, keys, start):
        start = jnp.broadcast_to(start, keys.shape[:1])
        carry, losses = _over_runs(chunk_one)(hp, carry, cfgs, (train, evals, start), keys)
        return constrain(carry), losses

    @functools.partial(jax.jit, donate_argnums=1)
    def train(hp, carry, cfgs, batches, keys, first):
        fn = _over_runs(lambda h, c, g, b, k: train_steps(h, c, g, b, k, first))
        return constrain(fn(hp, carry, cfgs, batches, keys))

    return _Programs(
        init=init,
        evaluate=lambda hp, carry, cfgs, b, keys, index, first: evaluate(hp, carry, cfgs, place(b), keys, index, first),
        chunk=lambda hp, carry, cfgs, t, e, keys, start: chunk(hp, carry, cfgs, place(t), place(e), keys, start),
        train=lambda hp, carry, cfgs, b, keys, first: train(hp, carry, cfgs, place(b), keys, first),
    )
