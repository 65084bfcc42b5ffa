import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks.families import common, resnet
from tasks.families.image_mlp import IMAGE_DATASETS
from tasks.families.resnet import ResNet, sample_resnet
from tests.tasks.conformance import check_family, reference_names

# zero_head=False: with the reference's zero logits every task starts at loss log C, which
# the contract's "two tasks differ" check cannot tell apart (tested separately below).
TINY = ResNet("synthetic_shapes", (1, 1, 1, 1), (8, 8, 16, 16), batch_size=4, image_size=8,
              initial_conv_channels=8, zero_head=False)  # fmt: skip
NAMES = {f"Resnet_MultiRuntime_{i}" for i in range(11)}


def test_contract_parametric_v1():
    check_family(TINY, lr=1e-2)


def test_zero_head_batchnorm_state_and_stem():
    """Reference init: zero logits (loss log C, only the logits get gradients at step 0);
    a training-mode loss updates every running statistic with decay 0.9."""
    family = dataclasses.replace(TINY, zero_head=True)
    key = jax.random.PRNGKey(1)
    cfg = family.sample(key)
    params, state = family.init(key, cfg)
    batch = family.get_batch(np.random.default_rng(0), "train")
    (loss, new_state), grads = jax.jit(family.loss_and_grad)(params, state, key, batch, cfg)

    np.testing.assert_allclose(float(loss), math.log(family.num_classes), rtol=1e-6)
    assert not np.any(np.asarray(params["logits"]["kernel"]))
    grads = dict(grads)
    assert np.any(np.asarray(grads.pop("logits")["kernel"]))
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads))

    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state, new_state)
    assert all(jax.tree.leaves(changed)), changed
    # The stem BN's new mean is 0.9 * 0 + 0.1 * the batch mean of the stem conv (stride 2).
    stem = jax.lax.conv_general_dilated(
        common.to_float(jnp.asarray(batch["image"])),
        params["initial_conv"]["kernel"],
        (2, 2),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(
        new_state["batch_stats"]["initial_bn"]["mean"], 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7
    )


def test_draw_kernels_distribution():
    zeros = jnp.zeros
    params = {"a": {"kernel": zeros((3, 3, 16, 64))}, "b": {"kernel": zeros((256, 96)), "bias": zeros(96)}}
    params["logits"] = {"kernel": zeros((64, 10))}
    for factor in (1.0, 1 / 0.8796):
        out = resnet.draw_kernels(jax.random.PRNGKey(0), params, skip=("logits",), stddev_factor=factor)
        assert not np.any(np.asarray(out["logits"]["kernel"])) and not np.any(np.asarray(out["b"]["bias"]))
        for kernel, fan_in in ((out["a"]["kernel"], 3 * 3 * 16), (out["b"]["kernel"], 256)):
            k = np.asarray(kernel) * math.sqrt(fan_in) / factor  # standard truncated normal on [-2, 2]
            assert np.abs(k).max() <= 2.0 and abs(k.std() - 0.8796) < 0.03 and abs(k.mean()) < 0.03
        assert np.corrcoef(np.ravel(out["a"]["kernel"])[:1000], np.ravel(out["b"]["kernel"])[:1000])[0, 1] < 0.1


def test_fixed_names():
    assert set(resnet.FIXED) == NAMES
    assert reference_names("Resnet_") == NAMES


@pytest.mark.parametrize("name", sorted(NAMES))
def test_fixed_builds_abstractly(name):
    family = resnet.FIXED[name]()
    assert family.version == "v2" and family.activation == "relu" and family.initial_conv_stride == 2
    assert family.dataset in ("imagenet16", "imagenet32", "imagenet64") and family.image_size is None
    key = jax.random.PRNGKey(0)
    cfg = jax.eval_shape(family.sample, key)
    params, state = jax.eval_shape(family.init, key, cfg)
    loss, new_state = jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)
    assert loss.shape == () and jax.tree.structure(new_state) == jax.tree.structure(state)
    assert params["logits"]["kernel"].shape == (family.channels_per_group[-1], 1000)
    assert family.forward_flops() > 0


def test_fixed_table_details():
    f = {n: make() for n, make in resnet.FIXED.items()}
    assert (f["Resnet_MultiRuntime_3"].batch_size, f["Resnet_MultiRuntime_3"].initial_conv_kernel_size) == (192, 5)
    assert f["Resnet_MultiRuntime_7"].channels_per_group == (256, 512, 512, 1024)
    assert f["Resnet_MultiRuntime_9"].blocks_per_group == (1, 2, 4, 5)
    assert not f["Resnet_MultiRuntime_10"].max_pool and f["Resnet_MultiRuntime_10"].blocks_per_group == (1, 1, 3, 4)
    assert all(f[f"Resnet_MultiRuntime_{i}"].max_pool for i in range(10))
    # Counted by hand from the reference architecture: stem 3*3*3*64; groups (BN 2C per
    # pre-activation, 1x1/3x3/1x1 convs, 1x1 projection) 828 + 400 + 576 + 576; final BN 32;
    # logits 16*1000 + 1000.
    assert f["Resnet_MultiRuntime_0"].num_params == 1728 + 828 + 400 + 576 + 576 + 32 + 17000


def test_sampler_is_reproducible_and_in_range():
    a = [sample_resnet(np.random.default_rng(s)) for s in range(300)]
    assert a == [sample_resnet(np.random.default_rng(s)) for s in range(300)]
    for f in a:
        assert f.version == "v1" and f.activation is None and f.zero_head and f.initial_conv_stride == 2
        assert all(1 <= b <= 8 for b in f.blocks_per_group)
        width = f.channels_per_group[0]
        assert 8 <= width <= 255 and tuple(c // width for c in f.channels_per_group) in resnet.CHANNEL_PATTERNS
        assert f.initial_conv_kernel_size in (3, 5, 7) and 8 <= f.initial_conv_channels <= 63
        assert 8 <= f.image_size <= 63 and 4 <= f.batch_size <= 255 and f.dataset in IMAGE_DATASETS
    assert {f.max_pool for f in a} == {True, False} and {f.initial_conv_kernel_size for f in a} == {3, 5, 7}
    assert len({f.dataset for f in a}) == len(IMAGE_DATASETS)
    assert sample_resnet(np.random.default_rng(0), datasets=("synthetic_shapes",)).dataset == "synthetic_shapes"


def test_sampled_families_build_abstractly():
    key = jax.random.PRNGKey(0)
    for s in range(4):
        family = sample_resnet(np.random.default_rng(s))
        cfg = family.sample(key)
        assert set(cfg) == {"activation"}
        params, state = jax.eval_shape(family.init, key, cfg)
        loss, _ = jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)
        assert loss.shape == ()
        assert np.isfinite(family.forward_flops()) and family.forward_flops() > 0
