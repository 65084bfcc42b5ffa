"""VeLO meta-parameters: the official tree layout, fresh initialisation and validation.

The tree is a plain nested dict with the official (haiku) names, so a checkpoint of
the reference loads into it one to one:

    {"ff_mod_stack": {"~": {"w0__0" .. "w0__13": [P, c_i, H], "b0": [P, H],
                             "w1": [P, H, H], "b1": [P, H], "w2": [P, H, 3], "b2": [P, 3]}},
     "lstm_init_state": {"hidden": [1, L], "cell": [1, L]},
     "rnn_params": {"linear" | "linear_1" | "linear_2": {"w": [30, L], "b": [L]},
                    "rnn/linear": {"w": [2L, 4L], "b": [4L]},
                    "rnn_to_controls": {"w": [L, P], "b": [P]},
                    "step_size": {"w": [L, 1], "b": [1]}}}

with P = `param_inits`, H = `ff_hidden_size`, L = `lstm_hidden_size` (VeLO: 256, 4, 512;
2,320,385 float32 values). `rnn_params/linear` is dead in the reference's forward pass
but is part of the format.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from velojax.config import MLP_INPUT_GROUPS, VELO, VeLOConfig

MetaParams = dict[str, Any]

# Module names of the reference's per-tensor network, in the order the forward pass uses them.
MIX_LAYERS = ("linear", "linear_1", "linear_2")
LSTM_GATES = "rnn/linear"
NUM_MLP_OUTPUTS = 3  # direction, log-magnitude, and a third output the reference never reads


def ff_layer_names(config: VeLOConfig) -> tuple[str, ...]:
    """Names of the per-parameter MLP's weights after the first layer (VeLO: w1, w2)."""
    return tuple(f"w{i}" for i in range(1, config.ff_hidden_layers + 1))


def meta_param_shapes(config: VeLOConfig = VELO) -> MetaParams:
    """The meta-parameter tree of `config` as `jax.ShapeDtypeStruct` leaves (all float32)."""
    f32 = jnp.float32
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, f32)  # noqa: E731
    p, h, lstm = config.param_inits, config.ff_hidden_size, config.lstm_hidden_size
    ff = {f"w0__{i}": spec(p, c, h) for i, c in enumerate(config.mlp_group_channels)}
    ff["b0"] = spec(p, h)
    for i in range(1, config.ff_hidden_layers + 1):
        out = NUM_MLP_OUTPUTS if i == config.ff_hidden_layers else h
        ff[f"w{i}"] = spec(p, h, out)
        ff[f"b{i}"] = spec(p, out)
    rnn = {name: {"w": spec(config.num_lstm_inputs, lstm), "b": spec(lstm)} for name in MIX_LAYERS}
    rnn[LSTM_GATES] = {"w": spec(2 * lstm, 4 * lstm), "b": spec(4 * lstm)}
    rnn["rnn_to_controls"] = {"w": spec(lstm, p), "b": spec(p)}
    rnn["step_size"] = {"w": spec(lstm, 1), "b": spec(1)}
    return {
        "ff_mod_stack": {"~": ff},
        "lstm_init_state": {"hidden": spec(1, lstm), "cell": spec(1, lstm)},
        "rnn_params": rnn,
    }


