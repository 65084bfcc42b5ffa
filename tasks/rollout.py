"""Inner training, once: a task from a key, and one training step under any stepper.

Every inner-training loop of the project (eval's curves, FullES, PES, the
learned-optimizer tasks, the cost model's timing, `tasks.base.train_scan`) is built from
these pure functions; each caller keeps control of how runs are vmapped, scanned and
laid out over devices.

    cfg, params, model_state = instantiate(family, key)
    stepper = OptaxStepper(optax.adam(1e-3))           # or LearnedStepper(lopt, theta)
    run = start(stepper, params, model_state, num_steps)
    run, loss = step(family, stepper, cfg, run, batch, key)  # loss: [] raw training loss

A stepper is anything with `init(params, num_steps)` and
`update(grads, opt_state, params, loss) -> (new params, new opt_state)`: an optax
transformation (`OptaxStepper`) or a learned optimizer at meta-parameters θ
(`LearnedStepper`). Both are frozen dataclasses, cheap to build inside a traced
function (e.g. once per vmapped θ ± ε).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax

from tasks.base import TaskFamily
from tasks.key_streams import stream

PyTree = Any


class InnerRun(NamedTuple):
    """One inner training run's state: the model's weights and state and the stepper's state."""

    params: PyTree
    model_state: PyTree
    opt: PyTree


@runtime_checkable
class Stepper(Protocol):
    """What trains a task's weights one step at a time (see module doc)."""

    def init(self, params: PyTree, num_steps: int | jax.Array) -> PyTree: ...

    def update(self, grads: PyTree, opt_state: PyTree, params: PyTree, loss: jax.Array) -> tuple[PyTree, PyTree]: ...


@dataclasses.dataclass(frozen=True)
class OptaxStepper:
    """An optax transformation as a stepper. `pass_loss`: call `tx.update(..., value=loss)`
    (VeLO's optax form needs the loss; optax's own transformations accept and ignore it).
    `num_steps` is ignored: an optax transformation plans its schedule when it is built."""

    tx: optax.GradientTransformation
    pass_loss: bool = True

    def init(self, params: PyTree, num_steps: int | jax.Array | None = None) -> PyTree:
        del num_steps
        return self.tx.init(params)

    def update(self, grads, opt_state, params, loss):
        extra = {"value": loss} if self.pass_loss else {}
        updates, opt_state = self.tx.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state


@dataclasses.dataclass(frozen=True)
class LearnedStepper:
    """A learned optimizer at meta-parameters `theta` as a stepper. `lopt` has
    `init(θ, params, num_steps)` and `update(θ, state, grads, params, loss) -> (params,
    state)` (as `meta_train.learned_optimizer.VeLONetwork`)."""

    lopt: Any
    theta: PyTree

    def init(self, params, num_steps):
        return self.lopt.init(self.theta, params, num_steps)

    def update(self, grads, opt_state, params, loss):
        return self.lopt.update(self.theta, opt_state, grads, params, loss)


def instantiate(family: TaskFamily, key: jax.Array, cfg: PyTree | None = None) -> tuple[PyTree, PyTree, PyTree]:
    """(cfg, params, model_state) of the task of `family` drawn from `key`: its inner
    configuration from stream "config" (unless `cfg` is given) and its initial weights
    from stream "init" (see `tasks.key_streams`)."""
    if cfg is None:
        cfg = family.sample(stream(key, "config"))
    params, model_state = family.init(stream(key, "init"), cfg)
    return cfg, params, model_state


def start(stepper: Stepper, params: PyTree, model_state: PyTree, num_steps: int | jax.Array) -> InnerRun:
    """A run at its first step: `stepper` initialised for a run of `num_steps` steps."""
    return InnerRun(params, model_state, stepper.init(params, num_steps))


def step(
    family: TaskFamily, stepper: Stepper, cfg: PyTree, run: InnerRun, batch: PyTree, key: jax.Array
) -> tuple[InnerRun, jax.Array]:
    """One training step: (the run after it, the training loss before it (raw, scalar))."""
    (loss, model_state), grads = family.loss_and_grad(run.params, run.model_state, key, batch, cfg)
    params, opt = stepper.update(grads, run.opt, run.params, loss)
    return InnerRun(params, model_state, opt), loss


def train(
    family: TaskFamily, stepper: Stepper, cfg: PyTree, run: InnerRun, batches: PyTree, keys: jax.Array
) -> tuple[InnerRun, jax.Array]:
    """`step` over stacked `batches` [n, ...] with `keys` [n] in one `lax.scan`:
    (the run after n steps, the training losses [n])."""
    return jax.lax.scan(lambda r, xs: step(family, stepper, cfg, r, *xs), run, (batches, keys))


def batch_losses(
    family: TaskFamily, cfg: PyTree, params: PyTree, model_state: PyTree, batches: PyTree, keys: jax.Array,
    normalize: bool = False,
) -> jax.Array:  # fmt: skip
    """The loss of `params` on each of `batches` [n, ...] (key keys[i]) without training,
    one batch at a time (`lax.map`: memory of one batch); normalised to the meta-loss
    scale with `normalize`. float32 [n]."""

    def one(xs):
        batch, key = xs
        loss = family.loss(params, model_state, key, batch, cfg)[0]
        return (family.normalizer(loss, cfg) if normalize else loss).astype(jnp.float32)

    return jax.lax.map(one, (batches, keys))
