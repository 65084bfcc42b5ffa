"""tasks.rollout: a task from a key through the documented streams, and one training step
under any stepper, checked against hand-written value_and_grad and optimizer updates."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import rollout
from tasks.families.quadratic import Quadratic
from tasks.key_streams import stream


@dataclasses.dataclass(frozen=True)
class KeyedQuadratic(Quadratic):
    """A quadratic whose loss also reads its key (the project's families mostly ignore it),
    so that a wrong or reused loss key shows in the numbers."""

    def loss(self, params, state, key, batch, cfg):
        loss, state = super().loss(params, state, key, batch, cfg)
        return loss + 0.1 * jax.random.uniform(key, ()), state


FAMILY = KeyedQuadratic(dim=3, batch_size=2, noise=0.5)


def _batches(n, seed=0):
    return FAMILY.stacked_batches(np.random.default_rng(seed), "train", n)


def _keys(n, seed=7):
    return jax.random.split(jax.random.PRNGKey(seed), n)


def _close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7)


def test_instantiate_draws_config_and_weights_from_their_streams():
    key = jax.random.PRNGKey(11)
    cfg, params, state = rollout.instantiate(FAMILY, key)
    expected_cfg = FAMILY.sample(stream(key, "config"))
    _close(cfg, expected_cfg, rtol=0)
    _close((params, state), FAMILY.init(stream(key, "init"), expected_cfg), rtol=0)
    assert not np.allclose(cfg["target"], FAMILY.sample(key)["target"])  # not the task key itself
    given = {"target": jnp.zeros(3), "curvature": jnp.ones(3)}
    cfg2, params2, _ = rollout.instantiate(FAMILY, key, given)
    assert cfg2 is given
    _close(params2, params, rtol=0)  # the weights' key does not depend on the cfg's source


@jax.numpy_dtype_promotion("standard")
def test_step_is_value_and_grad_then_an_optax_update():
    tx = optax.adam(0.1)
    stepper = rollout.OptaxStepper(tx)
    cfg, params, state = rollout.instantiate(FAMILY, jax.random.PRNGKey(0))
    run = rollout.start(stepper, params, state, 3)
    batch, key = jax.tree.map(lambda x: x[0], _batches(1)), _keys(1)[0]
    new, loss = rollout.step(FAMILY, stepper, cfg, run, batch, key)

    (want_loss, want_state), grads = jax.value_and_grad(FAMILY.loss, has_aux=True)(params, state, key, batch, cfg)
    updates, want_opt = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert loss.shape == ()
    _close(new.params, optax.apply_updates(params, updates))
    _close(new.opt, want_opt)
    _close(new.model_state, want_state)


@jax.numpy_dtype_promotion("standard")
def test_train_is_a_python_loop_of_step():
    stepper = rollout.OptaxStepper(optax.sgd(0.05, momentum=0.9))
    cfg, params, state = rollout.instantiate(FAMILY, jax.random.PRNGKey(1))
    run0 = rollout.start(stepper, params, state, 5)
    batches, keys = _batches(5), _keys(5)
    run, losses = jax.jit(lambda r, b, k: rollout.train(FAMILY, stepper, cfg, r, b, k))(run0, batches, keys)

    step = jax.jit(lambda r, b, k: rollout.step(FAMILY, stepper, cfg, r, b, k))
    r, expected = run0, []
    for i in range(5):
        r, loss = step(r, jax.tree.map(lambda x, i=i: x[i], batches), keys[i])
        expected.append(float(loss))
    assert losses.shape == (5,)
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    _close(run, r)
    assert expected[-1] < expected[0]  # it trains


def test_batch_losses_evaluate_without_training_and_normalize():
    cfg, params, state = rollout.instantiate(FAMILY, jax.random.PRNGKey(2))
    batches, keys = _batches(3, seed=1), _keys(3)
    raw = rollout.batch_losses(FAMILY, cfg, params, state, batches, keys)
    normalized = rollout.batch_losses(FAMILY, cfg, params, state, batches, keys, normalize=True)
    expected = [
        float(FAMILY.loss(params, state, keys[i], jax.tree.map(lambda x, i=i: x[i], batches), cfg)[0]) for i in range(3)
    ]
    assert raw.dtype == normalized.dtype == jnp.float32 and raw.shape == (3,)
    np.testing.assert_allclose(raw, expected, rtol=1e-6)
    np.testing.assert_allclose(normalized, np.log1p(expected), rtol=1e-6)  # Quadratic's normalizer
    assert len(set(np.asarray(raw).tolist())) == 3  # each batch its own key and data


def _loss_scaled_sgd() -> optax.GradientTransformationExtraArgs:
    """p -= (value if given, else 1) * g: shows whether the loss was passed."""

    def update(grads, state, params=None, value=None):
        scale = 1.0 if value is None else value
        return jax.tree.map(lambda g: -scale * g, grads), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


@pytest.mark.parametrize("pass_loss", [True, False])
def test_optax_stepper_passes_the_loss_as_value_when_asked(pass_loss):
    stepper = rollout.OptaxStepper(_loss_scaled_sgd(), pass_loss=pass_loss)
    params, grads, loss = {"w": jnp.asarray([1.0, 2.0])}, {"w": jnp.asarray([0.5, -1.0])}, jnp.asarray(3.0)
    new, _ = stepper.update(grads, stepper.init(params, 10), params, loss)
    scale = 3.0 if pass_loss else 1.0
    np.testing.assert_allclose(new["w"], [1.0 - scale * 0.5, 2.0 + scale * 1.0])


def test_optax_stepper_without_the_loss_takes_a_plain_transformation():
    """A transformation without extra arguments fails when given `value=`, runs without."""
    plain = optax.GradientTransformation(lambda p: (), lambda g, s, p=None: (jax.tree.map(lambda x: -x, g), s))
    params, grads = {"w": jnp.ones(2)}, {"w": jnp.full(2, 0.25)}
    new, _ = rollout.OptaxStepper(plain, pass_loss=False).update(grads, (), params, jnp.asarray(1.0))
    np.testing.assert_allclose(new["w"], [0.75, 0.75])
    with pytest.raises(TypeError):
        rollout.OptaxStepper(plain).update(grads, (), params, jnp.asarray(1.0))


@dataclasses.dataclass(frozen=True)
class _ScaledLOpt:
    """A learned optimizer: state = (θ·num_steps, count); p -= θ · loss · g."""

    def init(self, theta, params, num_steps):
        return {"planned": theta * num_steps, "count": jnp.zeros((), jnp.int32)}

    def update(self, theta, state, grads, params, loss):
        new = jax.tree.map(lambda p, g: p - theta * loss * g, params, grads)
        return new, {"planned": state["planned"], "count": state["count"] + 1}


def test_learned_stepper_calls_the_learned_optimizer_with_theta():
    theta = jnp.asarray(0.1)
    stepper = rollout.LearnedStepper(_ScaledLOpt(), theta)
    cfg, params, state = rollout.instantiate(FAMILY, jax.random.PRNGKey(3))
    run = rollout.start(stepper, params, state, 20)
    np.testing.assert_allclose(run.opt["planned"], 2.0)
    batch, key = jax.tree.map(lambda x: x[0], _batches(1)), _keys(1)[0]
    new, loss = rollout.step(FAMILY, stepper, cfg, run, batch, key)
    (_, _), grads = FAMILY.loss_and_grad(params, state, key, batch, cfg)
    np.testing.assert_allclose(new.params["w"], params["w"] - 0.1 * loss * grads["w"], rtol=1e-6)
    assert int(new.opt["count"]) == 1

    def stepped_sum(t):  # differentiable in θ through the step (as the meta-gradient estimators need)
        new, _ = rollout.step(FAMILY, rollout.LearnedStepper(_ScaledLOpt(), t), cfg, run, batch, key)
        return jnp.sum(new.params["w"])

    grad = jax.grad(stepped_sum)(theta)
    np.testing.assert_allclose(grad, -float(loss) * float(jnp.sum(grads["w"])), rtol=1e-5)
