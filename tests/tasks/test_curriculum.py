"""Phase samplers, the cost model and rejection sampling, the fixed-task registry, the CLI."""

import collections
import dataclasses

import jax
import numpy as np
import pytest

import tasks
from tasks import augmentations as aug
from tasks import cost, phases, registry, small_fixed
from tasks.__main__ import main as cli
from tasks.families.image_mlp import ImageMLP, sample_image_mlp
from tests.tasks.conformance import reference_names


def test_phase_samples_are_reproducible_from_one_key():
    keys = jax.random.split(jax.random.PRNGKey(7), 30)
    a = [phases.sample_task(k, 1) for k in keys]
    b = [phases.sample_task(k, 1) for k in keys]
    assert [t.family for t in a] == [t.family for t in b]
    assert len({t.family.name for t in a}) > 20  # and they vary


@pytest.mark.parametrize("phase", [1, 2])
def test_budgets_are_respected_and_families_open_as_the_reference(phase):
    samples = [phases.sample_task(k, phase) for k in jax.random.split(jax.random.PRNGKey(phase), 200)]
    assert all(t.seconds <= t.max_time for t in samples)
    assert all(
        cost.REFERENCE.seconds(t.family.base() if t.augmentations else t.family) == pytest.approx(t.seconds)
        for t in samples
    )
    budgets = {b for b, _ in phases.BUDGETS[phase]}
    assert {t.max_time for t in samples} == budgets
    for t in samples:
        if phase == 1 and t.max_time < phases.LARGE_FROM:
            assert t.base_kind in phases.SMALL_FAMILIES
    kinds = collections.Counter(t.base_kind for t in samples)
    assert set(kinds) == set(phases.SMALL_FAMILIES + phases.LARGE_FAMILIES)
    if phase == 1:  # 2e-5 is drawn with probability 0.65 / 1.1 (weights normalised)
        share = np.mean([t.max_time == 2e-5 for t in samples])
        assert 0.5 < share < 0.68


