"""Training a learned optimizer as a task (reference: tasks/parametric/lopt.py,
tasks/fixed/lopt.py; learned_optimizers/base.py, mlp_lopt.py, adafac_mlp_lopt.py).

The task's params are the meta-parameters of a small inner optimizer; its loss is the mean,
over an outer batch of inner tasks, of the mean normalised training loss along a full
unroll of `num_steps` inner steps:

    family = LOpt(ImageMLP("fashion_mnist", (32,), image_size=8), MLPLOpt(), num_steps=10)
    meta, _ = family.init(key, {})
    loss, _ = family.loss(meta, {}, key, family.get_batch(rng, "train"), {})

Inner optimizers are frozen dataclasses with pure functions `init_meta(key)`,
`init(meta, params)` and `update(meta, state, params, grads) -> (params, state)`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tasks import rollout, sampling
from tasks.base import TaskFamily, spec
from tasks.families import common, image_conv, image_mlp
from tasks.key_streams import streams
from velojax.tensor_update import factored_dims

PyTree = Any

# ------------------------------------------------------------------ helpers


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _apply_mlp_steps(theta, params: PyTree, feats: list, iteration, exp_mult: float, step_mult: float) -> PyTree:
    """params minus the MLP's steps. `feats` holds, per leaf of params (in order), its
    features [leaf size, F], already normalised; one MLP call serves all leaves."""
    leaves, treedef = jax.tree.flatten(params)
    flat = jnp.concatenate(feats, axis=0)
    t = jnp.broadcast_to(_time_features(iteration), (flat.shape[0], 11))
    out = _apply_mlp(theta, jnp.concatenate([flat, t], axis=-1))
    steps = out[:, 0] * jnp.exp(out[:, 1] * exp_mult) * step_mult
    splits = np.cumsum([p.size for p in leaves])[:-1]
    new = [_sub(p, s.reshape(p.shape)) for p, s in zip(leaves, jnp.split(steps, splits))]
    return treedef.unflatten(new)


def _leaf_features(*features: jax.Array) -> jax.Array:
    """Per-element features of one tensor ([*shape, k_i] each) -> [size, sum k_i], each
    normalised to unit mean square over the tensor (scalars become one row)."""
    x = jnp.concatenate(features, axis=-1)
    return _second_moment_normalize(x.reshape((-1, x.shape[-1])))


def _time_features(iteration: jax.Array) -> jax.Array:
    """tanh(t / s - 1) for timescales s from 1 to 1e5: the training-step embedding [11]."""
    scales = jnp.asarray([1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000], jnp.float32)
    return jnp.tanh(iteration.astype(jnp.float32) / scales - 1.0)


def _second_moment_normalize(x: jax.Array) -> jax.Array:
    """Each feature (last axis) scaled to unit mean square over the tensor's elements."""
    axes = tuple(range(x.ndim - 1))
    return x * jax.lax.rsqrt(1e-5 + jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def _init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> dict:
    """Dense layers sizes[0] -> ... -> sizes[-1] with haiku-default weights and zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    out = {}
    for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        out[f"w{i}"] = common.default_init(k, (a, b))
        out[f"b{i}"] = jnp.zeros((b,), jnp.float32)
    return out


def _apply_mlp(theta: dict, x: jax.Array) -> jax.Array:
    n = len(theta) // 2
    for i in range(n):
        x = x @ theta[f"w{i}"] + theta[f"b{i}"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def _mlp_flops(sizes: tuple[int, ...]) -> float:
    return common.dense_flops(sizes, 1)


def _zeros(params: PyTree, *extra: int) -> PyTree:
    """float32 accumulators shaped like params (plus `extra` trailing axes): the optimizer
    state keeps float32 whatever the params' dtype."""
    return jax.tree.map(lambda p: jnp.zeros(p.shape + extra, jnp.float32), params)


def _f32(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def _sub(p: jax.Array, step: jax.Array) -> jax.Array:
    """p - step in float32, stored back in p's dtype."""
    return (p.astype(jnp.float32) - step).astype(p.dtype)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt with a zero (not NaN) meta-gradient at 0, where dead units leave v = 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _ema(decay: jax.Array, old: jax.Array, new: jax.Array) -> jax.Array:
    return decay * old + (1.0 - decay) * new


# ------------------------------------------------------------------ inner optimizers


@dataclasses.dataclass(frozen=True)
class InnerOptimizer(abc.ABC):
    """A small learned optimizer: meta-parameters `theta` (a pytree of arrays) and pure
    functions of them. Subclasses are hashable frozen dataclasses of static settings."""

    def describe(self) -> str:
        """The class name and the settings that differ from the defaults (unique)."""
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return type(self).__name__ + (f"[{','.join(changed)}]" if changed else "")

    @abc.abstractmethod
    def init_meta(self, key: jax.Array) -> PyTree:
        """The meta-parameters at the reference's initialisation."""

    @abc.abstractmethod
    def init(self, theta: PyTree, params: PyTree) -> PyTree:
        """The inner optimizer state for `params`."""

    @abc.abstractmethod
    def update(self, theta: PyTree, state: PyTree, params: PyTree, grads: PyTree) -> tuple[PyTree, PyTree]:
        """One step: (new params, new state)."""

    @abc.abstractmethod
    def flops_per_param(self) -> float:
        """Approximate FLOPs of one update per parameter (for the cost model)."""


@dataclasses.dataclass(frozen=True)
class LearnableSGD(InnerOptimizer):
    """SGD with a learned log learning rate."""

    initial_lr: float = 0.01

    def init_meta(self, key):
        return {"log_lr": jnp.asarray(math.log(self.initial_lr), jnp.float32)}

    def init(self, theta, params):
        return {}

    def update(self, theta, state, params, grads):
        lr = jnp.exp(theta["log_lr"])
        return jax.tree.map(lambda p, g: _sub(p, lr * g), params, _f32(grads)), state

    def flops_per_param(self):
        return 2.0


@dataclasses.dataclass(frozen=True)
class LearnableSGDM(InnerOptimizer):
    """SGD with momentum (m = mu m + g; p -= lr m); learned log lr and logit(mu)."""

    initial_lr: float = 0.01
    initial_momentum: float = 0.9

    def init_meta(self, key):
        return {
            "log_lr": jnp.asarray(math.log(self.initial_lr), jnp.float32),
            "logit_momentum": jnp.asarray(_logit(self.initial_momentum), jnp.float32),
        }

    def init(self, theta, params):
        return {"m": _zeros(params)}

    def update(self, theta, state, params, grads):
        lr, mu = jnp.exp(theta["log_lr"]), jax.nn.sigmoid(theta["logit_momentum"])
        m = jax.tree.map(lambda m, g: mu * m + g, state["m"], _f32(grads))
        return jax.tree.map(lambda p, m: _sub(p, lr * m), params, m), {"m": m}

    def flops_per_param(self):
        return 4.0


@dataclasses.dataclass(frozen=True)
class LearnableAdam(InnerOptimizer):
    """Bias-corrected Adam with learned log lr, logit(b1), logit(b2) and log eps."""

    initial_lr: float = 1e-3
    initial_b1: float = 0.9
    initial_b2: float = 0.999
    initial_eps: float = 1e-8

    def init_meta(self, key):
        f32 = jnp.float32
        return {
            "log_lr": jnp.asarray(math.log(self.initial_lr), f32),
            "logit_b1": jnp.asarray(_logit(self.initial_b1), f32),
            "logit_b2": jnp.asarray(_logit(self.initial_b2), f32),
            "log_eps": jnp.asarray(math.log(self.initial_eps), f32),
        }

    def init(self, theta, params):
        return {"m": _zeros(params), "v": _zeros(params), "count": jnp.zeros((), jnp.int32)}

    def update(self, theta, state, params, grads):
        lr, eps = jnp.exp(theta["log_lr"]), jnp.exp(theta["log_eps"])
        b1, b2 = jax.nn.sigmoid(theta["logit_b1"]), jax.nn.sigmoid(theta["logit_b2"])
        count = state["count"] + 1
        t = count.astype(jnp.float32)
        grads = _f32(grads)
        m = jax.tree.map(lambda m, g: _ema(b1, m, g), state["m"], grads)
        v = jax.tree.map(lambda v, g: _ema(b2, v, jnp.square(g)), state["v"], grads)
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t

        def step(p, m, v):
            return _sub(p, lr * (m / c1) / (_safe_sqrt(v / c2) + eps))

        return jax.tree.map(step, params, m, v), {"m": m, "v": v, "count": count}

    def flops_per_param(self):
        return 12.0


@dataclasses.dataclass(frozen=True)
class MLPLOpt(InnerOptimizer):
    """A per-parameter MLP (the reference's MLPLOpt / LOLv2): features g, p and momenta at
    6 fixed decays, each normalised over its tensor, plus an 11-wide step embedding -> MLP ->
    (direction d, magnitude s); step = d * exp(s * exp_mult) * step_mult."""

    hidden_size: int = 32
    hidden_layers: int = 2
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    decays: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)

    @property
    def num_features(self) -> int:
        return 2 + len(self.decays) + 11

    def _sizes(self) -> tuple[int, ...]:
        return (self.num_features,) + (self.hidden_size,) * self.hidden_layers + (2,)

    def init_meta(self, key):
        return _init_mlp(key, self._sizes())

    def init(self, theta, params):
        k = len(self.decays)
        return {
            "m": _zeros(params, k),
            "iteration": jnp.zeros((), jnp.int32),
        }

    def update(self, theta, state, params, grads):
        decays = jnp.asarray(self.decays, jnp.float32)
        grads = _f32(grads)
        m = jax.tree.map(lambda m, g: _ema(decays, m, g[..., None]), state["m"], grads)
        leaves, treedef = jax.tree.flatten(params)
        feats = [
            _leaf_features(g[..., None], p[..., None].astype(jnp.float32), mm)
            for p, g, mm in zip(leaves, treedef.flatten_up_to(grads), treedef.flatten_up_to(m))
        ]
        new_params = _apply_mlp_steps(theta, params, feats, state["iteration"], self.exp_mult, self.step_mult)
        return new_params, {"m": m, "iteration": state["iteration"] + 1}

    def flops_per_param(self):
        return _mlp_flops(self._sizes()) + 8.0 * self.num_features


@dataclasses.dataclass(frozen=True)
class AdafacMLPLOpt(InnerOptimizer):
    """MLPLOpt with Adafactor-style features (the reference's AdafacMLPLOpt): momenta,
    an RMS, factored second moments (row/column accumulators of g^2 over the two largest
    axes; a full accumulator for vectors) and products of them; the decays of all three
    accumulators are meta-learned (logit offsets from their initial values)."""

    hidden_size: int = 4
    hidden_layers: int = 2
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    momentum_decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: tuple[float, ...] = (0.999,)
    adafactor_decays: tuple[float, ...] = (0.9, 0.99, 0.999)

    @property
    def num_features(self) -> int:
        # g, p, m, rms, m/sqrt(rms), 1/sqrt(rms), fac_g, row, col, 1/sqrt(row), 1/sqrt(col), m/sqrt(v_fac); + time
        nm, nr, nf = len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays)
        return 2 + 2 * nm + 2 * nr + 6 * nf + 11

    def _sizes(self) -> tuple[int, ...]:
        return (self.num_features,) + (self.hidden_size,) * self.hidden_layers + (2,)

    def init_meta(self, key):
        return {
            "momentum_decays": jnp.zeros((len(self.momentum_decays),), jnp.float32),
            "rms_decays": jnp.zeros((len(self.rms_decays),), jnp.float32),
            "adafactor_decays": jnp.zeros((len(self.adafactor_decays),), jnp.float32),
            "nn": _init_mlp(key, self._sizes()),
        }

    def _decays(self, theta, name):
        initial = jnp.asarray([_logit(d) for d in getattr(self, name)], jnp.float32)
        return jax.nn.sigmoid(initial + theta[name])

    def init(self, theta, params):
        nm, nr, nf = len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays)

        def fac(p):
            dims = factored_dims(p.shape)
            if dims is None:
                return {"v": jnp.zeros(p.shape + (nf,), jnp.float32)}
            a, b = dims
            row = [1 if i == b else n for i, n in enumerate(p.shape)]
            col = [1 if i == a else n for i, n in enumerate(p.shape)]
            return {"row": jnp.zeros((*row, nf), jnp.float32), "col": jnp.zeros((*col, nf), jnp.float32)}

        return {
            "m": _zeros(params, nm),
            "rms": _zeros(params, nr),
            "fac": jax.tree.map(fac, params),
            "iteration": jnp.zeros((), jnp.int32),
        }

    def update(self, theta, state, params, grads):
        mom_d = self._decays(theta, "momentum_decays")
        rms_d = self._decays(theta, "rms_decays")
        fac_d = self._decays(theta, "adafactor_decays")

        def one(p, g, m, rms, fac):
            """New accumulators and the features of one tensor."""
            g1 = g.astype(jnp.float32)[..., None]
            m = _ema(mom_d, m, g1)
            rms = _ema(rms_d, rms, jnp.square(g1))
            g2 = jnp.square(g1) + 1e-30  # Adafactor's epsilon_1
            dims = factored_dims(p.shape)
            if dims is None:
                fac = {"v": _ema(fac_d, fac["v"], g2)}
                row = col = v = fac["v"]
            else:
                a, b = dims
                row = _ema(fac_d, fac["row"], jnp.mean(g2, axis=b, keepdims=True))
                col = _ema(fac_d, fac["col"], jnp.mean(g2, axis=a, keepdims=True))
                fac = {"row": row, "col": col}
                # v_ij = R_i C_j / mean_i R_i, the rank-1 Adafactor estimate of E[g^2].
                v = row * col / jnp.mean(row, axis=a, keepdims=True)
            full = p.shape + (len(self.adafactor_decays),)
            rsqrt_rms = jax.lax.rsqrt(rms + 1e-6)
            rsqrt_v = jax.lax.rsqrt(v + 1e-8)
            feats = _leaf_features(
                g1,
                p[..., None].astype(jnp.float32),
                m,
                rms,
                m * rsqrt_rms[..., -1:],  # momenta over the slowest RMS
                rsqrt_rms,
                jnp.broadcast_to(g1 * rsqrt_v, full),
                jnp.broadcast_to(row, full),
                jnp.broadcast_to(col, full),
                jnp.broadcast_to(jax.lax.rsqrt(row + 1e-8), full),
                jnp.broadcast_to(jax.lax.rsqrt(col + 1e-8), full),
                jnp.broadcast_to(m[..., -1:] * rsqrt_v, full),  # the slowest momentum, Adafactor-scaled
            )
            return feats, {"m": m, "rms": rms, "fac": fac}

        leaves, treedef = jax.tree.flatten(params)
        per_leaf = [
            one(*xs)
            for xs in zip(leaves, *(treedef.flatten_up_to(t) for t in (grads, state["m"], state["rms"], state["fac"])))
        ]
        new_params = _apply_mlp_steps(
            theta["nn"], params, [f for f, _ in per_leaf], state["iteration"], self.exp_mult, self.step_mult
        )
        new_state = {k: treedef.unflatten([st[k] for _, st in per_leaf]) for k in ("m", "rms", "fac")}
        new_state["iteration"] = state["iteration"] + 1
        return new_params, new_state

    def flops_per_param(self):
        return _mlp_flops(self._sizes()) + 10.0 * self.num_features


