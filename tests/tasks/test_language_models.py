import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks.families import rnn_lm, transformer_lm
from tasks.families.rnn_lm import RNNLM, fold_vocab, sample_rnn_lm
from tasks.families.transformer_lm import TransformerLM, sample_transformer_lm
from tests.tasks.conformance import check_family, reference_names

FIXED = {**rnn_lm.FIXED, **transformer_lm.FIXED}


# Shared jitted entry points, so tests of one family reuse their compilations.
_loss = jax.jit(lambda family, *args: family.loss(*args), static_argnums=0)
_logits = jax.jit(lambda family, *args: family.logits(*args), static_argnums=0)


def _tiny_rnn(core, **kw):
    return RNNLM("pystdlib_bytes", core, 16, 8, batch_size=4, seq_len=12, **kw)


def _tiny_transformer(**kw):
    return TransformerLM("pystdlib_bytes", 2, 16, 2, batch_size=4, seq_len=12, key_size=8, **kw)


@pytest.mark.parametrize(
    "family",
    [
        # (the LSTM runs as the fixed representative on mock lm1b below)
        _tiny_rnn("gru", sampled_init=False),
        _tiny_rnn("vanilla"),
        _tiny_rnn("irnn", vocab_size=100),  # the dataset's ids fold into a smaller vocabulary
        _tiny_transformer(dropout=0.1, vocab_size=100),
    ],
    ids=lambda f: f.name,
)
def test_language_model_contract(family):
    check_family(family, lr=1e-2)


@pytest.mark.parametrize(
    "family", [_tiny_rnn("lstm"), _tiny_transformer(dropout=0.1, vocab_size=100)], ids=lambda f: f.name
)
def test_padding_targets_are_left_out(family):
    key = jax.random.PRNGKey(0)
    cfg = family.sample(key)
    params, state = family.init(key, cfg)
    tokens = family.get_batch(np.random.default_rng(0), "train")["tokens"].copy()
    tokens[:, 3] = 0
    tokens[1, 7:] = 0

    def loss(tokens):
        return float(_loss(family, params, state, key, {"tokens": tokens}, cfg)[0])

    folded = np.asarray(fold_vocab(jnp.asarray(tokens), family.vocab))
    inputs, targets = folded[:, :-1], folded[:, 1:]
    logp = np.asarray(jax.nn.log_softmax(_logits(family, params, inputs, cfg, key)))
    ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    keep = targets != 0
    np.testing.assert_allclose(loss(tokens), ce[keep].mean(), rtol=1e-5)
    assert abs(ce[keep].mean() - ce.mean()) > 1e-3  # so the check above can tell the two apart
    assert loss(np.zeros_like(tokens)) == 0.0  # all padding


@pytest.mark.parametrize(
    "family",
    [_tiny_transformer(dropout=0.1, vocab_size=100), _tiny_rnn("gru", sampled_init=False)],
    ids=lambda f: f.name,
)
def test_causal(family):
    key = jax.random.PRNGKey(1)
    cfg = family.sample(key)
    params, _ = family.init(key, cfg)
    tokens = family.get_batch(np.random.default_rng(1), "train")["tokens"]
    inputs = np.array(fold_vocab(jnp.asarray(tokens), family.vocab))[:, :-1]
    inputs[1, 0] = 0  # a padding query with no earlier keys must not look ahead either
    t = 5
    changed = inputs.copy()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 17) % (family.vocab - 1) + 1
    changed[0, -1] = 0  # padding after t must not leak either
    a = np.asarray(_logits(family, params, inputs, cfg, key))
    b = np.asarray(_logits(family, params, changed, cfg, key))  # the same key: the same dropout masks
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], rtol=1e-5, atol=1e-5)
    assert np.abs(a[:, t + 1 :] - b[:, t + 1 :]).max() > 1e-3


def test_vocab_folding():
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 40000, size=2000).tolist() + [0, 1, 299, 300, 301, 598])
    folded = np.asarray(fold_vocab(ids, 300))
    assert folded.min() >= 0 and folded.max() < 300
    small = np.asarray(ids) < 300
    np.testing.assert_array_equal(folded[small], np.asarray(ids)[small])  # in-range ids (and padding) stay
    assert np.all(folded[~small] >= 1)  # nothing folds into padding
    np.testing.assert_array_equal(folded[-6:], [0, 1, 299, 2, 3, 1])


def test_normalizer_uses_the_model_vocabulary():
    family = _tiny_rnn("lstm", vocab_size=1000)
    assert family.vocab == 1000
    np.testing.assert_allclose(float(family.normalizer(jnp.log(1000.0))), 10 * math.log(5) / math.log(1000), 1e-5)
    assert float(family.normalizer(jnp.nan)) == pytest.approx(10 * (math.log(2000) - math.log(200)) / math.log(1000))