def test_augmentation_stack_follows_the_reference_rates():
    rng = np.random.default_rng(0)
    base = ImageMLP("synthetic_shapes", (8,), batch_size=8)
    tags = collections.Counter()
    n = 2000
    for _ in range(n):
        family = phases.sample_augmentations(rng, base, is_lopt=False)
        for tag in family.augmentations() if isinstance(family, aug.Augmented) else []:
            tags[tag.split("[")[0]] += 1
    expected = {"Reparam": 5 / 7, "ES": 0.08, "ReducedBatch": 0.2, "BF16": 0.2, "NormalizeGrad": 0.05,
                "SubsampleDirections": 0.08, "Delay": 0.05}  # fmt: skip
    for tag, p in expected.items():
        assert abs(tags[tag] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (tag, tags[tag] / n, p)
    lopt_like = [phases.sample_augmentations(np.random.default_rng(s), base, is_lopt=True) for s in range(200)]
    assert not any("ReducedBatch" in "".join(f.augmentations()) for f in lopt_like if isinstance(f, aug.Augmented))


def test_phase_one_samples_are_deterministic_and_within_budget():
    """(Sampling speed is a benchmark's job: benchmarks/cost_model.py.)"""
    for key in jax.random.split(jax.random.PRNGKey(0), 50):
        a, b = phases.sample_task(key, 1), phases.sample_task(key, 1)
        assert a.family.name == b.family.name and a.augmentations == b.augmentations
        assert a.seconds <= a.max_time


def test_rejection_sampling_respects_the_budget_and_gives_up():
    rng = np.random.default_rng(0)
    for budget in (2e-5, 1e-4, 1e-3):
        family, seconds = cost.rejection_sample(sample_image_mlp, rng, budget)
        assert seconds == cost.REFERENCE.seconds(family) <= budget
    assert cost.rejection_sample(sample_image_mlp, rng, 1e-12, max_attempts=10) is None


def test_cost_model_fit_recovers_known_coefficients():
    sizes = [(8, 1, 8, 4), (64, 2, 64, 8), (128, 3, 256, 16), (32, 0, 512, 16), (256, 1, 32, 8)]
    families = [ImageMLP("synthetic_shapes", (h,) * layers, batch_size=b, image_size=s) for h, layers, b, s in sizes]
    truth = cost.CostModel(overhead=3e-5, default_per_flop=2e-11, per_byte=1e-9, per_flop=(("ImageMLP", 2e-11),))
    fitted = cost.fit(families, [truth.seconds(f) for f in families])
    for f in families:
        assert fitted.seconds(f) == pytest.approx(truth.seconds(f), rel=1e-6)
    assert cost.CostModel.from_json(fitted.to_json()) == fitted


def test_measured_step_time_is_positive_and_grows_with_size():
    small = ImageMLP("synthetic_shapes", (8,), batch_size=8, image_size=4)
    large = ImageMLP("synthetic_shapes", (512, 512), batch_size=256, image_size=16)
    with jax.numpy_dtype_promotion("standard"):
        t_small, t_large = (cost.measure_step_seconds(f, num_tasks=2, steps=3, repeats=2) for f in (small, large))
    assert 0 < t_small < t_large


def test_registry_has_every_fixed_task_of_the_reference_sets():
    """The registry is the reference's fixed tasks (less JAXNeRF, LOptPES) plus velojax's own small ones."""
    names = set(registry.names())
    assert set(small_fixed.FIXED) <= names
    wanted = {n for n in reference_names("") if not n.startswith(("JAXNeRF", "LOptPES"))}
    assert not wanted & set(small_fixed.FIXED)
    assert wanted | set(small_fixed.FIXED) == names, sorted((wanted | set(small_fixed.FIXED)) ^ names)
    assert len(names) >= 112
    family = tasks.get("ImageMLP_FashionMnist8_Relu32")
    assert family.name == "ImageMLP_FashionMnist8_Relu32" and family.num_params == 64 * 32 + 32 + 32 * 10 + 10
    with pytest.raises(KeyError, match="no fixed task 'ImageMLP_Nope'"):
        tasks.get("ImageMLP_Nope")


# Families whose fixed tasks their own test files build abstractly (test_image_conv,
# test_autoencoders, test_language_models, test_lopt, test_resnet, test_vit_mixer).
BUILT_ELSEWHERE = ("Conv_", "ImageMLPAE_", "RNNLM_", "TransformerLM_", "LOpt_", "Resnet_", "VIT_", "MLPMixer_")


def test_every_other_fixed_task_builds_abstractly():
    """Every registered task not built by its family's tests: params, model state and the
    loss on its batch spec, by shapes only."""
    names = [n for n in registry.names() if not n.startswith(BUILT_ELSEWHERE)]
    assert len(names) >= 20 and any(n.startswith("ESWrapped_") for n in names)
    for name in names:
        family = registry.get(name)
        key = jax.random.PRNGKey(0)
        with jax.numpy_dtype_promotion("standard"):
            cfg = jax.eval_shape(family.sample, key)
            params, state = jax.eval_shape(family.init, key, cfg)
            loss, _ = jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)
        assert loss.shape == (), name
        assert family.forward_flops() > 0, name


def test_cli_sample_and_list(capsys):
    cli(["sample", "--phase", "1", "-n", "5", "--seed", "3"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 5
    assert all(int(r.split()[3].replace(",", "")) > 0 for r in rows)  # parameter counts
    cli(["list"])
    listed = capsys.readouterr().out.split()
    assert listed == registry.names()


def test_task_view_binds_the_inner_config():
    family = ImageMLP("synthetic_shapes", (8,), batch_size=8, image_size=4)
    key = jax.random.PRNGKey(0)
    task = family.task(family.sample(key))
    params, state = task.init(key)
    batch = next(task.batches("train", seed=1))
    with jax.numpy_dtype_promotion("standard"):
        loss, _ = task.loss(params, state, key, batch)
        assert np.isfinite(float(task.normalizer(loss)))
    assert dataclasses.replace(family, label="x").name == "x"


def test_calibration_is_cached_per_machine_kind_not_per_host_name(monkeypatch):
    families = [ImageMLP("synthetic_shapes", (h,), batch_size=8, image_size=4) for h in (4, 8, 16, 32)]
    timed = []
    monkeypatch.setattr(cost, "measure_step_seconds", lambda f, n: timed.append(f.name) or 1e-5 * len(f.name))
    monkeypatch.setattr(cost.platform, "node", lambda: "runner-1")
    first = cost.calibrate(families)
    assert len(timed) == 4
    monkeypatch.setattr(cost.platform, "node", lambda: "runner-2")  # another host of the same kind
    assert cost.calibrate(families) == first and len(timed) == 4
    monkeypatch.setattr(cost, "cpu_model", lambda: "another CPU")
    cost.calibrate(families)
    assert len(timed) == 8
