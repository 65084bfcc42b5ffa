"""Recurrent language model (reference: tasks/parametric/lm_rnn.py, tasks/fixed/rnn_lm.py,
tasks/rnn.py), and the pieces both language-model families share (vocabulary folding,
masked loss, token batches, haiku's initialisers).

Batches are {"tokens": int32 [B, L + 1]}: inputs are tokens[:, :-1], targets tokens[:, 1:];
id 0 is padding and is left out of the loss.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import data, sampling
from tasks.base import TaskFamily, spec
from tasks.families import common

# The reference's samplers draw from these; `datasets=` swaps in others (e.g. offline ones).
TEXT_DATASETS = ("lm1b_32k", "lm1b_bytes", "wikipedia_en_32k", "wikipedia_en_bytes")
CORES = ("lstm", "gru", "vanilla", "irnn", "tanh")
SAMPLED_CORES = ("lstm", "vanilla", "gru")  # the reference sampler's list, in its order

# ------------------------------------------------------------------ shared by the LM families


def fold_vocab(tokens: jax.Array, vocab_size: int) -> jax.Array:
    """Ids >= vocab_size map to 1 + id mod (vocab_size - 1), so they stay in range and never
    become padding (0); smaller ids are unchanged."""
    return jnp.where(tokens >= vocab_size, 1 + tokens % (vocab_size - 1), tokens)


def inputs_and_targets(tokens: jax.Array, vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """Teacher forcing: (tokens[:, :-1], tokens[:, 1:]), folded into the vocabulary."""
    tokens = fold_vocab(tokens, vocab_size)
    return tokens[:, :-1], tokens[:, 1:]


def masked_lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy over the positions whose target is not padding (0 if none is)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    mask = (targets != 0).astype(jnp.float32)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def text_get_batch(dataset: str, rng: np.random.Generator, split: str, batch_size: int, seq_len: int) -> dict:
    return data.load(dataset).sample(rng, split, batch_size, seq_len)


def text_batch_spec(batch_size: int, seq_len: int) -> dict:
    return {"tokens": spec((batch_size, seq_len + 1), np.int32)}


class LanguageModelFamily:
    """Loss, normalizer and batches of a language-model family: a mixin for TaskFamily
    subclasses with `dataset`, `batch_size`, `seq_len`, `vocab` and a `logits(params,
    inputs, cfg, key)` method (list it before TaskFamily)."""

    def loss(self, params, state, key, batch, cfg):
        inputs, targets = inputs_and_targets(batch["tokens"], self.vocab)
        return masked_lm_loss(self.logits(params, inputs, cfg, key), targets), state

    def normalizer(self, loss, cfg=None):
        return common.classification_normalizer(self.vocab)(loss)

    def get_batch(self, rng, split):
        return text_get_batch(self.dataset, rng, split, self.batch_size, self.seq_len)

    def batch_spec(self):
        return text_batch_spec(self.batch_size, self.seq_len)


def truncated_normal(stddev: float) -> Callable:
    """haiku's TruncatedNormal(stddev): normal cut at +-2 stddev (hk.Embed's default, stddev 1)."""

    def init(key, shape, dtype=jnp.float32):
        return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * stddev).astype(dtype)

    return init


def variance_scaling(scale: float) -> Callable:
    """haiku's VarianceScaling(scale) (fan_in, truncated normal): the truncation is corrected
    for, so the variance is exactly scale / fan_in."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = int(np.prod(shape[:-1]))
        stddev = math.sqrt(scale / fan_in) / 0.87962566103423978  # std of N(0,1) cut at +-2
        return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * stddev).astype(dtype)

    return init


