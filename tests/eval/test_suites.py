"""Suite manifests: velodrome83's composition, subsets, and every task building on mock data."""

import jax
import numpy as np
import pytest

import tasks
from eval import suites
from tests.tasks.conformance import mock_real_datasets


def test_velodrome83_is_the_union_plus_one():
    v83 = [e.task for e in suites.get("velodrome83")]
    assert len(v83) == len(set(v83)) == 83
    assert len(suites.SMALL_TIME_FIXED) == 67 and len(suites.NORMALIZER_SET) == 75
    union = set(suites.SMALL_TIME_FIXED) | set(suites.NORMALIZER_SET)
    assert len(union) == 82 and set(v83) - union == {"MLPMixer_Cifar100_tiny16"}
    assert all(e.steps == 10_000 for e in suites.get("velodrome83"))
    suites.check_resolves(suites.get("velodrome83"))


def test_subsets_and_errors():
    conv = suites.get("velodrome83/image_conv")
    assert len(conv) == 7 and {e.family for e in conv} == {"image_conv"}
    sel = suites.select(suites.get("velodrome83"), families=["vit", "lopt"], steps=20)
    assert len(sel) == 7 and {e.steps for e in sel} == {20}
    ae = "ImageMLPAE_FashionMnist_128x32x128_bs128"
    assert [e.task for e in suites.select(suites.get("tiny"), tasks_=[ae])] == [ae]
    with pytest.raises(KeyError, match="unknown suite"):
        suites.get("velodrome84")
    with pytest.raises(KeyError, match="no family"):
        suites.get("tiny/resnet")
    with pytest.raises(KeyError, match="not in the suite"):
        suites.select(suites.get("tiny"), tasks_=["Resnet_MultiRuntime_0"])
    with pytest.raises(ValueError, match="steps"):
        suites.select(suites.get("tiny"), steps=0)
    with pytest.raises(KeyError, match="not fixed tasks"):
        suites.check_resolves((suites.SuiteEntry("NoSuchTask"),))


def _one_per_family(entries):
    firsts = {}
    for e in entries:
        firsts.setdefault(e.family, e)
    return list(firsts.values())


@pytest.mark.parametrize(
    "which",
    ["one_per_family", pytest.param("all", marks=pytest.mark.slow)],
)
def test_velodrome83_models_build_on_mock_data(which):
    """Each task draws a batch from tfds mock data and its loss traces to a finite-shaped
    scalar (abstractly: no compile), batch shrunk to 2. All 83 (about 80 s on a busy
    2-core machine) are `slow`; the default suite checks the first task of each family
    (all 112 fixed tasks also build abstractly in tests/tasks/test_curriculum.py)."""
    entries = suites.get("velodrome83")
    with mock_real_datasets(num_examples=200):
        for entry in entries if which == "all" else _one_per_family(entries):
            family = tasks.base.with_batch_size(tasks.get(entry.task), 2)
            batch = family.get_batch(np.random.default_rng(0), "train")
            key = jax.random.PRNGKey(0)

            def loss(k, b, family=family):
                cfg = family.sample(k)
                params, state = family.init(k, cfg)
                return family.loss(params, state, k, b, cfg)[0]

            out = jax.eval_shape(loss, key, batch)
            assert out.shape == () and np.issubdtype(out.dtype, np.floating), entry.task
