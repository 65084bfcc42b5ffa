"""Decoder-only transformer language model (reference: tasks/parametric/lm_transformer.py,
tasks/fixed/transformer_lm.py, tasks/transformer.py). Batches and loss as in `rnn_lm`."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tasks import sampling
from tasks.base import TaskFamily
from tasks.families import common
from tasks.families.rnn_lm import (
    TEXT_DATASETS,
    LanguageModelFamily,
    truncated_normal,
    variance_scaling,
)

_LN_EPS = 1e-5  # haiku's LayerNorm default (flax's is 1e-6)


class _CausalSelfAttention(nn.Module):
    """Multi-head attention with `key_size` per head, whatever the model width (as the
    reference: its query/key/value width is heads * key_size, projected back to d_model)."""

    num_heads: int
    key_size: int
    w_init: Callable

    @nn.compact
    def __call__(self, x, mask):
        def heads(name):
            y = nn.Dense(self.num_heads * self.key_size, kernel_init=self.w_init, name=name)(x)
            return y.reshape(*x.shape[:-1], self.num_heads, self.key_size)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(self.key_size)
        scores = jnp.where(mask, scores, jnp.asarray(-1e30, scores.dtype))
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(*x.shape[:-1], -1)
        return nn.Dense(x.shape[-1], kernel_init=self.w_init, name="output")(out)


class TransformerLanguageModel(nn.Module):
    """Token + learned position embedding -> pre-LN blocks (attention, GELU MLP x4, dropout
    on each residual branch) -> final LayerNorm -> untied output Linear."""

    vocab_size: int
    d_model: int
    num_heads: int
    num_layers: int
    max_len: int
    key_size: int = 32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens, train: bool = True):
        length = tokens.shape[1]
        h = nn.Embed(self.vocab_size, self.d_model, embedding_init=truncated_normal(1.0), name="embed")(tokens)
        # Small, so the initial model is close to the reference's position-free one.
        positions = self.param("positions", truncated_normal(0.02), (self.max_len, self.d_model))
        h = h + positions[:length].astype(h.dtype)
        # Causal, and padding keys are ignored; a position always sees itself, so no row is
        # empty (an all-masked row would spread its attention over the future too).
        allowed = (tokens != 0)[:, None, None, :] | jnp.eye(length, dtype=bool)
        mask = allowed & jnp.tril(jnp.ones((length, length), bool))
        w_init = variance_scaling(2.0 / self.num_layers)  # the reference's depth-scaled init
        for i in range(self.num_layers):
            x = nn.LayerNorm(epsilon=_LN_EPS, name=f"ln_attn_{i}")(h)
            x = _CausalSelfAttention(self.num_heads, self.key_size, w_init, name=f"attn_{i}")(x, mask)
            h = h + nn.Dropout(self.dropout, deterministic=not train)(x)
            x = nn.LayerNorm(epsilon=_LN_EPS, name=f"ln_mlp_{i}")(h)
            x = nn.Dense(4 * self.d_model, kernel_init=w_init, name=f"mlp_in_{i}")(x)
            x = nn.Dense(self.d_model, kernel_init=w_init, name=f"mlp_out_{i}")(nn.gelu(x))
            h = h + nn.Dropout(self.dropout, deterministic=not train)(x)
        h = nn.LayerNorm(epsilon=_LN_EPS, name="ln_final")(h)
        return nn.Dense(self.vocab_size, kernel_init=common.default_init, name="logits")(h)


@dataclasses.dataclass(frozen=True)
class TransformerLM(LanguageModelFamily, TaskFamily):
    """Decoder-only transformer language model with `num_heads` heads of `key_size` each
    (fixed at 32 by the reference) and residual width `d_model`. `vocab_size=None` uses the
    dataset's vocabulary; a smaller one folds larger ids in. Dropout is active in `loss`
    (driven by its key), as in the reference. No per-task inner configuration."""

    dataset: str
    num_heads: int
    d_model: int
    num_layers: int
    batch_size: int = 128
    seq_len: int = 32
    vocab_size: int | None = None
    dropout: float = 0.1
    key_size: int = 32

    def describe(self) -> str:
        parts = [f"TransformerLM_{self.dataset}", f"h{self.num_heads}x{self.key_size}"]
        parts += [f"d{self.d_model}", f"l{self.num_layers}", f"bs{self.batch_size}", f"seq{self.seq_len}"]
        parts += [f"vocab{self.vocab}", f"drop{self.dropout}"]
        return "_".join(parts)

    @property
    def vocab(self) -> int:
        """The model's vocabulary size."""
        return self.vocab_size or common.vocab_size(self.dataset)

    def _model(self) -> TransformerLanguageModel:
        return TransformerLanguageModel(
            vocab_size=self.vocab,
            d_model=self.d_model,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            max_len=self.seq_len,
            key_size=self.key_size,
            dropout=self.dropout,
        )

    def init(self, key, cfg):
        return common.compiled_init(self, key, cfg)

    def _init(self, key, cfg):
        tokens = jnp.zeros((1, 1), jnp.int32)  # the parameters do not depend on the input's shape
        return common.split_variables(self._model().init({"params": key}, tokens, train=False))

    def logits(self, params, inputs, cfg, key=None):
        """Logits [B, T, vocab] for input ids [B, T] (folded); dropout is on iff `key` is given."""
        del cfg
        train = key is not None and self.dropout > 0
        return self._model().apply({"params": params}, inputs, train=train, rngs={"dropout": key} if train else {})

    def forward_flops(self) -> float:
        d, width, t = self.d_model, self.num_heads * self.key_size, self.seq_len
        # q, k, v and output projections; scores and weighted values; the 4x MLP.
        layer = 2 * (3 * d * width + width * d) + 2 * 2 * t * width + 2 * 2 * 4 * d * d
        return float(self.batch_size * t * (self.num_layers * layer + 2 * d * self.vocab))