@dataclasses.dataclass(frozen=True)
class InnerStepper:
    """An inner optimizer at meta-parameters `theta` as a `tasks.rollout` stepper (it takes
    neither the run's length nor the loss)."""

    optimizer: InnerOptimizer
    theta: PyTree

    def init(self, params, num_steps=None):
        del num_steps
        return self.optimizer.init(self.theta, params)

    def update(self, grads, opt_state, params, loss):
        del loss
        return self.optimizer.update(self.theta, opt_state, params, grads)


INNER_OPTIMIZERS: dict[str, type[InnerOptimizer]] = {
    "LearnableAdam": LearnableAdam,
    "LearnableSGDM": LearnableSGDM,
    "LearnableSGD": LearnableSGD,
    "MLPLOpt": MLPLOpt,
    "AdafacMLPLOpt": AdafacMLPLOpt,
}


# ------------------------------------------------------------------ the family


@dataclasses.dataclass(frozen=True)
class LOpt(TaskFamily):
    """Meta-training `optimizer` on `inner` as a task. params = the optimizer's
    meta-parameters; loss = mean over `outer_batch_size` inner tasks (each with its own
    inner config and initial weights from the loss key) of the mean normalised inner
    training loss along a `num_steps` unroll. The inner step is rematerialised, so only
    the scan carry (params and optimizer state) is kept per step. The batch is
    {"inner": inner batches stacked [outer_batch_size, num_steps, ...]}. The normalizer is
    the inner task's, applied again to this (already normalised) loss, as the reference's."""

    inner: TaskFamily
    optimizer: InnerOptimizer
    num_steps: int = 10
    outer_batch_size: int = 1

    def describe(self) -> str:
        return f"LOpt_{self.optimizer.describe()}_{self.inner.name}_{self.num_steps}steps_obs{self.outer_batch_size}"

    def init(self, key, cfg):
        return self.optimizer.init_meta(key), {}

    def unroll(self, theta, key, inner_batches, normalized: bool = False) -> jax.Array:
        """The inner training losses [num_steps] (normalised by the inner task's normalizer
        if `normalized`) of one inner task, drawn from `key` (`rollout.instantiate`), trained
        by the optimizer with meta-parameters `theta` on `inner_batches` ([num_steps, ...]),
        step i's loss key from stream ("train_loss", i) of `key`."""
        inner = self.inner
        cfg, params, state = rollout.instantiate(inner, key)
        stepper = InnerStepper(self.optimizer, theta)

        @jax.checkpoint  # recompute each inner step's activations in the backward pass
        def step(run, xs):
            return rollout.step(inner, stepper, cfg, run, *xs)

        run = rollout.start(stepper, params, state, self.num_steps)
        keys = streams(key, "train_loss", jnp.arange(self.num_steps))
        _, losses = jax.lax.scan(step, run, (inner_batches, keys))
        return jax.vmap(lambda x: inner.normalizer(x, cfg))(losses) if normalized else losses

    def loss(self, params, state, key, batch, cfg):
        def one(inner_batches, k):
            return jnp.mean(self.unroll(params, k, inner_batches, normalized=True))

        keys = streams(key, "task", jnp.arange(self.outer_batch_size))  # one inner task per unroll
        return jnp.mean(jax.vmap(one)(batch["inner"], keys)), state

    def normalizer(self, loss, cfg=None):
        # The inner tasks' configs are per unroll, not known here: the inner normalizer
        # gets none (ImageMLP's and ImageConv's do not use it).
        return self.inner.normalizer(loss)

    def get_batch(self, rng, split):
        unrolls = [self.inner.stacked_batches(rng, split, self.num_steps) for _ in range(self.outer_batch_size)]
        return {"inner": jax.tree.map(lambda *xs: np.stack(xs), *unrolls)}

    def batch_spec(self):
        lead = (self.outer_batch_size, self.num_steps)
        return {"inner": jax.tree.map(lambda s: spec(lead + tuple(s.shape), s.dtype), self.inner.batch_spec())}

    def sequential_steps(self) -> int:
        return self.num_steps * max(1, self.inner.sequential_steps())

    def forward_flops(self) -> float:
        per_step = self.inner.step_flops() + self.optimizer.flops_per_param() * self.inner.num_params
        return per_step * self.num_steps * self.outer_batch_size