def test_cores_are_really_different():
    key = jax.random.PRNGKey(0)
    trees = {}
    for core in rnn_lm.SAMPLED_CORES:  # the three names the reference's sampler all built as LSTMs
        family = _tiny_rnn(core)
        trees[core] = jax.tree.structure(jax.eval_shape(family.init, key, family.sample(key))[0])
    assert len(set(trees.values())) == 3
    with pytest.raises(ValueError, match="unknown RNN core"):
        _tiny_rnn("lstn")

    irnn = _tiny_rnn("irnn", vocab_size=100)  # as in the contract test, so its init is compiled already
    np.testing.assert_array_equal(irnn.init(key, irnn.sample(key))[0]["core"]["recurrent"]["kernel"], np.eye(16))
    # The Elman cores share a parameter tree: vanilla and irnn apply ReLU, tanh applies tanh.
    h, x = jnp.asarray([[-1.0, 2.0]]), jnp.zeros((1, 3))
    params = {"input": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
    params["recurrent"] = {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}
    for core, expected in (("vanilla", [0.0, 2.0]), ("irnn", [0.0, 2.0]), ("tanh", np.tanh([-1.0, 2.0]))):
        cell, attrs, _ = rnn_lm._cell(core, 2)
        _, out = cell(**attrs).apply({"params": params}, (h,), x)
        np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_samplers_are_reproducible_and_in_range():
    rnns = [sample_rnn_lm(np.random.default_rng(s)) for s in range(200)]
    assert rnns == [sample_rnn_lm(np.random.default_rng(s)) for s in range(200)]
    for f in rnns:
        assert 8 <= f.rnn_size <= 255 and 8 <= f.embed_size <= 255
        assert 4 <= f.batch_size <= 511 and 4 <= f.seq_len <= 511 and 100 <= f.vocab_size <= 9999
        assert f.dataset in rnn_lm.TEXT_DATASETS and f.core in ("lstm", "vanilla", "gru") and f.sampled_init
    assert {f.core for f in rnns} == {"lstm", "vanilla", "gru"}

    transformers = [sample_transformer_lm(np.random.default_rng(s)) for s in range(200)]
    assert transformers == [sample_transformer_lm(np.random.default_rng(s)) for s in range(200)]
    for f in transformers:
        assert 8 <= f.num_heads <= 127 and f.d_model % f.num_heads == 0 and 8 <= f.d_model // f.num_heads <= 127
        assert 1 <= f.num_layers <= 7 and 4 <= f.batch_size <= 511 and 4 <= f.seq_len <= 511
        assert 100 <= f.vocab_size <= 9999 and f.dropout == 0.1 and f.dataset in rnn_lm.TEXT_DATASETS
    assert len({f.dataset for f in transformers}) == 4

    assert sample_rnn_lm(np.random.default_rng(0), datasets=("pystdlib_bytes",)).dataset == "pystdlib_bytes"
    key = jax.random.PRNGKey(0)
    for f in rnns[:3] + transformers[:3]:  # sampled families build (abstractly: some are large)
        params, state = jax.eval_shape(f.init, key, f.sample(key))
        assert jax.eval_shape(f.loss, params, state, key, f.batch_spec(), f.sample(key))[0].shape == ()


def test_fixed_names():
    assert len(rnn_lm.FIXED) == 14 and len(transformer_lm.FIXED) == 16
    names = reference_names("RNNLM_")
    assert set(FIXED) == names | reference_names("TransformerLM_")
    lstm = FIXED["RNNLM_lm1bbytes_Patch32_LSTM128_Embed64"]()
    assert (lstm.dataset, lstm.core, lstm.rnn_size, lstm.embed_size) == ("lm1b_bytes", "lstm", 128, 64)
    assert (lstm.batch_size, lstm.seq_len, lstm.vocab, lstm.sampled_init) == (128, 32, 257, False)
    irnn = FIXED["RNNLM_lm1b32k_Patch32_IRNN256_Embed128"]()
    assert (irnn.dataset, irnn.core, irnn.rnn_size, irnn.embed_size, irnn.vocab) == (
        "lm1b_32k",
        "irnn",
        256,
        128,
        32768,
    )
    assert FIXED["RNNLM_wikipediaenbytes_Patch32_GRU256_Embed128"]().dataset == "wikipedia_en_bytes"
    assert FIXED["RNNLM_lm1bbytes_Patch128_LSTM128_Embed64"]().seq_len == 128
    t = FIXED["TransformerLM_LM1B_MultiRuntime_11"]()
    assert (t.num_heads, t.d_model, t.num_layers, t.batch_size, t.seq_len, t.dropout) == (19, 304, 2, 256, 32, 0.0)
    t = FIXED["TransformerLM_LM1B_MultiRuntime_0"]()
    assert (t.num_heads, t.d_model, t.num_layers, t.batch_size, t.seq_len, t.dropout) == (5, 20, 1, 4, 8, 0.1)
    t = FIXED["TransformerLM_LM1B_5layer_256width"]()
    assert (t.num_heads, t.d_model, t.num_layers, t.batch_size, t.seq_len, t.dropout) == (8, 256, 5, 32, 128, 0.1)
    assert t.dataset == "lm1b_32k" and t.vocab == 32768


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_task_builds_abstractly(name):
    family = FIXED[name]()
    key = jax.random.PRNGKey(0)
    cfg = family.sample(key)
    params, state = jax.eval_shape(family.init, key, cfg)
    loss, _ = jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert family.num_params > 0 and family.forward_flops() > 0
