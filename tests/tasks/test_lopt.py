import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks.families import lopt
from tasks.families.image_conv import ImageConv
from tasks.families.image_mlp import ImageMLP
from tasks.families.lopt import (
    FIXED,
    AdafacMLPLOpt,
    LearnableAdam,
    LearnableSGD,
    LearnableSGDM,
    LOpt,
    MLPLOpt,
    sample_lopt,
)
from tasks.key_streams import stream
from tests.tasks.conformance import check_family, reference_names
from tests.tasks.test_rollout import KeyedQuadratic

# A tiny inner task. The outer loss is random in the loss key (it draws the inner tasks'
# weights), so the conformance check's 5 meta-steps, each with a new key, must improve it by
# more than that spread (~0.1): the optimizers start too aggressive (or, for the MLPs, with
# a large step_mult), where the meta-gradient is strong; tanh keeps it smooth, and batches
# of 16 (not 4) make a step on one batch help on the next.
TINY = ImageMLP("synthetic_shapes", (4,), batch_size=16, image_size=4, activation="tanh", sampled_init=False)


@pytest.mark.parametrize(
    "optimizer, lr",
    [
        (LearnableAdam(initial_lr=0.5), 0.3),
        (LearnableSGDM(initial_lr=3.0), 0.3),
        (LearnableSGD(initial_lr=3.0), 0.3),
        (MLPLOpt(hidden_size=8, step_mult=1.0), 0.01),
        (AdafacMLPLOpt(step_mult=0.3), 0.01),
    ],
    ids=lambda x: type(x).__name__ if not isinstance(x, float) else None,
)
def test_lopt_contract(optimizer, lr):
    family = LOpt(TINY, optimizer, num_steps=3, outer_batch_size=2)
    facts = check_family(family, lr=lr)
    assert facts["batch"]["inner"]["image"].shape == (2, 3, 16, 4, 4, 1)


def test_inner_unroll_trains_and_meta_params_matter():
    """Default meta-parameters train the inner task; a 10x learning rate trains it faster."""
    inner = ImageMLP("synthetic_shapes", (16,), batch_size=32, image_size=8, activation="relu", sampled_init=False)
    family = LOpt(inner, LearnableAdam(), num_steps=120)
    theta = family.init(jax.random.PRNGKey(0), {})[0]
    faster = dict(theta, log_lr=theta["log_lr"] + math.log(10.0))
    thetas = jax.tree.map(lambda a, b: jnp.stack([a, b]), theta, faster)
    batches = jax.tree.map(lambda x: x[0], family.get_batch(np.random.default_rng(0), "train")["inner"])
    run = jax.jit(jax.vmap(family.unroll, in_axes=(0, None, None)))
    losses = np.asarray(run(thetas, jax.random.PRNGKey(1), batches))
    first, last = losses[:, :10].mean(axis=1), losses[:, -10:].mean(axis=1)
    assert np.all(np.isfinite(losses))
    assert last[0] < first[0] - 0.02, (first, last)
    assert last[1] < last[0] - 0.1, (first, last)


def _tree(seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {
        "scalar": jax.random.normal(k[0], ()),
        "vector": jax.random.normal(k[1], (5,)),
        "matrix": jax.random.normal(k[2], (3, 7)),
        "conv": jax.random.normal(k[3], (3, 3, 2, 4)),
    }


def test_learnable_adam_and_sgdm_match_optax():
    params, grads = _tree(0), _tree(1)
    for opt, reference in [
        (
            LearnableAdam(initial_lr=0.01, initial_b1=0.8, initial_b2=0.99, initial_eps=1e-3),
            optax.adam(0.01, 0.8, 0.99, 1e-3),
        ),
        (LearnableSGDM(initial_lr=0.1, initial_momentum=0.5), optax.sgd(0.1, momentum=0.5)),
        (LearnableSGD(initial_lr=0.1), optax.sgd(0.1)),
    ]:
        theta = opt.init_meta(jax.random.PRNGKey(0))
        state, ref_state, p, q = opt.init(theta, params), reference.init(params), params, params
        for _ in range(3):
            p, state = opt.update(theta, state, p, grads)
            updates, ref_state = reference.update(grads, ref_state, q)
            q = optax.apply_updates(q, updates)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=opt.describe())


@pytest.mark.parametrize("opt", [MLPLOpt(hidden_size=8), AdafacMLPLOpt()], ids=lambda o: type(o).__name__)
def test_mlp_optimizers_handle_every_rank(opt):
    """Scalars, vectors, matrices and conv kernels keep their shapes (bfloat16 its dtype);
    steps are finite and nonzero; the meta-gradient is finite and nonzero."""
    params, grads = _tree(0), _tree(1)
    params["half"], grads["half"] = jnp.ones((2, 3), jnp.bfloat16), jnp.ones((2, 3), jnp.bfloat16)

    @jax.jit
    @functools.partial(jax.value_and_grad, has_aux=True)
    def step_norm(theta):
        new, state = opt.update(theta, opt.init(theta, params), params, grads)
        step = jax.tree.map(lambda a, b: a - b, params, new)
        return sum(jnp.sum(s**2) for s in jax.tree.leaves(step)), (step, state)

    (_, (step, state)), meta_grad = step_norm(opt.init_meta(jax.random.PRNGKey(0)))
    assert state["iteration"] == 1 and step.pop("half").dtype == jnp.bfloat16
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))  # carry dtypes are fixed
    for name, s in step.items():
        assert s.shape == params[name].shape and np.all(np.isfinite(s)) and np.any(s != 0), name
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(meta_grad))
    assert any(np.any(g != 0) for g in jax.tree.leaves(meta_grad))


