import dataclasses

import jax
import numpy as np
import pytest

from tasks.families.image_conv import FIXED, ImageConv, fixed_conv, sample_image_conv
from tasks.families.image_mlp import IMAGE_DATASETS
from tests.tasks.conformance import check_family, mock_real_datasets, reference_names


@pytest.mark.parametrize(
    "family",
    [
        # The parametric family: sampled activation and conv initialiser.
        ImageConv("synthetic_shapes", (8,), strides=(2,), batch_size=8, image_size=8),
        ImageConv("mnist1d", (), batch_size=8),  # no conv layer: spatial mean of the input -> Dense
    ],
    ids=lambda f: f.name,
)
def test_image_conv_contract(family):
    check_family(family, lr=1e-2)


def test_fixed_representative_on_mock_cifar10():
    """The LOpt tasks' inner conv (widths 16, 32 on 8x8 CIFAR-10), with the batchnorm
    variant's model state."""
    family = fixed_conv("cifar10", (16, 32), image_size=8, batch_size=8, norm="batch")
    with mock_real_datasets():
        out = check_family(family, lr=1e-2)
    assert family.init(jax.random.PRNGKey(0), {})[1]["batch_stats"]["BatchNorm_0"]["mean"].shape == (16,)
    assert out["params"]["BatchNorm_0"]["scale"].shape == (16,)


def test_every_fixed_conv_builds_abstractly():
    names = reference_names("Conv_")
    assert len(FIXED) == 9 and set(FIXED) == names
    key = jax.random.PRNGKey(0)
    for name, make in FIXED.items():
        family = make()
        assert family.batch_size == 128 and family.strides[0] == 2 and set(family.strides[1:]) <= {1}, name
        cfg = family.sample(key)
        assert cfg == {}, name  # fixed tasks: haiku-default init, named activation
        params, state = jax.eval_shape(family.init, key, cfg)
        loss, _ = jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)
        assert loss.shape == (), name
        assert params["Dense_0"]["kernel"].shape[-1] == family.num_classes, name
        assert ("batch_stats" in state) == (family.norm == "batch"), name
    assert FIXED["Conv_imagenet16_16_64x128x128x128"]().num_classes == 1000
    assert FIXED["Conv_Cifar100_32x64x64_Tanh"]().num_classes == 100
    assert FIXED["Conv_Cifar10_16_32x64x64"]().batch_spec()["image"].shape == (128, 16, 16, 3)
    assert FIXED["Conv_imagenet32_16_32x64x64"]().batch_spec()["image"].shape == (128, 32, 32, 3)


def test_sampler_is_reproducible_and_in_range():
    a = [sample_image_conv(np.random.default_rng(s)) for s in range(50)]
    b = [sample_image_conv(np.random.default_rng(s)) for s in range(50)]
    assert a == b
    for f in a:
        layers = len(f.widths)
        assert layers <= 3 and len(set(f.widths)) <= 1 and all(4 <= w <= 63 for w in f.widths)
        assert len(f.strides) == layers and f.strides == tuple(sorted(f.strides, reverse=True))
        assert f.strides.count(2) <= 2 and set(f.strides) <= {1, 2}
        assert 4 <= f.image_size <= 31 and 4 <= f.batch_size <= 511 and f.dataset in IMAGE_DATASETS
        assert f.activation is None and f.sampled_init
    assert {len(f.widths) for f in a} == {0, 1, 2, 3}


def test_sampler_draw_order():
    """Seven draws in the reference's order; the fifth is the image size."""
    rng = np.random.default_rng(3)
    hidden = int(np.floor(np.exp(rng.uniform(np.log(4), np.log(64)))))
    layers, _, num_stride = (int(rng.integers(n)) for n in (4, 2, 3))
    image = int(np.floor(np.exp(rng.uniform(np.log(4), np.log(32)))))
    dataset = IMAGE_DATASETS[int(rng.integers(5))]
    batch = int(np.floor(np.exp(rng.uniform(np.log(4), np.log(512)))))
    f = sample_image_conv(np.random.default_rng(3))
    assert f.widths == (hidden,) * layers and (f.image_size, f.dataset, f.batch_size) == (image, dataset, batch)
    assert f.strides == ((2,) * num_stride + (1,) * 3)[:layers]


def test_strides_widths_and_flops():
    f = ImageConv("cifar10", [16, 32], image_size=8)
    assert f.strides == (2, 1) and f == ImageConv("cifar10", (16, 32), strides=(2, 1), image_size=8)
    assert hash(f) == hash(dataclasses.replace(f))
    # 8x8x3 -> stride 2 -> 4x4x16 -> 4x4x32 -> Dense(10), batch 128.
    expected = 2 * 128 * (4 * 4 * 9 * 3 * 16 + 4 * 4 * 9 * 16 * 32 + 32 * 10)
    assert f.forward_flops() == expected
    assert ImageConv("cifar10", (4, 4, 4), strides=(2, 2, 2, 2)).strides == (2, 2, 2)  # zip truncation
    with pytest.raises(ValueError):
        ImageConv("cifar10", (4, 4), strides=(2,))
    key = jax.random.PRNGKey(0)
    params, _ = jax.eval_shape(f.init, key, f.sample(key))
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 16) and params["Conv_1"]["bias"].shape == (32,)


def test_head_keeps_default_init():
    """The sampled initialiser reaches the convs only: with an orthogonal init of scale 2 the
    conv kernels change, the head's does not."""
    f = ImageConv("synthetic_shapes", (8,), image_size=8, batch_size=4)
    key = jax.random.PRNGKey(1)
    cfg = dict(f.sample(key), init=np.int32(0), init_scale=np.float32(2.0))
    params, _ = f.init(key, cfg)
    default, _ = fixed_conv("synthetic_shapes", (8,), image_size=8, batch_size=4).init(key, {})
    np.testing.assert_array_equal(params["Dense_0"]["kernel"], default["Dense_0"]["kernel"])
    assert not np.allclose(params["Conv_0"]["kernel"], default["Conv_0"]["kernel"])