def _identity(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


# ------------------------------------------------------------------ recurrent cores
# Each cell maps (carry tuple, x [B, E]) -> (carry tuple, output [B, H]), like haiku's cores.


class _LSTMCell(nn.Module):
    """haiku's LSTM: one Linear over [x, h] to the i, g, f, o gates; forget bias +1."""

    size: int

    @nn.compact
    def __call__(self, carry, x):
        h, c = carry
        gates = nn.Dense(4 * self.size, kernel_init=common.default_init, name="gates")(jnp.concatenate([x, h], -1))
        i, g, f, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h


class _GRUCell(nn.Module):
    """haiku's GRU: the reset gate scales h before its candidate matmul; VarianceScaling(1) init."""

    size: int

    @nn.compact
    def __call__(self, carry, x):
        (h,), n = carry, self.size
        w_i = self.param("w_i", variance_scaling(1.0), (x.shape[-1], 3 * n))
        w_h = self.param("w_h", variance_scaling(1.0), (n, 3 * n))
        b = self.param("b", nn.initializers.zeros, (3 * n,))
        zr_x, a_x = jnp.split(x @ w_i, [2 * n], axis=-1)
        z, r = jnp.split(jax.nn.sigmoid(zr_x + h @ w_h[:, : 2 * n] + b[: 2 * n]), 2, axis=-1)
        a = jnp.tanh(a_x + (r * h) @ w_h[:, 2 * n :] + b[2 * n :])
        h = (1.0 - z) * h + z * a
        return (h,), h


class _ElmanCell(nn.Module):
    """h' = act(Linear(x) + Linear(h)), biases on both Linears (haiku's `double_bias`):
    haiku's VanillaRNN (ReLU), the reference's IRNN (ReLU, identity recurrent init), or tanh."""

    size: int
    activation: str = "relu"
    identity_init: bool = False

    @nn.compact
    def __call__(self, carry, x):
        (h,) = carry
        recurrent_init = _identity if self.identity_init else common.default_init
        pre = nn.Dense(self.size, kernel_init=common.default_init, name="input")(x)
        pre = pre + nn.Dense(self.size, kernel_init=recurrent_init, name="recurrent")(h)
        h = jax.nn.relu(pre) if self.activation == "relu" else jnp.tanh(pre)
        return (h,), h


def _cell(core: str, size: int) -> tuple[type[nn.Module], dict, tuple[str, ...]]:
    """(cell class, its attributes, names of its carry entries)."""
    if core == "lstm":
        return _LSTMCell, {"size": size}, ("hidden", "cell")
    if core == "gru":
        return _GRUCell, {"size": size}, ("hidden",)
    if core in ("vanilla", "irnn", "tanh"):
        attrs = {"activation": "tanh" if core == "tanh" else "relu", "identity_init": core == "irnn"}
        return _ElmanCell, {"size": size, **attrs}, ("hidden",)
    raise ValueError(f"unknown RNN core {core!r}; known: {CORES}")


class RNNLanguageModel(nn.Module):
    """Embedding -> recurrent core (learnable initial state, scanned over time) -> logits."""

    core: str
    rnn_size: int
    embed_size: int
    vocab_size: int
    embed_init: Callable
    output_init: Callable

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab_size, self.embed_size, embedding_init=self.embed_init, name="embed")(tokens)
        cell, attrs, carry_names = _cell(self.core, self.rnn_size)
        carry = tuple(
            jnp.broadcast_to(
                self.param(f"initial_{n}", nn.initializers.zeros, (self.rnn_size,)), (x.shape[0], self.rnn_size)
            )
            for n in carry_names
        )
        scan = nn.scan(cell, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)
        _, h = scan(**attrs, name="core")(carry, x)
        return nn.Dense(self.vocab_size, kernel_init=self.output_init, name="output")(h)


# ------------------------------------------------------------------ the family


