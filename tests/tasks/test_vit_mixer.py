import dataclasses
import math

import jax
import numpy as np
import pytest

from tasks.families import mlp_mixer, vit
from tasks.families.image_mlp import IMAGE_DATASETS
from tasks.families.mlp_mixer import MLPMixer, sample_mlp_mixer
from tasks.families.vit import ViT, sample_vit
from tests.tasks.conformance import check_family, mock_real_datasets, reference_names

# zero_head=False: with the reference's zero logits every task starts at loss log C, which
# the contract's "two tasks differ" check cannot tell apart (tested separately below).
TINY_VIT = ViT("synthetic_shapes", 4, 16, 32, 2, 1, batch_size=8, image_size=8, zero_head=False)
TINY_MIXER = MLPMixer("synthetic_shapes", 16, 1, 8, 32, patch_size=4, batch_size=8, image_size=8, zero_head=False)
VIT_NAMES = {f"VIT_{d}_{s}" for d in ("Cifar100", "Food101_64", "ImageNet64") for s in ("skinnydeep", "wideshallow")}
MIXER_NAMES = {f"MLPMixer_{d}_{s}" for d in ("Cifar100", "Food101_64", "ImageNet64") for s in ("small16", "tiny16")}
MIXER_NAMES |= {f"MLPMixer_{d}_bs256_tiny16" for d in ("Cifar100", "Food101_64", "ImageNet64")}


def test_vit_contract_fixed_config_one_layer_with_dropout_on_mock_cifar100():
    family = dataclasses.replace(
        vit.FIXED["VIT_Cifar100_skinnydeep"](),
        num_layers=1,
        batch_size=4,
        dropout=0.1,
        attention_dropout=0.1,
        zero_head=False,
    )
    with mock_real_datasets():
        check_family(family, lr=1e-2)


def test_mixer_contract_tiny():
    check_family(TINY_MIXER, lr=1e-2)


def _initial_loss(family, key, batch):
    params, state = family.init(key, family.sample(key))
    return jax.jit(lambda p, k: family.loss(p, state, k, batch, {})[0])


def test_vit_dropout_uses_the_key():
    batch = TINY_VIT.get_batch(np.random.default_rng(0), "train")
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    for dropout, attention_dropout in ((0.5, 0.0), (0.0, 0.5), (0.0, 0.0)):
        family = dataclasses.replace(TINY_VIT, dropout=dropout, attention_dropout=attention_dropout)
        params, state = family.init(k1, {})
        loss = jax.jit(lambda p, k, f=family, s=state: f.loss(p, s, k, batch, {})[0])
        same = float(loss(params, k1)) == float(loss(params, k2))
        assert same == (dropout == attention_dropout == 0.0), (dropout, attention_dropout)


@pytest.mark.parametrize(
    "family", [dataclasses.replace(TINY_VIT, zero_head=True), dataclasses.replace(TINY_MIXER, zero_head=True)]
)
def test_zero_head_starts_at_log_c(family):
    key = jax.random.PRNGKey(0)
    params, state = family.init(key, {})
    assert not np.any(np.asarray(params["head"]["kernel"]))
    loss, _ = jax.jit(family.loss)(params, state, key, family.get_batch(np.random.default_rng(0), "train"), {})
    np.testing.assert_allclose(float(loss), math.log(family.num_classes), rtol=1e-6)


def test_vit_patch_is_clamped_to_the_image():
    key = jax.random.PRNGKey(0)
    for family, patch, tokens in (
        (dataclasses.replace(TINY_VIT, patch_size=16), (8, 8), 2),  # 8x8 image: one patch + class token
        (dataclasses.replace(TINY_VIT, dataset="mnist1d", image_size=None, patch_size=12), (1, 12), 4),  # 1x40
    ):
        assert family.patch == patch
        params, state = jax.eval_shape(family.init, key, {})
        assert params["embedding"]["kernel"].shape[:2] == patch and params["pos_embedding"].shape[1] == tokens
        assert jax.eval_shape(family.loss, params, state, key, family.batch_spec(), {})[0].shape == ()


def test_fixed_names():
    assert set(vit.FIXED) == VIT_NAMES and set(mlp_mixer.FIXED) == MIXER_NAMES
    assert reference_names("VIT_") == VIT_NAMES and reference_names("MLPMixer_") == MIXER_NAMES