def sample_lopt(rng: np.random.Generator, datasets: tuple[str, ...] = image_mlp.IMAGE_DATASETS) -> LOpt:
    """The reference's sampler, in its draw order: inner family = a sampled ImageMLP; the
    optimizer uniform over the 5; for the MLP ones hidden log_int(2,512), layers
    log_int(1,4), exp_mult and step_mult log_float(1e-5,1); inner steps log_int(1,100);
    outer batch log_int(1,8)."""
    inner = image_mlp.sample_image_mlp(rng, datasets=datasets)
    name = sampling.choice(rng, tuple(INNER_OPTIMIZERS))
    kwargs = {}
    if name in ("MLPLOpt", "AdafacMLPLOpt"):
        kwargs["hidden_size"] = sampling.log_int(rng, 2, 512)
        kwargs["hidden_layers"] = sampling.log_int(rng, 1, 4)
        kwargs["exp_mult"] = sampling.log_float(rng, 1e-5, 1)
        kwargs["step_mult"] = sampling.log_float(rng, 1e-5, 1)
    optimizer = INNER_OPTIMIZERS[name](**kwargs)
    num_steps = sampling.log_int(rng, 1, 100)
    outer_batch_size = sampling.log_int(rng, 1, 8)
    return LOpt(inner, optimizer, num_steps=num_steps, outer_batch_size=outer_batch_size)


