import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks.families.image_mlp import IMAGE_DATASETS
from tasks.families.image_mlp_ae import FIXED, ImageMLPAE, sample_image_mlp_ae
from tasks.families.image_mlp_vae import ImageMLPVAE, normal_kl, quantized_normal_log_prob, sample_image_mlp_vae
from tests.tasks.conformance import check_family, mock_real_datasets, reference_names

KEY = jax.random.PRNGKey(0)


def batch_of(family, seed=0):
    return family.get_batch(np.random.default_rng(seed), "train")


# ------------------------------------------------------------------ autoencoder


def both_ways(family, seed, names):
    """Whether the two tasks check_family vmaps over (seed `seed`) take opposite values of
    every switch, so that its vmapped loss runs each switch both ways."""
    cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(seed), 2))
    return all(bool(cfgs[n][0]) != bool(cfgs[n][1]) for n in names)


def test_ae_contract():
    """The parametric family: initialiser, activation and the three switches per task."""
    family = ImageMLPAE("synthetic_shapes", (8,), batch_size=8, image_size=8)
    assert both_ways(family, 28, ("log_loss", "center_data", "constrain_output"))
    check_family(family, lr=1e-2, seed=28)


def test_ae_fixed_representative_on_mock_mnist():
    family = dataclasses.replace(FIXED["ImageMLPAE_Mnist_128x32x128_bs128"](), batch_size=8)
    with mock_real_datasets():
        out = check_family(family, lr=1e-2)
    # The fixed loss: batch mean of each example's mean (x - sigmoid(MLP(x)))^2 on [0, 1] pixels.
    x = out["batch"]["image"].reshape(8, -1) / 255.0
    net = jnp.asarray(x, jnp.float32)
    for i, layer in enumerate(("Dense_0", "Dense_1", "Dense_2", "Dense_3")):
        net = net @ out["params"][layer]["kernel"] + out["params"][layer]["bias"]
        net = jax.nn.relu(net) if i < 3 else net
    expected = np.mean(np.mean(np.square(x - np.asarray(jax.nn.sigmoid(net))), axis=1))
    loss, _ = family.loss(out["params"], {}, KEY, out["batch"], {})
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_ae_traced_switches_match_static_ones_both_ways():
    """The per-task (traced) switches give the loss of the same switches fixed statically."""
    sampled = ImageMLPAE("synthetic_shapes", (8,), batch_size=4, image_size=4, activation="tanh", sampled_init=False)
    cfg = sampled.sample(KEY)
    assert set(cfg) == {"log_loss", "center_data", "constrain_output"}
    params, state = sampled.init(KEY, cfg)
    batch = batch_of(sampled)
    traced_loss = jax.jit(lambda c: sampled.loss(params, state, KEY, batch, c)[0])
    losses = set()
    for log_loss, center, constrain in itertools.product((False, True), repeat=3):
        static = dataclasses.replace(sampled, log_loss=log_loss, center_data=center, constrain_output=constrain)
        flags = {"log_loss": log_loss, "center_data": center, "constrain_output": constrain}
        expected = float(static.loss(params, state, KEY, batch, {})[0])
        np.testing.assert_allclose(traced_loss({k: jnp.asarray(v) for k, v in flags.items()}), expected, rtol=1e-6)
        losses.add(round(expected, 6))
    assert len(losses) == 8  # every switch changes the loss