@dataclasses.dataclass(frozen=True)
class RNNLM(LanguageModelFamily, TaskFamily):
    """Teacher-forced one-layer RNN language model. `core` is "lstm", "gru", "vanilla"
    (haiku's VanillaRNN, which is ReLU), "irnn" (ReLU, identity recurrent init) or "tanh"
    (an Elman tanh RNN; not in the reference). `vocab_size=None` uses the dataset's
    vocabulary; a smaller one folds larger ids in (`fold_vocab`). `sampled_init=True` draws
    the embedding and output initialiser per task (the parametric family); the core keeps
    haiku's defaults either way, as in the reference."""

    dataset: str
    core: str
    rnn_size: int
    embed_size: int
    batch_size: int = 128
    seq_len: int = 32
    vocab_size: int | None = None
    sampled_init: bool = True

    def __post_init__(self):
        _cell(self.core, self.rnn_size)  # fail early on an unknown core

    def describe(self) -> str:
        parts = [f"RNNLM_{self.dataset}", f"{self.core}{self.rnn_size}", f"embed{self.embed_size}"]
        parts += [f"bs{self.batch_size}", f"seq{self.seq_len}", f"vocab{self.vocab}"]
        parts += [] if self.sampled_init else ["defaultinit"]
        return "_".join(parts)

    @property
    def vocab(self) -> int:
        """The model's vocabulary size."""
        return self.vocab_size or common.vocab_size(self.dataset)

    def sample(self, key):
        return sampling.sample_inner(key, with_activation=False, with_initializer=self.sampled_init)

    def _model(self, cfg) -> RNNLanguageModel:
        sampled = common.kernel_init(cfg)
        return RNNLanguageModel(
            core=self.core,
            rnn_size=self.rnn_size,
            embed_size=self.embed_size,
            vocab_size=self.vocab,
            embed_init=sampled if self.sampled_init else truncated_normal(1.0),
            output_init=sampled if self.sampled_init else common.default_init,
        )

    def init(self, key, cfg):
        return common.compiled_init(self, key, cfg)

    def _init(self, key, cfg):
        tokens = jnp.zeros((1, 1), jnp.int32)  # the parameters do not depend on the input's shape
        return common.split_variables(self._model(cfg).init({"params": key}, tokens))

    def logits(self, params, inputs, cfg, key=None):
        """Logits [B, T, vocab] for input ids [B, T] (already folded into the vocabulary)."""
        del key  # deterministic model
        return self._model(cfg).apply({"params": params}, inputs)

    def sequential_steps(self) -> int:
        return self.seq_len

    def forward_flops(self) -> float:
        e, h = self.embed_size, self.rnn_size
        core = {"lstm": 4 * (e + h) * h, "gru": 3 * (e + h) * h}.get(self.core, (e + h) * h)
        return 2.0 * self.batch_size * self.seq_len * (core + h * self.vocab)


def sample_rnn_lm(rng: np.random.Generator, datasets: tuple[str, ...] = TEXT_DATASETS) -> RNNLM:
    """The reference's sampler (its draw order): rnn size log_int(8,256), embed log_int(8,256),
    batch log_int(4,512), sequence length log_int(4,512), dataset, vocab log_int(100,10000),
    core from SAMPLED_CORES (really distinct cores here)."""
    rnn_size = sampling.log_int(rng, 8, 256)
    embed_size = sampling.log_int(rng, 8, 256)
    batch_size = sampling.log_int(rng, 4, 512)
    seq_len = sampling.log_int(rng, 4, 512)
    dataset = sampling.choice(rng, datasets)
    vocab_size = sampling.log_int(rng, 100, 10000)
    core = sampling.choice(rng, SAMPLED_CORES)
    return RNNLM(dataset, core, rnn_size, embed_size, batch_size, seq_len, vocab_size=vocab_size)


def _fixed() -> dict:
    """The reference's fixed RNNLM tasks (spec section 6.2): batch 128, sequence length = the
    Patch number, the dataset's full vocabulary, haiku-default initialisers."""
    datasets = {
        "lm1bbytes": "lm1b_bytes",
        "lm1b32k": "lm1b_32k",
        "wikipediaenbytes": "wikipedia_en_bytes",
        "wikipediaen32k": "wikipedia_en_32k",
    }
    cores = {"LSTM": "lstm", "GRU": "gru", "VanillaRNN": "vanilla", "IRNN": "irnn"}
    configs = [  # (dataset, seq_len, core, rnn size, embed size)
        *[("lm1bbytes", 32, core, 128, 64) for core in ("IRNN", "LSTM", "GRU", "VanillaRNN")],
        ("lm1bbytes", 128, "LSTM", 128, 64),
        *[("lm1bbytes", 32, core, 256, 128) for core in ("LSTM", "GRU")],
        *[("lm1b32k", 32, core, 256, 128) for core in ("VanillaRNN", "LSTM", "IRNN")],
        *[(ds, 32, core, 256, 128) for ds in ("wikipediaen32k", "wikipediaenbytes") for core in ("LSTM", "GRU")],
    ]
    return {
        f"RNNLM_{ds}_Patch{seq}_{core}{size}_Embed{embed}": functools.partial(
            RNNLM, datasets[ds], cores[core], size, embed, batch_size=128, seq_len=seq, sampled_init=False
        )
        for ds, seq, core, size, embed in configs
    }


FIXED = _fixed()
