"""Task augmentations (reference spec section 5.3): wrappers from a family to a family.

Each wrapper keeps the wrapped family's normalizer and changes one thing: the parameter
geometry (`reparam_weights`), the gradient the optimizer sees (`es_gradient`,
`normalize_gradient`, `subsample_directions`, `delayed_gradients`), the batch
(`reduced_batch`) or the dtype (`bfloat16`). Gradient changes are custom VJPs of the
loss with respect to the params, so any optimizer (VeLO included) sees them through an
ordinary `jax.grad`. Per-task randomness (scales, keys) lives in the task's `cfg`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from tasks.base import TaskFamily

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Augmented(TaskFamily):
    """Delegates everything to `inner`; subclasses override what they change."""

    inner: TaskFamily

    def describe(self) -> str:
        return f"{self.inner.name}+{self.tag()}"

    def tag(self) -> str:
        return type(self).__name__

    def sample(self, key):
        return {"inner": self.inner.sample(key)}

    def init(self, key, cfg):
        return self.inner.init(key, cfg["inner"])

    def loss(self, params, state, key, batch, cfg):
        return self.inner.loss(params, state, key, batch, cfg["inner"])

    def normalizer(self, loss, cfg=None):
        return self.inner.normalizer(loss, None if cfg is None else cfg["inner"])

    def get_batch(self, rng, split):
        return self.inner.get_batch(rng, split)

    def batch_spec(self):
        return self.inner.batch_spec()

    def forward_flops(self) -> float:
        return self.inner.forward_flops()

    def sequential_steps(self) -> int:
        return self.inner.sequential_steps()

    @functools.cached_property
    def num_params(self) -> int:
        return self.inner.num_params  # no augmentation changes the parameters' shapes

    def base(self) -> TaskFamily:
        """The innermost, un-augmented family."""
        return self.inner.base() if isinstance(self.inner, Augmented) else self.inner

    def augmentations(self) -> list[str]:
        """Tags of the wrappers, innermost first."""
        inner = self.inner.augmentations() if isinstance(self.inner, Augmented) else []
        return inner + [self.tag()]


def _param_shapes(family: TaskFamily) -> PyTree:
    key = jax.random.PRNGKey(0)
    return jax.eval_shape(lambda k: family.init(k, family.sample(k))[0], key)


def _with_replaced_grad(value_fn, grad_fn):
    """A function of params whose value is value_fn(params) = (loss, aux) and whose
    gradient (for the loss) is grad_fn(params) * cotangent; aux gets no gradient."""

    @jax.custom_vjp
    def f(params):
        return value_fn(params)

    def fwd(params):
        return value_fn(params), params

    def bwd(params, cotangent):
        ct_loss = cotangent[0]
        return (jax.tree.map(lambda g: (g * ct_loss).astype(g.dtype), grad_fn(params)),)

    f.defvjp(fwd, bwd)
    return f


# ---------------------------------------------------------------- reparametrisation


@dataclasses.dataclass(frozen=True)
class ReparamWeights(Augmented):
    """Stores w / s and evaluates the inner loss at (w / s) * s: the function is unchanged,
    the optimisation geometry is not. s = exp(U(log lo, log hi)), one per task ("global"),
    per tensor ("tensor"), or per parameter ("parameter", regenerated from a stored key)."""

    level: str = "global"
    scale_range: tuple[float, float] = (0.01, 100.0)

    def __post_init__(self):
        if self.level not in ("global", "tensor", "parameter"):
            raise ValueError(f"level must be global, tensor or parameter, got {self.level!r}")

    def tag(self):
        return f"Reparam[{self.level},{self.scale_range[0]:g}-{self.scale_range[1]:g}]"

    def _draw(self, key, shape):
        lo, hi = (math.log(x) for x in self.scale_range)
        return jnp.exp(jax.random.uniform(key, shape, jnp.float32, lo, hi))

    def sample(self, key):
        k_inner, k_scale = jax.random.split(key)
        cfg = {"inner": self.inner.sample(k_inner)}
        if self.level == "global":
            cfg["scale"] = self._draw(k_scale, ())
        elif self.level == "tensor":
            leaves, treedef = jax.tree.flatten(_param_shapes(self.inner))
            keys = jax.random.split(k_scale, len(leaves))
            cfg["scale"] = jax.tree.unflatten(treedef, [self._draw(k, ()) for k in keys])
        else:
            cfg["scale_key"] = k_scale
        return cfg

    def scales(self, cfg, params: PyTree) -> PyTree:
        """The scale of every parameter, broadcastable to params."""
        if self.level == "global":
            return jax.tree.map(lambda _: cfg["scale"], params)
        if self.level == "tensor":
            return cfg["scale"]
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(cfg["scale_key"], len(leaves))
        return jax.tree.unflatten(treedef, [self._draw(k, p.shape) for k, p in zip(keys, leaves)])

    def init(self, key, cfg):
        params, state = self.inner.init(key, cfg["inner"])
        scales = self.scales(cfg, params)
        return jax.tree.map(lambda p, s: (p / s).astype(p.dtype), params, scales), state

    def loss(self, params, state, key, batch, cfg):
        scales = self.scales(cfg, params)
        actual = jax.tree.map(lambda p, s: (p * s).astype(p.dtype), params, scales)
        return self.inner.loss(actual, state, key, batch, cfg["inner"])


def reparam_weights(family: TaskFamily, level: str = "global", scale_range=(0.01, 100.0)) -> ReparamWeights:
    return ReparamWeights(family, level=level, scale_range=tuple(scale_range))


# ---------------------------------------------------------------- ES gradients


@dataclasses.dataclass(frozen=True)
class ESGradient(Augmented):
    """The forward pass is unchanged; the gradient is replaced by an antithetic evolution-
    strategies estimate on the same batch and key: mean over `num_pairs` of
    eps (f(w + eps) - f(w - eps)) / (2 std^2), eps ~ N(0, std^2)."""

    std: float = 0.01
    num_pairs: int = 1

    def tag(self):
        return f"ES[{self.num_pairs}pair,std{self.std:g}]"

    def loss(self, params, state, key, batch, cfg):
        inner_cfg = cfg["inner"]
        es_key = jax.random.fold_in(key, 0x5E5)

        def value(p):
            return self.inner.loss(p, state, key, batch, inner_cfg)

        def es_grad(p):
            leaves, treedef = jax.tree.flatten(p)

            def one_pair(k):
                keys = jax.random.split(k, len(leaves))
                eps = jax.tree.unflatten(
                    treedef, [self.std * jax.random.normal(kk, x.shape, jnp.float32) for kk, x in zip(keys, leaves)]
                )
                plus = jax.tree.map(lambda x, e: (x + e).astype(x.dtype), p, eps)
                minus = jax.tree.map(lambda x, e: (x - e).astype(x.dtype), p, eps)
                diff = value(plus)[0] - value(minus)[0]
                return jax.tree.map(lambda e: e * diff / (2 * self.std**2), eps)

            grads = jax.lax.map(one_pair, jax.random.split(es_key, self.num_pairs))
            return jax.tree.map(lambda g, x: jnp.mean(g, axis=0).astype(x.dtype), grads, p)

        return _with_replaced_grad(value, es_grad)(params)

    def forward_flops(self) -> float:
        return self.inner.forward_flops()

    def step_flops(self) -> float:
        return (1 + 2 * self.num_pairs) * self.inner.forward_flops()  # no backward pass


def es_gradient(family: TaskFamily, std: float = 0.01, num_pairs: int = 1) -> ESGradient:
    return ESGradient(family, std=float(std), num_pairs=int(num_pairs))


# ---------------------------------------------------------------- batch and dtype


@dataclasses.dataclass(frozen=True)
class ReducedBatch(Augmented):
    """Every batch leaf keeps its first max(1, int(B * fraction)) rows."""

    fraction: float = 0.5

    def tag(self):
        return f"ReducedBatch[{self.fraction:.3g}]"

    def _rows(self, batch_size: int) -> int:
        return max(1, int(batch_size * self.fraction))

    def get_batch(self, rng, split):
        batch = self.inner.get_batch(rng, split)
        return jax.tree.map(lambda x: x[: self._rows(x.shape[0])], batch)

    def batch_spec(self):
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct((self._rows(s.shape[0]),) + tuple(s.shape[1:]), s.dtype),
            self.inner.batch_spec(),
        )

    def forward_flops(self) -> float:
        rows = jax.tree.leaves(self.inner.batch_spec())[0].shape[0]
        return self.inner.forward_flops() * self._rows(rows) / rows


def reduced_batch(family: TaskFamily, fraction: float) -> ReducedBatch:
    return ReducedBatch(family, fraction=float(fraction))


@dataclasses.dataclass(frozen=True)
class BFloat16(Augmented):
    """Params are bfloat16 from init; float data (uint8 images become [0, 1] floats) enters
    the loss as bfloat16, so gradients, and an optimizer's moments, are bfloat16."""

    def tag(self):
        return "BF16"

    def init(self, key, cfg):
        params, state = self.inner.init(key, cfg["inner"])
        return jax.tree.map(
            lambda p: p.astype(jnp.bfloat16) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
        ), state

    def loss(self, params, state, key, batch, cfg):
        def convert(x):
            if x.dtype == jnp.uint8:
                return x.astype(jnp.bfloat16) / 255.0
            return x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x

        return self.inner.loss(params, state, key, jax.tree.map(convert, batch), cfg["inner"])