# ------------------------------------------------------------------ fixed tasks


def _conv_inner(image_size: int, widths: tuple[int, ...]) -> TaskFamily:
    """The reference's small CIFAR-10 convnet (ReLU, first conv stride 2, batch 128)."""
    return image_conv.fixed_conv("cifar10", widths, image_size=image_size)


def _inner_task(name: str) -> TaskFamily:
    if name in ("FashionMnist", "FahionMnist"):  # the reference's typo is part of some names
        return image_mlp.FIXED["ImageMLP_FashionMnist8_Relu32"]()
    if name == "Cifar10_8":
        return _conv_inner(8, (16, 32))
    if name == "Cifar10_16":
        return _conv_inner(16, (32, 64, 64))
    raise ValueError(f"unknown LOpt inner task {name!r}")


def fixed_lopt(name: str) -> TaskFamily:
    """The fixed task `name` = LOpt_[ES4_[LOpt_]]<Opt>_<Inner>_<K>: the reference's LOptTask
    (one inner task per loss, K inner steps, the default optimizer settings);
    ES4 = wrapped in ES gradients (std 0.01, 4 antithetic pairs)."""
    rest = name.removeprefix("LOpt_")
    if rest.startswith("ES4_"):
        from tasks import augmentations  # lazy: the augmentations import nothing of ours

        return augmentations.es_gradient(fixed_lopt("LOpt_" + rest[4:].removeprefix("LOpt_")), std=0.01, num_pairs=4)
    opt, *inner, steps = rest.split("_")
    return LOpt(
        _inner_task("_".join(inner)),
        INNER_OPTIMIZERS[opt](),
        num_steps=int(steps),
        outer_batch_size=1,
    )


FIXED_NAMES = (
    "LOpt_AdafacMLPLOpt_Cifar10_8_10",
    "LOpt_AdafacMLPLOpt_FashionMnist_20",
    "LOpt_AdafacMLPLOpt_FashionMnist_50",
    "LOpt_ES4_AdafacMLPLOpt_FashionMnist_20",
    "LOpt_ES4_LOpt_MLPLOpt_Cifar10_16_10",
    "LOpt_ES4_LOpt_MLPLOpt_FahionMnist_50",
    "LOpt_LearnableAdam_Cifar10_8_200",
    "LOpt_LearnableAdam_Cifar10_8_50",
    "LOpt_MLPLOpt_Cifar10_16_10",
    "LOpt_MLPLOpt_Cifar10_8_50",
    "LOpt_MLPLOpt_FahionMnist_10",
    "LOpt_MLPLOpt_FahionMnist_100",
    "LOpt_MLPLOpt_FahionMnist_50",
)
FIXED = {name: (lambda name=name: fixed_lopt(name)) for name in FIXED_NAMES}