def test_ae_perfect_reconstruction_and_normalizers():
    family = ImageMLPAE(
        "synthetic_shapes", (), batch_size=4, activation="relu", sampled_init=False, center_data=True
    )  # a linear map D -> D; log_loss and constrain_output stay per task
    d = family.input_dim
    identity = {"Dense_0": {"kernel": jnp.eye(d), "bias": jnp.zeros(d)}}
    batch = batch_of(family)
    for log_loss in (False, True):
        cfg = {"log_loss": jnp.asarray(log_loss), "constrain_output": jnp.asarray(False)}
        loss, _ = family.loss(identity, {}, KEY, batch, cfg)
        assert float(loss) == pytest.approx(math.log(1e-8) if log_loss else 0.0, abs=1e-6)
        assert float(family.normalizer(loss, cfg)) == pytest.approx(4.0)  # log loss -18.4, clipped at -12
    # A constrained (tanh) output cannot reproduce the centred pixels exactly.
    cfg = {"log_loss": jnp.asarray(False), "constrain_output": jnp.asarray(True)}
    assert float(family.loss(identity, {}, KEY, batch, cfg)[0]) > 1e-3

    on, off = {"log_loss": jnp.asarray(True)}, {"log_loss": jnp.asarray(False)}
    np.testing.assert_allclose(family.normalizer(jnp.float32(-3.0), on), -3.0 * 0.5 + 10)
    np.testing.assert_allclose(family.normalizer(jnp.float32(0.5), on), 0.5 * 0.5 + 10)
    np.testing.assert_allclose(family.normalizer(jnp.float32(0.5), off), math.log(0.5) * 0.5 + 10, rtol=1e-6)
    np.testing.assert_allclose(family.normalizer(jnp.float32(np.nan), off), 10.5)
    # Without cfg: a negative loss is a log loss, a non-negative one an MSE.
    np.testing.assert_allclose(family.normalizer(jnp.float32(-3.0)), 8.5)
    np.testing.assert_allclose(family.normalizer(jnp.float32(0.5)), math.log(0.5) * 0.5 + 10, rtol=1e-6)
    clip = FIXED["ImageMLPAE_Cifar10_32x32x32_bs128"]()
    assert [float(clip.normalizer(jnp.float32(v))) for v in (-1.0, 0.25, 3.0, np.nan)] == [0.0, 0.25, 1.0, 1.0]


def test_every_fixed_ae_builds_abstractly():
    names = reference_names("ImageMLPAE_")
    assert len(FIXED) == 6 and set(FIXED) == names
    for name, make in FIXED.items():
        family = make()
        assert name.endswith(f"_bs{family.batch_size}") and family.activation == "relu", name
        cfg = family.sample(KEY)
        assert cfg == {}, name
        params, state = jax.eval_shape(family.init, KEY, cfg)
        loss, _ = jax.eval_shape(family.loss, params, state, KEY, family.batch_spec(), cfg)
        assert loss.shape == () and state == {}, name
        assert params[f"Dense_{len(family.hidden_sizes)}"]["kernel"].shape[-1] == family.input_dim, name
    assert FIXED["ImageMLPAE_Cifar10_256x256x256_bs1024"]().input_dim == 32 * 32 * 3
    assert FIXED["ImageMLPAE_FashionMnist_128x32x128_bs128"]().batch_spec()["image"].shape == (128, 28, 28, 1)


def test_ae_sampler_is_reproducible_and_in_range():
    a = [sample_image_mlp_ae(np.random.default_rng(s)) for s in range(50)]
    b = [sample_image_mlp_ae(np.random.default_rng(s)) for s in range(50)]
    assert a == b
    for f in a:
        assert len(f.hidden_sizes) <= 4 and len(set(f.hidden_sizes)) <= 1
        assert all(8 <= h <= 127 for h in f.hidden_sizes)
        assert 4 <= f.image_size <= 31 and 4 <= f.batch_size <= 511 and f.dataset in IMAGE_DATASETS
        assert f.activation is None and f.sampled_init and f.normalizer_type == "log"
        assert f.log_loss is None and f.center_data is None and f.constrain_output is None
    assert {len(f.hidden_sizes) for f in a} == {0, 1, 2, 3, 4}
    cfgs = jax.vmap(a[0].sample)(jax.random.split(KEY, 16))
    for name in ("log_loss", "center_data", "constrain_output"):
        assert cfgs[name].dtype == jnp.bool_ and 0 < int(cfgs[name].sum()) < 16, name  # both ways across tasks


# ------------------------------------------------------------------ VAE


def test_vae_contract():
    """The parametric family: initialiser, activation and both switches per task. (Each
    step draws a new z and dequantisation noise: batch 32 keeps 5 steps' decrease clear.)"""
    family = ImageMLPVAE("synthetic_shapes", (8,), (), n_z=4, batch_size=32, image_size=8)
    assert both_ways(family, 2, ("center_data", "per_dim_loss"))
    check_family(family, lr=1e-2, seed=2)