def init_meta_params(key: jax.Array, config: VeLOConfig = VELO) -> MetaParams:
    """Fresh meta-parameters drawn as the reference initialises them (for meta-training).

    Every weight matrix is TruncatedNormal(0, 1/sqrt(fan_in)) cut at +-2 sigma (haiku's
    `Linear` default; the first MLP layer's fan-in is all of its input channels), and
    every bias and the initial LSTM state are zero.
    """
    shapes = meta_param_shapes(config)
    paths_and_specs, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(key, len(paths_and_specs))
    leaves = [_init_leaf(k, path_str(path), spec, config) for k, (path, spec) in zip(keys, paths_and_specs)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _init_leaf(key: jax.Array, name: str, spec: jax.ShapeDtypeStruct, config: VeLOConfig) -> jax.Array:
    last = name.rsplit("/", 1)[-1]
    if last.startswith("w0__"):  # the first MLP layer's fan-in is all of its input channels
        fan_in = config.num_mlp_inputs
    elif name.startswith("ff_mod_stack/") and last.startswith("w"):
        fan_in = spec.shape[1]  # [P, in, out]
    elif name.startswith("rnn_params/") and last == "w":
        fan_in = spec.shape[0]  # [in, out]
    else:
        return jnp.zeros(spec.shape, spec.dtype)  # biases and lstm_init_state
    return jax.random.truncated_normal(key, -2.0, 2.0, spec.shape, spec.dtype) / math.sqrt(fan_in)


def path_str(path) -> str:
    """'/'-joined names of a `tree_flatten_with_path` key path."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _flat(tree) -> dict[str, Any]:
    return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_meta_params(meta_params: Any, config: VeLOConfig = VELO) -> None:
    """Raise ValueError, naming every offending leaf, unless `meta_params` fits `config`."""
    if not isinstance(meta_params, dict):
        raise ValueError(f"meta-parameters must be a nested dict, got {type(meta_params).__name__}.")
    expected = _flat(meta_param_shapes(config))
    got = _flat(meta_params)
    problems = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"missing leaves: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected leaves: {', '.join(unexpected)}")
    for name in sorted(set(expected) & set(got)):
        want, leaf = expected[name], got[name]
        shape = tuple(getattr(leaf, "shape", ()))
        if shape != want.shape:
            problems.append(f"{name} has shape {shape}, expected {want.shape}")
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            problems.append(f"{name} has dtype {dtype}, expected a float dtype (float32)")
    if problems:
        raise ValueError(
            "meta-parameters do not match VeLOConfig("
            f"lstm_hidden_size={config.lstm_hidden_size}, param_inits={config.param_inits}, "
            f"ff_hidden_size={config.ff_hidden_size}, ff_hidden_layers={config.ff_hidden_layers}): "
            + "; ".join(problems)
        )


def config_from_meta_params(meta_params: MetaParams, **overrides) -> VeLOConfig:
    """The `VeLOConfig` whose sizes fit `meta_params` (decays and flags from `overrides` or VeLO's).

    Raises ValueError if the tree is not a VeLO-style meta-parameter tree.
    """
    try:
        ff = meta_params["ff_mod_stack"]["~"]
        sizes = dict(
            lstm_hidden_size=int(np.shape(meta_params["lstm_init_state"]["hidden"])[-1]),
            param_inits=int(np.shape(ff["b0"])[0]),
            ff_hidden_size=int(np.shape(ff["b0"])[-1]),
            ff_hidden_layers=sum(1 for k in ff if k.startswith("w") and not k.startswith("w0__")),
        )
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"not a VeLO meta-parameter tree (cannot read {e}); see velojax.meta_params.") from None
    config = VeLOConfig(**{**sizes, **overrides})
    check_meta_params(meta_params, config)
    return config


def num_meta_params(meta_params: MetaParams) -> int:
    """Total number of scalars in a meta-parameter tree."""
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(meta_params))


def hand_designed_meta_params(config: VeLOConfig = VELO, lr_mult: float = 10.0) -> MetaParams:
    """Meta-parameters written by hand, not learned: a VeLO network that steps along the
    normalised m * rsqrt(rms) channel of the shortest momentum, scaled per tensor by
    RMS(p) * step_mult * lr_mult (a relative step, like LAMB's). The LSTM is silent.

    Useful where no trained weights exist (offline demos, smoke tests) and as a sane
    starting point for meta-training. It is *not* VeLO's behaviour.
    """
    if config.ff_hidden_size < 2:
        raise ValueError("hand_designed_meta_params needs ff_hidden_size >= 2.")
    meta = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), meta_param_shapes(config))
    meta["rnn_params"]["rnn_to_controls"]["b"][:] = 1.0  # every bank entry weighs 1
    meta["rnn_params"]["step_size"]["b"][:] = lr_mult
    # Mixing computes 100 * mean_k(1 * W_k), so every bank entry holds W / 100.
    ff = meta["ff_mod_stack"]["~"]
    group = list(MLP_INPUT_GROUPS).index("m_rsqrt_rms")
    ff[f"w0__{group}"][:, 0, 0] = 0.01  # h0 = relu(x), h1 = relu(-x) of the first momentum channel
    ff[f"w0__{group}"][:, 0, 1] = -0.01
    for i in range(1, config.ff_hidden_layers + 1):  # pass (h0, h1) through; the output is h0 - h1
        w = ff[f"w{i}"]
        if i < config.ff_hidden_layers:
            w[:, 0, 0] = w[:, 1, 1] = 0.01
        else:
            w[:, 0, 0], w[:, 1, 0] = 0.01, -0.01
    return jax.tree.map(jnp.asarray, meta)


#: Centres of VeLO's 9 time features tanh(10 (fraction_trained - c)) (`velo_features`).
TIME_CENTERS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
_PASS = 6.0  # gate pre-activation that makes an input/output gate ~1 (sigmoid(6) = 0.9975)


def _time_unit_response(fraction: np.ndarray) -> np.ndarray:
    """h'[f, k] of the pass-through LSTM units of `scheduled_meta_params` at fraction f:
    input and output gates open, memory closed, so h' = tanh(tanh(time feature k))."""
    features = np.tanh(10.0 * (fraction[:, None] - np.asarray(TIME_CENTERS)[None]))
    return np.tanh(np.tanh(features))


def cosine_readout() -> tuple[np.ndarray, float]:
    """(w [9], b): the least-squares fit of b + w . h'(f) to 0.5 (1 + cos(pi f)) on
    f in [0, 1] (max error 0.03)."""
    f = np.linspace(0.0, 1.0, 401)
    design = np.concatenate([_time_unit_response(f), np.ones((f.size, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, 0.5 * (1.0 + np.cos(np.pi * f)), rcond=None)
    return coef[:-1], float(coef[-1])


def scheduled_meta_params(
    config: VeLOConfig = VELO,
    lr_mult: float = 10.0,
    key: jax.Array | None = None,
    noise: float = 0.1,
    control: float = 0.1,
    decay: float = 0.0,
) -> MetaParams:
    """A designed starting point for meta-training: `hand_designed_meta_params`' step
    (the normalised m * rsqrt(rms) of the shortest momentum, scaled per tensor by
    RMS(p) * step_mult * lr_mult) with a cosine decay over the run written into the LSTM.

    LSTM units 0..8 pass VeLO's 9 time features through (input/output gates open, memory
    closed), and the step-size head reads them with `cosine_readout`, so the step
    multiplier falls from lr_mult to ~0 as fraction_trained goes 0 -> 1. With `key`, the
    other LSTM units, the control head and the MLP bank get `noise` x the fresh
    initialisation (`init_meta_params`; scaled like the controls and the bank), so
    that ES perturbations of every part change the update to first order; the step-size
    readout of those units stays 0. Needs lstm_hidden_size >= 9.

    `decay` adds decay x the normalised parameter to the direction (MLP hidden units 2
    and 3 pass the p channel through): p shrinks by lr_mult * step_mult * decay of itself
    per step, which bounds the growth of the weights' norm that relative steps along the
    momentum otherwise compound over long runs (needs ff_hidden_size >= 4 when nonzero).

    Every bank entry weighs `control` (the control head's bias) and holds the MLP weights
    / (100 control), which gives the same MLP. The choice sets what ES perturbations of a
    given size do: the MLP is mixed as (100/P) sum_k c_k W_k, so a small `control` with
    large entries makes perturbations of the entries small relative to the weights, while
    perturbing the controls rescales every layer (a step-size direction).
    """
    if config.lstm_hidden_size < len(TIME_CENTERS):
        raise ValueError(f"scheduled_meta_params needs lstm_hidden_size >= {len(TIME_CENTERS)}.")
    meta = jax.tree.map(np.array, hand_designed_meta_params(config, lr_mult=1.0))  # controls 1
    if decay:
        if config.ff_hidden_size < 4:
            raise ValueError("scheduled_meta_params with decay needs ff_hidden_size >= 4.")
        ff = meta["ff_mod_stack"]["~"]
        group = list(MLP_INPUT_GROUPS).index("p")
        ff[f"w0__{group}"][:, 0, 2], ff[f"w0__{group}"][:, 0, 3] = 0.01, -0.01  # relu(p), relu(-p)
        for i in range(1, config.ff_hidden_layers + 1):
            w = ff[f"w{i}"]
            if i < config.ff_hidden_layers:
                w[:, 2, 2] = w[:, 3, 3] = 0.01
            else:
                w[:, 2, 0], w[:, 3, 0] = 0.01 * decay, -0.01 * decay
    for leaf in meta["ff_mod_stack"]["~"].values():
        leaf /= control
    rnn, width = meta["rnn_params"], config.lstm_hidden_size
    rnn["rnn_to_controls"]["b"][:] = control
    units = np.arange(len(TIME_CENTERS))
    gates_w, gates_b = rnn[LSTM_GATES]["w"], rnn[LSTM_GATES]["b"]  # gate blocks i, g, f, o
    if key is not None:
        fresh = jax.tree.map(np.asarray, init_meta_params(key, config))
        live = np.ones(width, bool)
        live[units] = False
        gates_w[:, np.tile(live, 4)] = noise * fresh["rnn_params"][LSTM_GATES]["w"][:, np.tile(live, 4)]
        rnn["linear_2"]["w"][:] = noise * fresh["rnn_params"]["linear_2"]["w"]
        rnn["rnn_to_controls"]["w"][:] = noise * control * fresh["rnn_params"]["rnn_to_controls"]["w"]
        for name, leaf in meta["ff_mod_stack"]["~"].items():
            leaf += noise * fresh["ff_mod_stack"]["~"][name] / (100.0 * control)
    rnn["linear_2"]["w"][:, units] = 0.0
    rnn["linear_2"]["w"][units, units] = 1.0  # time features are the first 9 LSTM inputs
    gates_w[:, width + units] = 0.0
    gates_w[units, width + units] = 1.0  # cell input g_k = LSTM input k (time feature k)
    gates_b[units] = _PASS  # input gate
    gates_b[2 * width + units] = -_PASS - 1.0  # forget gate (haiku adds +1): no memory
    gates_b[3 * width + units] = _PASS  # output gate
    w, b = cosine_readout()
    rnn["step_size"]["w"][:, 0] = 0.0
    rnn["step_size"]["w"][units, 0] = lr_mult * w
    rnn["step_size"]["b"][0] = lr_mult * b
    return jax.tree.map(jnp.asarray, meta)
