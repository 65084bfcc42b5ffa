import numpy as np
import pytest

from tasks.families.image_mlp import ImageMLP, sample_image_mlp
from tests.tasks.conformance import check_family


@pytest.mark.parametrize(
    "family",
    [
        ImageMLP("synthetic_shapes", (32, 32), batch_size=32, image_size=8),
        ImageMLP("mnist1d", (), batch_size=16),
        ImageMLP("fashion_mnist_local", (16,), batch_size=16, image_size=8, activation="relu", sampled_init=False),
        ImageMLP("synthetic_shapes", (16, 16), batch_size=16, activation="tanh", loss_type="mse", norm="batch"),
        ImageMLP("synthetic_shapes", (16,), batch_size=16, activation="relu", dropout=0.2, norm="layer"),
    ],
    ids=lambda f: f.name,
)
def test_image_mlp_contract(family):
    check_family(family, lr=1e-2)


def test_sampler_is_reproducible_and_in_range():
    a = [sample_image_mlp(np.random.default_rng(s)) for s in range(50)]
    b = [sample_image_mlp(np.random.default_rng(s)) for s in range(50)]
    assert a == b
    for f in a:
        assert 4 <= f.image_size <= 31 and 4 <= f.batch_size <= 511 and len(f.hidden_sizes) <= 4
        assert all(8 <= h <= 127 for h in f.hidden_sizes)
