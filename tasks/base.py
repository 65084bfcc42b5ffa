"""The task interface: a `TaskFamily` is a sampled, static configuration (architecture,
dataset, batch size); each task of a family draws its own inner configuration (`sample`:
initialiser, activation, ...) and initial weights, so several tasks of one family run under
one `jax.vmap`.

    family = tasks.get("ImageMLP_FashionMnist8_Relu32")        # or a sampler's output
    cfg = family.sample(key)                                    # pytree of arrays
    params, state = family.init(key, cfg)
    loss, state = family.loss(params, state, key, batch, cfg)   # batch from family.get_batch
    meta_loss = family.normalizer(loss, cfg)

`family.task(cfg)` binds the inner configuration and gives the `Task` view with
`init(key)`, `loss(params, state, key, batch)`, `normalizer(loss)` and batch streams.

Batches are sampled on the host (`get_batch(rng, split)`, numpy) so that a training loop
can stack them into `[steps, ...]` chunks for a jitted `lax.scan`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tasks.key_streams import stream, streams

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TaskFamily(abc.ABC):
    """A family of tasks that share shapes (see module doc). Subclasses are frozen dataclasses.

    `label` names a registered fixed task (e.g. "ImageMLP_Cifar10_128x128x128_Relu");
    otherwise `name` describes the configuration.
    """

    label: str | None = dataclasses.field(default=None, kw_only=True, compare=False)

    @property
    def name(self) -> str:
        return self.label or self.describe()

    @abc.abstractmethod
    def describe(self) -> str:
        """A readable, unique description of the static configuration."""

    def sample(self, key: jax.Array) -> PyTree:
        """The per-task inner configuration (a pytree of arrays; vmappable). Default: none."""
        del key
        return {}

    @abc.abstractmethod
    def init(self, key: jax.Array, cfg: PyTree) -> tuple[PyTree, PyTree]:
        """(params, model_state); model_state is {} for stateless models."""

    @abc.abstractmethod
    def loss(
        self, params: PyTree, state: PyTree, key: jax.Array, batch: PyTree, cfg: PyTree
    ) -> tuple[jax.Array, PyTree]:
        """(scalar training loss, new model_state)."""

    @abc.abstractmethod
    def normalizer(self, loss: jax.Array, cfg: PyTree = None) -> jax.Array:
        """Map a loss to the common meta-loss scale (reference spec section 5.2). Some
        families' scales depend on the task's inner configuration, hence `cfg`."""

    @abc.abstractmethod
    def get_batch(self, rng: np.random.Generator, split: str) -> PyTree:
        """One batch of the split ('train', 'inner_valid', 'outer_valid', 'test'), numpy."""

    @abc.abstractmethod
    def batch_spec(self) -> PyTree:
        """The batch's `jax.ShapeDtypeStruct`s (no data is loaded)."""

    @abc.abstractmethod
    def forward_flops(self) -> float:
        """Analytic FLOPs of one forward pass over one batch (for the cost model)."""

    # ---------------------------------------------------------------- derived

    def step_flops(self) -> float:
        """FLOPs of one training step: forward and backward (~3x forward)."""
        return 3.0 * self.forward_flops()

    def sequential_steps(self) -> int:
        """Length of the longest sequential loop in a step (an RNN's time steps, an inner
        unroll); 0 for feed-forward models. A cost-model feature."""
        return 0

    @functools.cached_property
    def num_params(self) -> int:
        def params(key):
            cfg = self.sample(key)
            if isinstance(cfg, dict):  # shapes do not depend on the sampled initialiser, and
                # tracing its switch is slow: the family's default one
                cfg = {k: v for k, v in cfg.items() if k not in ("init", "init_scale")}
            return self.init(key, cfg)[0]

        shapes = jax.eval_shape(params, jax.random.PRNGKey(0))
        return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes)))

    def loss_and_grad(self, params, state, key, batch, cfg):
        """((loss, new_state), grads) of `loss` with respect to params."""
        return jax.value_and_grad(self.loss, has_aux=True)(params, state, key, batch, cfg)

    def task(self, cfg: PyTree) -> Task:
        return Task(self, cfg)

    def batches(self, split: str, seed: int = 0) -> Iterator[PyTree]:
        """An endless stream of batches of `split`, reproducible from `seed`."""
        rng = np.random.default_rng(seed)
        while True:
            yield self.get_batch(rng, split)

    def stacked_batches(self, rng: np.random.Generator, split: str, num: int) -> PyTree:
        """`num` batches stacked on a leading axis, for a `lax.scan` over steps."""
        return jax.tree.map(lambda *xs: np.stack(xs), *[self.get_batch(rng, split) for _ in range(num)])


@dataclasses.dataclass(frozen=True)
class Task:
    """A family with its inner configuration bound: the single-task view."""

    family: TaskFamily
    cfg: PyTree

    def init(self, key: jax.Array) -> tuple[PyTree, PyTree]:
        return self.family.init(key, self.cfg)

    def loss(self, params, state, key, batch) -> tuple[jax.Array, PyTree]:
        return self.family.loss(params, state, key, batch, self.cfg)

    def normalizer(self, loss: jax.Array) -> jax.Array:
        return self.family.normalizer(loss, self.cfg)

    def batches(self, split: str, seed: int = 0) -> Iterator[PyTree]:
        return self.family.batches(split, seed)

    @property
    def name(self) -> str:
        return self.family.name


def with_batch_size(family: TaskFamily, batch_size: int) -> TaskFamily:
    """`family` with every `batch_size` in it set to `batch_size`, through wrappers
    (augmentations, learned-optimizer tasks) via their `inner` family."""
    fields = {f.name for f in dataclasses.fields(family)}
    changes: dict[str, Any] = {"batch_size": int(batch_size)} if "batch_size" in fields else {}
    if "inner" in fields:
        changes["inner"] = with_batch_size(family.inner, batch_size)
    return dataclasses.replace(family, **changes) if changes else family


def spec(shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def train_scan(family: TaskFamily, optimizer, key: jax.Array, batches: PyTree, cfg: PyTree | None = None,
               with_loss_value: bool = True) -> tuple[PyTree, PyTree, jax.Array]:  # fmt: skip
    """Train one task of `family` with an optax optimizer over stacked `batches` ([steps, ...])
    in one `lax.scan` (jit it). Returns (final params, final model state, losses [steps]).
    The model state matters for evaluation: BatchNorm statistics, delayed-gradient buffers.
    The task (its cfg unless given, and its weights) comes from `rollout.instantiate` under
    stream "task" of `key`, step i's loss key from stream ("train_loss", i) (see
    `tasks.key_streams`). `value=` is passed to the optimizer when `with_loss_value` (VeLO
    needs it; plain optax ignores it)."""
    from tasks import rollout  # lazy: tasks.rollout imports this module

    cfg, params, state = rollout.instantiate(family, stream(key, "task"), cfg)
    stepper = rollout.OptaxStepper(optimizer, pass_loss=with_loss_value)
    steps = jax.tree.leaves(batches)[0].shape[0]
    run = rollout.start(stepper, params, state, steps)
    run, losses = rollout.train(family, stepper, cfg, run, batches, streams(key, "train_loss", jnp.arange(steps)))
    return run.params, run.model_state, losses