def bfloat16(family: TaskFamily) -> BFloat16:
    return BFloat16(family)


# ---------------------------------------------------------------- gradient transforms


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class NormalizeGradient(Augmented):
    """The gradient is divided by its global L2 norm (over all leaves)."""

    def tag(self):
        return "NormalizeGrad"

    def loss(self, params, state, key, batch, cfg):
        def value(p):
            return self.inner.loss(p, state, key, batch, cfg["inner"])

        def grad(p):
            g = jax.grad(lambda q: value(q)[0])(p)
            norm = _global_norm(g)
            return jax.tree.map(lambda x: (x / jnp.maximum(norm, 1e-30)).astype(x.dtype), g)

        return _with_replaced_grad(value, grad)(params)


def normalize_gradient(family: TaskFamily) -> NormalizeGradient:
    return NormalizeGradient(family)


@dataclasses.dataclass(frozen=True)
class SubsampleDirections(Augmented):
    """The gradient is replaced by sum_u a_u u over `directions` random directions u
    (Gaussian, unit global norm), with a_u = <g, u> (or sign(<g, u>) with
    `sign_direction`). In expectation that is (directions / n) g for n parameters: the
    reference's scale, kept."""

    directions: int = 1
    sign_direction: bool = False

    def tag(self):
        return f"SubsampleDirections[{self.directions}{',sign' if self.sign_direction else ''}]"

    def loss(self, params, state, key, batch, cfg):
        dir_key = jax.random.fold_in(key, 0xD1)

        def value(p):
            return self.inner.loss(p, state, key, batch, cfg["inner"])

        def grad(p):
            g = jax.grad(lambda q: value(q)[0])(p)
            return project_on_random_directions(g, dir_key, self.directions, self.sign_direction)

        return _with_replaced_grad(value, grad)(params)