@pytest.mark.parametrize("name", sorted(VIT_NAMES | MIXER_NAMES))
def test_fixed_builds_abstractly(name):
    family = {**vit.FIXED, **mlp_mixer.FIXED}[name]()
    assert family.image_size is None and family.batch_size == (256 if "bs256" in name else 128)
    assert family.patch_size == 16 and family.zero_head
    key = jax.random.PRNGKey(0)
    cfg = jax.eval_shape(family.sample, key)
    params, state = jax.eval_shape(family.init, key, cfg)
    loss, _ = jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)
    assert loss.shape == () and state == {}
    assert params["head"]["kernel"].shape[-1] == family.num_classes
    assert family.forward_flops() > 0


def test_fixed_configs():
    v, m = vit.FIXED, mlp_mixer.FIXED
    # Parameter counts of the reference architectures, counted by hand: ViT = patch embedding
    # 16*16*3*128+128, class token 128, positions 5*128, 10 layers of (2 LN 512, qkv
    # 3*(128*128+128), out 128*128+128, MLP 128*512+512+512*128+128), final LN 256, head
    # 128*100+100. Mixer = stem 16*16*3*512+512, 5 blocks of (2 LN 2048, token MLP
    # 4*384+384+384*4+4, channel MLP 512*2048+2048+2048*512+512), final LN 1024, head 512*100+100.
    assert v["VIT_Cifar100_skinnydeep"]().num_params == 98432 + 128 + 640 + 10 * 198272 + 256 + 12900
    assert m["MLPMixer_Cifar100_tiny16"]().num_params == 393728 + 5 * 2105220 + 1024 + 51300
    wide = v["VIT_ImageNet64_wideshallow"]()
    assert (wide.hidden_size, wide.mlp_dim, wide.num_heads, wide.num_layers) == (384, 1536, 6, 6)
    assert wide.dataset == "imagenet64" and v["VIT_Food101_64_skinnydeep"]().dataset == "food101_64"
    small = m["MLPMixer_Food101_64_small16"]()
    assert (small.hidden_dim, small.num_blocks, small.tokens_mlp_dim, small.channels_mlp_dim) == (768, 8, 384, 3072)
    assert small.num_tokens == 16 and m["MLPMixer_Cifar100_bs256_tiny16"]().num_tokens == 4


def test_vit_sampler_is_reproducible_and_in_range():
    a = [sample_vit(np.random.default_rng(s)) for s in range(400)]
    assert a == [sample_vit(np.random.default_rng(s)) for s in range(400)]
    for f in a:
        assert 1 <= f.num_layers <= 15 and 1 <= f.num_heads <= 15 and 32 <= f.mlp_dim <= 511
        per_head = f.hidden_size // f.num_heads
        assert f.hidden_size % f.num_heads == 0 and 8 <= per_head <= (63 if f.num_heads < 4 else 31)
        assert f.patch_size in vit.PATCH_SIZES and 8 <= f.image_size <= 63 and 4 <= f.batch_size <= 255
        assert f.dataset in IMAGE_DATASETS and 0.0 <= f.dropout < 0.8 and 0.0 <= f.attention_dropout < 0.8
        assert (f.dropout == 0.0) == (f.attention_dropout == 0.0)
    zero = np.mean([f.dropout == 0.0 for f in a])
    assert 0.2 < zero < 0.4  # 0.3 in the reference
    assert any(f.patch_size > f.image_size for f in a)  # made valid by clamping
    assert sample_vit(np.random.default_rng(0), datasets=("mnist1d",)).dataset == "mnist1d"


def test_mixer_sampler_is_reproducible_and_in_range():
    a = [sample_mlp_mixer(np.random.default_rng(s)) for s in range(300)]
    assert a == [sample_mlp_mixer(np.random.default_rng(s)) for s in range(300)]
    for f in a:
        assert 1 <= f.num_blocks <= 15 and 8 <= f.hidden_dim <= 511
        assert 8 <= f.tokens_mlp_dim <= 255 and 32 <= f.channels_mlp_dim <= 511
        assert f.patch_size in vit.PATCH_SIZES and 8 <= f.image_size <= 63 and 4 <= f.batch_size <= 255
        assert f.dataset in IMAGE_DATASETS and f.zero_head
    assert len({f.dataset for f in a}) == len(IMAGE_DATASETS)


@pytest.mark.parametrize("sampler", [sample_vit, sample_mlp_mixer])
def test_sampled_families_build_abstractly(sampler):
    key = jax.random.PRNGKey(0)
    for s in range(6):
        family = sampler(np.random.default_rng(s))
        cfg = family.sample(key)
        params, state = jax.eval_shape(family.init, key, cfg)
        assert jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)[0].shape == ()
        assert family.forward_flops() > 0
