"""Task distributions a phase names itself (`tasks.distribution`) and velojax's small fixed
tasks (`tasks.small_fixed`): reproducible draws, the budget, exclusions, and which fixed
tasks lie inside or outside `small_v1`'s distribution."""

import jax
import numpy as np
import pytest

import tasks
from meta_train.configs import small_v1
from tasks import small_fixed
from tasks.distribution import FamilyRange, TaskDistribution, build
from tasks.families.image_conv import ImageConv
from tasks.families.image_mlp import ImageMLP
from tasks.families.image_mlp_ae import ImageMLPAE

DIST = small_v1.DISTRIBUTION


def test_draws_are_reproducible_under_the_budget_and_of_every_family():
    draws = [DIST.sample(jax.random.PRNGKey(i)) for i in range(60)]
    assert draws[:10] == [DIST.sample(jax.random.PRNGKey(i)) for i in range(10)]
    assert all(f.step_flops() <= DIST.max_step_mflops * 1e6 for f in draws)
    assert {type(f) for f in draws} == {ImageMLP, ImageConv, ImageMLPAE}
    assert {f.dataset for f in draws} == {"fashion_mnist", "synthetic_shapes"}
    assert len({f.image_size for f in draws}) > 5 and len({f.batch_size for f in draws}) > 10


def test_excluded_fixed_tasks_are_never_drawn():
    only = FamilyRange("image_mlp", datasets=("fashion_mnist",), image_sizes=(8, 8), widths=(24, 24),
                       depths=(1, 1), batch_sizes=(64, 64), activations=("relu",))  # fmt: skip
    assert only.sample(np.random.default_rng(0)) == tasks.get("ImageMLP_FashionMnist8_Relu24_bs64")
    with pytest.raises(ValueError, match="no task under"):
        TaskDistribution((only,), exclude=("ImageMLP_FashionMnist8_Relu24_bs64",), max_attempts=20).sample(
            jax.random.PRNGKey(0)
        )
    with pytest.raises(ValueError, match="no task under"):
        TaskDistribution((only,), max_step_mflops=1e-3, max_attempts=20).sample(jax.random.PRNGKey(0))


def test_bad_ranges_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="kind must be one of"):
        FamilyRange("resnet")
    with pytest.raises(ValueError, match="widths must be"):
        FamilyRange("image_mlp", widths=(64, 16))
    with pytest.raises(ValueError, match="batch_sizes must be"):
        FamilyRange("image_mlp", batch_sizes=(0, 64))
    with pytest.raises(ValueError, match="unknown activations"):
        FamilyRange("image_mlp", activations=("swoosh",))
    with pytest.raises(ValueError, match="not an image dataset"):
        FamilyRange("image_mlp", datasets=("pystdlib_bytes",))
    with pytest.raises(ValueError, match="at least one FamilyRange"):
        TaskDistribution(())


def _inside(family, dist: TaskDistribution) -> bool:
    """Whether some FamilyRange of `dist` can draw exactly this family."""
    if not isinstance(family, (ImageMLP, ImageConv, ImageMLPAE)):
        return False
    widths = tuple(getattr(family, "widths", None) or family.hidden_sizes)
    for r in dist.families:
        drawable = (
            family.dataset in r.datasets
            and r.image_sizes[0] <= (family.image_size or 0) <= r.image_sizes[1]
            and len(set(widths)) == 1 and r.widths[0] <= widths[0] <= r.widths[1]
            and r.depths[0] <= len(widths) <= r.depths[1]
            and r.batch_sizes[0] <= family.batch_size <= r.batch_sizes[1]
            and family.activation in r.activations
        )  # fmt: skip
        args = (family.dataset, family.image_size, widths, family.activation, family.batch_size)
        if drawable and family == build(r.kind, *args):
            return True
    return False


@pytest.mark.parametrize("name", list(small_fixed.VALIDATION) + list(small_fixed.HELDOUT))
def test_validation_and_heldout_tasks_are_in_the_distribution_but_excluded(name):
    family = tasks.get(name)
    assert _inside(family, DIST), name
    assert name in DIST.exclude and family.step_flops() <= DIST.max_step_mflops * 1e6


def test_ood_tasks_are_outside_the_distribution():
    for name in small_fixed.OOD:
        family = tasks.get(name)
        steps = small_fixed.OOD_STEPS[name]
        assert not _inside(family, DIST) or steps > small_v1.CONFIG.phases[0].max_length, name


def test_suites_list_the_small_tasks_with_their_steps():
    from eval import suites

    assert len(suites.get("heldout_small")) >= 12 and len(suites.get("ood_small")) >= 6
    for entry in suites.get("heldout_small") + suites.get("ood_small"):
        assert entry.steps == small_fixed.STEPS[entry.task]
    suites.check_resolves(suites.get("heldout_small") + suites.get("ood_small"))