def project_on_random_directions(g: PyTree, key: jax.Array, directions: int, sign: bool = False) -> PyTree:
    """sum over `directions` unit-norm Gaussian directions u of <g, u> u (or sign(<g,u>) u)."""
    leaves, treedef = jax.tree.flatten(g)

    def one(k):
        keys = jax.random.split(k, len(leaves))
        u = [jax.random.normal(kk, x.shape, jnp.float32) for kk, x in zip(keys, leaves)]
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in u))
        u = [x / norm for x in u]
        a = sum(jnp.sum(x * y.astype(jnp.float32)) for x, y in zip(u, leaves))
        a = jnp.sign(a) if sign else a
        return [a * x for x in u]

    total = jax.lax.map(one, jax.random.split(key, directions))
    return jax.tree.unflatten(treedef, [jnp.sum(t, axis=0).astype(x.dtype) for t, x in zip(total, leaves)])


def subsample_directions(family: TaskFamily, directions: int, sign_direction: bool = False) -> SubsampleDirections:
    return SubsampleDirections(family, directions=int(directions), sign_direction=bool(sign_direction))


@dataclasses.dataclass(frozen=True)
class DelayedGradients(Augmented):
    """Asynchronous training: the loss and its gradient are taken at the params of `delay`
    steps ago (kept in the model state, filled with the initial params), and that stale
    gradient is the gradient for the current params."""

    delay: int = 1

    def tag(self):
        return f"Delay[{self.delay}]"

    def init(self, key, cfg):
        params, state = self.inner.init(key, cfg["inner"])
        buffer = jax.tree.map(lambda p: jnp.broadcast_to(p, (self.delay,) + p.shape), params)
        return params, {"inner": state, "past_params": buffer}

    def loss(self, params, state, key, batch, cfg):
        buffer = jax.lax.stop_gradient(state["past_params"])
        stale = jax.tree.map(lambda b: b[0], buffer)

        def value(p):
            del p  # the value (and gradient) are those of the stale params
            return self.inner.loss(stale, state["inner"], key, batch, cfg["inner"])

        def grad(p):
            return jax.grad(lambda q: self.inner.loss(q, state["inner"], key, batch, cfg["inner"])[0])(stale)

        loss, inner_state = _with_replaced_grad(value, grad)(params)
        pushed = jax.tree.map(lambda b, p: jnp.concatenate([b[1:], jax.lax.stop_gradient(p)[None]]), buffer, params)
        return loss, {"inner": inner_state, "past_params": pushed}


def delayed_gradients(family: TaskFamily, delay: int) -> DelayedGradients:
    if int(delay) < 1:
        raise ValueError(f"delay must be >= 1, got {delay}")
    return DelayedGradients(family, delay=int(delay))


# ---------------------------------------------------------------- fixed tasks


def _es_wrapped(pairs: int, base: str):
    def make():
        from tasks import registry

        return es_gradient(registry.get(base), std=0.01, num_pairs=pairs)

    return make


def _bw8_relu32():
    from tasks.families.image_mlp import ImageMLP

    return ImageMLP("cifar10", (32,), image_size=8, activation="relu", sampled_init=False, grayscale=True)


FIXED = {
    f"ESWrapped_{pairs}pair_ImageMLP_{base}": _es_wrapped(pairs, f"ImageMLP_{base}")
    for pairs, base in (
        (1, "Cifar10_128x128x128_Relu"),
        (1, "Mnist_128x128x128_Relu"),
        (8, "Cifar10_128x128x128_Relu"),
        (8, "Mnist_128x128x128_Relu"),
        (1, "FashionMnist8_Relu32"),
    )
}
FIXED["ESWrapped_1pair_ImageMLP_Cifar10BW8_Relu32"] = lambda: es_gradient(_bw8_relu32(), std=0.01, num_pairs=1)
