"""VeLO as an optax optimizer.

    import optax
    from velojax import optimizer

    tx = optimizer.velo(num_steps=1000)          # the official pretrained VeLO
    state = tx.init(params)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params, value=loss)
    params = optax.apply_updates(params, updates)

VeLO has no learning rate. It needs two things an ordinary optimizer does not: the
number of steps the run will take (`num_steps`, which it plans its schedule around) and
the training loss at every step (`value=`, the loss whose gradient is `grads`).

Behaviour at the edges (all tested):
  * a non-finite `value` is not absorbed into VeLO's loss statistics (they repeat the
    previous step's); NaN gradient entries count as 0 and +-inf are clipped to +-1000;
  * training past `num_steps` keeps working, but VeLO's time features saturate after
    about 1.2 x num_steps and it never saw such runs in meta-training;
  * bf16 (or any float) params keep their dtype, as do their m and rms accumulators;
    the arithmetic is float32;
  * zero-size leaves get empty updates and take no part in the LSTM;
  * integer leaves, a missing `value` or `params`, and grads or a state that do not
    match the params raise a ValueError/TypeError that names the problem.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from velojax.checkpoint import CheckpointError, load_weights, save_weights
from velojax.config import VeLOConfig
from velojax.core import VeLOState, group_layout, leaf_accumulators, velo_init, velo_update
from velojax.meta_params import (
    MetaParams,
    check_meta_params,
    config_from_meta_params,
    init_meta_params,
    num_meta_params,
    path_str,
)
from velojax.pretrained import PretrainedWeightsUnavailable, load_pretrained, pretrained_weights_path
from velojax.shipped import available_weights, load_shipped

__all__ = [
    "CheckpointError",
    "PretrainedWeightsUnavailable",
    "VeLOConfig",
    "VeLOState",
    "available_weights",
    "init_meta_params",
    "leaf_accumulators",
    "load_pretrained",
    "load_shipped",
    "load_weights",
    "num_meta_params",
    "pretrained_weights_path",
    "resolve_weights",
    "save_weights",
    "velo",
    "velo_init",
    "velo_update",
]

_MAX_STEPS = np.iinfo(np.int32).max


def resolve_weights(weights: Any = None, config: VeLOConfig | None = None) -> tuple[MetaParams, VeLOConfig]:
    """(meta-parameters, config) from a meta-parameter tree, the name of shipped weights
    (`available_weights()`), a checkpoint path, or None (the pretrained VeLO). A string
    that is a shipped name loads that file (sha256 checked) with its manifest's config;
    any other string is a path. Without `config`, the sizes are read off the weights and
    the rest is VeLO's."""
    if weights is None:
        weights = load_pretrained()
    elif isinstance(weights, str) and weights in available_weights():
        weights, shipped_config = load_shipped(weights)
        config = config or shipped_config
    elif isinstance(weights, (str, os.PathLike)):
        weights = load_weights(weights, config)
    elif isinstance(weights, dict):
        weights = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), weights)
    else:
        raise TypeError(
            "weights must be None (pretrained VeLO), a shipped name, a checkpoint path, or a meta-parameter dict; "
            f"got {type(weights).__name__}."
        )
    if config is None:
        config = config_from_meta_params(weights)
    else:
        check_meta_params(weights, config)
    return weights, config


def _check_num_steps(num_steps: Any) -> int | jax.Array:
    """An int, or a scalar array (optax.inject_hyperparams passes one; checked when concrete)."""
    if isinstance(num_steps, jax.Array | np.ndarray | np.generic) and np.ndim(num_steps) == 0:
        if not isinstance(num_steps, jax.core.Tracer) and not 1 <= float(num_steps) <= _MAX_STEPS:
            raise ValueError(f"num_steps must be between 1 and {_MAX_STEPS}, got {num_steps}.")
        return num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise TypeError(f"num_steps must be an int (the number of updates the run will make), got {num_steps!r}.")
    if not 1 <= int(num_steps) <= _MAX_STEPS:
        raise ValueError(f"num_steps must be between 1 and {_MAX_STEPS}, got {num_steps}.")
    return int(num_steps)


def _check_weight_decay(weight_decay: Any) -> float | jax.Array:
    if isinstance(weight_decay, jax.Array | np.ndarray | np.generic) and np.ndim(weight_decay) == 0:
        if not isinstance(weight_decay, jax.core.Tracer) and not float(weight_decay) >= 0:
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}.")
        return weight_decay
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}.")
    return weight_decay


def _decay_mask(mask: Any, params: Any) -> Any:
    """The weight-decay mask as a tree of Python bools shaped like params."""
    where = mask(params) if callable(mask) else mask
    if where is None:
        return jax.tree.map(lambda _: True, params)
    if jax.tree.structure(where) != jax.tree.structure(params):
        raise ValueError(
            f"velo: mask and params have different tree structures: {jax.tree.structure(where)} vs "
            f"{jax.tree.structure(params)}."
        )
    for name, m in zip(_leaf_names(params), jax.tree.leaves(where)):
        if not isinstance(m, bool | np.bool_):
            raise TypeError(f"velo: mask leaf '{name}' must be a Python bool, got {type(m).__name__}.")
    return where