def test_sampler_is_reproducible_and_in_range():
    a = [sample_lopt(np.random.default_rng(s)) for s in range(200)]
    assert a == [sample_lopt(np.random.default_rng(s)) for s in range(200)]
    kinds = {type(f.optimizer).__name__ for f in a}
    assert kinds == set(lopt.INNER_OPTIMIZERS)
    for f in a:
        assert isinstance(f.inner, ImageMLP)
        assert 1 <= f.num_steps <= 99 and 1 <= f.outer_batch_size <= 7
        o = f.optimizer
        if isinstance(o, (MLPLOpt, AdafacMLPLOpt)):
            assert 2 <= o.hidden_size <= 511 and 1 <= o.hidden_layers <= 3
            assert 1e-5 <= o.exp_mult <= 1 and 1e-5 <= o.step_mult <= 1
        else:
            assert o == type(o)()  # the reference's initial values
    assert len({f.num_steps for f in a}) > 20 and len({f.outer_batch_size for f in a}) == 7


def _abstract_loss(family):
    key = jax.random.PRNGKey(0)
    cfg = jax.eval_shape(family.sample, key)
    params, state = jax.eval_shape(lambda k: family.init(k, family.sample(k)), key)
    loss, _ = jax.eval_shape(family.loss, params, state, key, family.batch_spec(), cfg)
    return params, loss


def test_sampled_families_build_abstractly():
    for seed in range(3):
        family = sample_lopt(np.random.default_rng(seed), datasets=("synthetic_shapes",))
        params, loss = _abstract_loss(family)
        assert loss.shape == () and jax.tree.leaves(params)
        assert family.forward_flops() > family.num_steps * family.outer_batch_size * family.inner.step_flops()
        spec = family.batch_spec()["inner"]["image"]
        assert spec.shape[:2] == (family.outer_batch_size, family.num_steps)


def test_normalizer_and_flops():
    family = LOpt(TINY, LearnableAdam(), num_steps=3, outer_batch_size=2)
    loss = jnp.asarray(7.0)
    assert float(family.normalizer(loss)) == float(TINY.normalizer(loss))
    assert LOpt(TINY, LearnableAdam(initial_lr=0.5)).name != LOpt(TINY, LearnableAdam()).name
    per_step = TINY.step_flops() + LearnableAdam().flops_per_param() * TINY.num_params
    assert family.forward_flops() == pytest.approx(6 * per_step)


def test_fixed_names_are_the_references():
    assert set(FIXED) == reference_names("LOpt_") and len(FIXED) == 13


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_builds_abstractly(name):
    family = FIXED[name]()
    hash(family)
    steps = int(name.rsplit("_", 1)[1])
    base = family.inner if "_ES4_" in name else family
    assert isinstance(base, LOpt) and base.num_steps == steps and base.outer_batch_size == 1
    assert ("Cifar10" in name) == isinstance(base.inner, ImageConv)
    params, loss = _abstract_loss(family)
    assert loss.shape == () and jax.tree.leaves(params)


def test_unroll_and_loss_follow_the_rollout_streams():
    """unroll = `rollout.instantiate(inner, key)`, then the inner optimizer's update per
    step with step i's loss key stream(key, "train_loss", i); the loss averages the
    normalised unrolls of the inner tasks stream(key, "task", j)."""
    inner = KeyedQuadratic(dim=3, batch_size=2, noise=0.5)  # its loss reads its key
    opt = LearnableSGDM(initial_lr=0.1)
    family = LOpt(inner, opt, num_steps=4, outer_batch_size=2)
    theta = family.init(jax.random.PRNGKey(0), {})[0]
    batch = family.get_batch(np.random.default_rng(0), "train")
    key = jax.random.PRNGKey(5)

    def by_hand(task_key, inner_batches):
        cfg = inner.sample(stream(task_key, "config"))
        params, state = inner.init(stream(task_key, "init"), cfg)
        opt_state, losses = opt.init(theta, params), []
        for i in range(4):
            b = jax.tree.map(lambda x, i=i: x[i], inner_batches)
            (loss, state), grads = inner.loss_and_grad(params, state, stream(task_key, "train_loss", i), b, cfg)
            params, opt_state = opt.update(theta, opt_state, params, grads)
            losses.append(float(loss))
        return np.asarray(losses)

    first = jax.tree.map(lambda x: x[0], batch["inner"])
    np.testing.assert_allclose(jax.jit(family.unroll)(theta, key, first), by_hand(key, first), rtol=1e-5)
    unrolls = [by_hand(stream(key, "task", j), jax.tree.map(lambda x, j=j: x[j], batch["inner"])) for j in range(2)]
    expected = np.mean([np.mean(np.log1p(u)) for u in unrolls])  # Quadratic's normalizer
    np.testing.assert_allclose(jax.jit(family.loss)(theta, {}, key, batch, {})[0], expected, rtol=1e-5)


def test_inner_stepper_is_the_inner_optimizer_at_theta():
    opt = LearnableSGDM(initial_lr=0.1, initial_momentum=0.5)
    theta = opt.init_meta(jax.random.PRNGKey(0))
    stepper = lopt.InnerStepper(opt, theta)
    params, grads = _tree(0), _tree(1)
    state = stepper.init(params, 10)
    new, new_state = stepper.update(grads, state, params, jnp.asarray(123.0))  # the loss is not used
    want, want_state = opt.update(theta, opt.init(theta, params), params, grads)
    for a, b in zip(jax.tree.leaves((new, new_state)), jax.tree.leaves((want, want_state))):
        np.testing.assert_array_equal(a, b)