def sample_transformer_lm(rng: np.random.Generator, datasets: tuple[str, ...] = TEXT_DATASETS) -> TransformerLM:
    """The reference's sampler (its draw order): d_head log_int(8,128), heads log_int(8,128),
    d_model = d_head * heads, layers log_int(1,8), batch log_int(4,512), sequence length
    log_int(4,512), dataset, vocab log_int(100,10000); dropout 0.1."""
    d_head = sampling.log_int(rng, 8, 128)
    num_heads = sampling.log_int(rng, 8, 128)
    num_layers = sampling.log_int(rng, 1, 8)
    batch_size = sampling.log_int(rng, 4, 512)
    seq_len = sampling.log_int(rng, 4, 512)
    dataset = sampling.choice(rng, datasets)
    vocab_size = sampling.log_int(rng, 100, 10000)
    return TransformerLM(
        dataset, num_heads, d_head * num_heads, num_layers, batch_size, seq_len, vocab_size=vocab_size, dropout=0.1
    )


# (heads, d_model, layers, batch, sequence length, dropout) of TransformerLM_LM1B_MultiRuntime_i.
_MULTI_RUNTIME = (
    (5, 20, 1, 4, 8, 0.1),
    (6, 24, 1, 4, 8, 0.1),
    (4, 32, 2, 8, 8, 0.0),
    (4, 32, 1, 8, 16, 0.0),
    (4, 32, 2, 16, 4, 0.0),
    (4, 32, 1, 8, 32, 0.0),
    (5, 80, 1, 4, 64, 0.0),
    (7, 112, 3, 16, 32, 0.0),
    (4, 128, 1, 64, 32, 0.0),
    (4, 256, 2, 64, 64, 0.0),
    (4, 256, 3, 128, 64, 0.0),
    (19, 304, 2, 256, 32, 0.0),
)


def _fixed() -> dict:
    """The reference's fixed TransformerLM tasks (spec section 6.2), on lm1b_32k with its full
    vocabulary."""
    make = functools.partial(TransformerLM, "lm1b_32k")
    f = {
        f"TransformerLM_LM1B_MultiRuntime_{i}": functools.partial(make, h, d, n, batch_size=b, seq_len=t, dropout=p)
        for i, (h, d, n, b, t, p) in enumerate(_MULTI_RUNTIME)
    }
    for width in (32, 128, 256, 512):
        f[f"TransformerLM_LM1B_5layer_{width}width"] = functools.partial(
            make, 8, width, 5, batch_size=32, seq_len=128, dropout=0.1
        )
    return f


FIXED = _fixed()