def _leaf_names(tree: Any) -> list[str]:
    return [path_str(p) or "<root>" for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _check_params(params: Any) -> None:
    for name, leaf in zip(_leaf_names(params), jax.tree.leaves(params)):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            raise TypeError(f"velo: param leaf '{name}' is a {type(leaf).__name__}, not an array.")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"velo: param leaf '{name}' has dtype {dtype}; VeLO only optimises floating-point leaves. "
                "Keep integer leaves out of the optimised tree (e.g. optax.partition / nnx.Param filters)."
            )


def _check_same_tree(what: str, tree: Any, params: Any) -> None:
    if jax.tree.structure(tree) != jax.tree.structure(params):
        have, want = set(_leaf_names(tree)), set(_leaf_names(params))
        detail = []
        if want - have:
            detail.append(f"missing {sorted(want - have)[:5]}")
        if have - want:
            detail.append(f"unexpected {sorted(have - want)[:5]}")
        raise ValueError(
            f"velo: {what} and params have different tree structures"
            + (f" ({'; '.join(detail)})" if detail else f": {jax.tree.structure(tree)} vs {jax.tree.structure(params)}")
            + "."
        )
    for name, a, b in zip(_leaf_names(params), jax.tree.leaves(tree), jax.tree.leaves(params)):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"velo: {what} leaf '{name}' has shape {np.shape(a)}, but the param has {np.shape(b)}.")
        if not jnp.issubdtype(getattr(a, "dtype", np.float32), jnp.floating):
            raise TypeError(f"velo: {what} leaf '{name}' has dtype {a.dtype}; expected a float gradient.")


def _check_state(state: Any, params: Any) -> None:
    if not isinstance(state, VeLOState):
        raise TypeError(f"velo: expected the VeLOState from tx.init, got {type(state).__name__}.")
    leaves, names = jax.tree.leaves(params), _leaf_names(params)
    layout = group_layout(params)
    stale = "velo: the optimizer state was initialised for a different parameter tree"
    if len(layout) != len(state.groups):
        raise ValueError(
            f"{stale} ({len(state.groups)} tensor groups, the params make {len(layout)}); call tx.init(params) again."
        )
    for idx, group in zip(layout, state.groups):
        want = (len(idx), group.moments.shape[1]) + tuple(leaves[idx[0]].shape)
        if tuple(group.moments.shape) != want:
            raise ValueError(
                f"{stale}: the group of param '{names[idx[0]]}' has accumulators of shape "
                f"{tuple(group.moments.shape)}, expected {want}; call tx.init(params) again."
            )


def _loss_scalar(value: Any) -> jax.Array:
    value = jnp.asarray(value)
    if value.size != 1:
        raise ValueError(f"velo: value must be the scalar training loss, got shape {value.shape}.")
    if not jnp.issubdtype(value.dtype, jnp.floating) and not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"velo: value must be a real number, got dtype {value.dtype}.")
    return value.reshape(()).astype(jnp.float32)


def velo(
    num_steps: int,
    *,
    weights: Any = None,
    config: VeLOConfig | None = None,
    weight_decay: float = 0.0,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """VeLO as an optax `GradientTransformationExtraArgs`.

    Args:
      num_steps: how many updates the run will make (VeLO plans around it).
      weights: meta-parameters: None for the official pretrained VeLO (see
        `velojax.pretrained`), the name of weights shipped in the package
        (`available_weights()`, e.g. "small_v1"; see `velojax.shipped`), a checkpoint
        path, or a meta-parameter tree.
      config: the architecture; by default read off `weights` (VeLO's flags).
      weight_decay: as the reference's wrapper: adds weight_decay * p to each gradient
        and weight_decay * sum(p^2) to the loss VeLO sees. Off by default.
      mask: as optax.adamw's: a pytree of bools like params (or a callable of params
        returning one); weight decay applies where it is True. None: everywhere.

    `num_steps` and `weight_decay` may be injected with `optax.inject_hyperparams`.
    VeLO plans its run at `init` (the schedule features and loss EMAs come from
    `state.num_steps`), so an injected `num_steps` changed after `init` has no effect.
    Returns:
      A transformation whose `update(grads, state, params, value=loss)` returns
      (updates, state); `params` and `value` are required. The state holds no copy of
      the params.
    """
    num_steps = _check_num_steps(num_steps)
    weight_decay = _check_weight_decay(weight_decay)
    decays = not (isinstance(weight_decay, numbers.Real) and weight_decay == 0)
    meta_params, config = resolve_weights(weights, config)

    def init_fn(params):
        _check_params(params)
        return velo_init(meta_params, params, num_steps, config)

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        if params is None:
            raise ValueError("velo: update needs the current params: tx.update(grads, state, params, value=loss).")
        if value is None:
            hint = ""
            if "loss" in extra_args or "extra_args" in extra_args:
                hint = " (velojax takes the loss as value=, not loss= or extra_args={'loss': ...})"
            raise ValueError(
                "velo: update needs the training loss: tx.update(grads, state, params, value=loss)" + hint + "."
            )
        _check_params(params)
        _check_same_tree("grads", updates, params)
        _check_state(state, params)
        loss = _loss_scalar(value)
        if decays:
            where = _decay_mask(mask, params)
            decayed = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(where)) if m]
            loss = loss + weight_decay * sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in decayed)
            updates = jax.tree.map(
                lambda g, p, m: g + jnp.asarray(weight_decay, p.dtype) * p if m else g, updates, params, where
            )
        return velo_update(meta_params, state, updates, params, loss, config)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