def test_vae_loss_is_positive_nats_and_switches_match_static_ones():
    sampled = ImageMLPVAE("synthetic_shapes", (8,), (8,), n_z=3, batch_size=4, activation="relu", sampled_init=False)
    cfg = sampled.sample(KEY)
    assert set(cfg) == {"center_data", "per_dim_loss"}
    params, state = sampled.init(KEY, cfg)
    batch = batch_of(sampled)
    d = sampled.input_dim
    traced_loss = jax.jit(lambda c: sampled.loss(params, state, KEY, batch, c)[0])
    for center in (False, True):
        static = dataclasses.replace(sampled, center_data=center, per_dim_loss=False)
        whole = float(static.loss(params, state, KEY, batch, {})[0])
        per_dim = float(dataclasses.replace(static, per_dim_loss=True).loss(params, state, KEY, batch, {})[0])
        assert np.isfinite(whole) and whole > 0 and per_dim == pytest.approx(whole / d, rel=1e-6)
        for flag, expected in ((False, whole), (True, per_dim)):
            traced = traced_loss({"center_data": jnp.asarray(center), "per_dim_loss": jnp.asarray(flag)})
            np.testing.assert_allclose(traced, expected, rtol=1e-6)
        # The normaliser gives nats per pixel either way.
        np.testing.assert_allclose(static.normalizer(jnp.float32(whole)), min(whole / d, 10.0), rtol=1e-6)
        out = sampled.normalizer(jnp.float32(per_dim), {"per_dim_loss": True})
        np.testing.assert_allclose(out, min(per_dim, 10.0), rtol=1e-6)
    log_px, kl = static.elbo_terms(params, KEY, batch, {})
    assert log_px.shape == kl.shape == (4,) and np.all(np.asarray(kl) >= 0)
    # A new key draws a new z and new dequantisation noise.
    assert float(static.loss(params, state, jax.random.PRNGKey(1), batch, {})[0]) != float(
        static.loss(params, state, KEY, batch, {})[0]
    )
    assert float(sampled.normalizer(jnp.float32(np.nan), cfg)) == 10.0
    assert float(sampled.normalizer(jnp.float32(-1.0), cfg)) == 0.0


def test_quantized_normal_and_kl():
    """Over the 256 pixel values the bin probabilities sum to ~1; the KL matches closed forms."""
    x = jnp.arange(256, dtype=jnp.float32) / 255.0
    log_p = quantized_normal_log_prob(x, jnp.float32(0.4), jnp.log(jnp.float32(0.1)), KEY)
    assert abs(float(jnp.exp(log_p).sum()) - 1.0) < 0.01
    assert float(normal_kl(jnp.float32(0.0), jnp.float32(0.0))) == 0.0
    np.testing.assert_allclose(normal_kl(jnp.float32(1.0), jnp.float32(math.log(2.0))), 0.5 * (1 + 4 - 1) - math.log(2))


def test_vae_sampler_is_reproducible_and_in_range():
    a = [sample_image_mlp_vae(np.random.default_rng(s)) for s in range(50)]
    b = [sample_image_mlp_vae(np.random.default_rng(s)) for s in range(50)]
    assert a == b
    for f in a:
        for sizes in (f.enc_hidden_sizes, f.dec_hidden_sizes):
            assert len(sizes) <= 4 and len(set(sizes)) <= 1 and all(4 <= h <= 127 for h in sizes)
        assert 2 <= f.n_z <= 127 and 4 <= f.image_size <= 31 and 4 <= f.batch_size <= 511
        assert f.dataset in IMAGE_DATASETS and f.activation is None and f.sampled_init
        assert f.center_data is None and f.per_dim_loss is None
    assert {len(f.enc_hidden_sizes) for f in a} == {len(f.dec_hidden_sizes) for f in a} == {0, 1, 2, 3, 4}
    # Draw order: the encoder width comes first, then the decoder width.
    rng = np.random.default_rng(7)
    enc = int(np.floor(np.exp(rng.uniform(np.log(4), np.log(128)))))
    dec = int(np.floor(np.exp(rng.uniform(np.log(4), np.log(128)))))
    f = sample_image_mlp_vae(np.random.default_rng(7))
    assert set(f.enc_hidden_sizes) <= {enc} and set(f.dec_hidden_sizes) <= {dec}
