"""The contract every estimator keeps (`estimators.Estimator`), checked for each one:

state = es.init(theta, key, family, mesh)
grad, state, metrics = es.estimate(theta, state, key, family, mesh, donate=...)
"""

import dataclasses

import jax
import numpy as np
import pytest

from meta_train import configs, data_feed, estimators, sharding, train
from meta_train import es as es_maths
from meta_train.config import ESTIMATORS as ESTIMATOR_CONFIGS
from meta_train.estimators import Estimator, FullES
from meta_train.pes import TruncatedPES
from tests.meta_train.helpers import QUADRATIC, SGD, SMALL_NET, WithoutAntithetic

ESTIMATORS = {
    "full_es": FullES(SGD, num_pairs=4, std=0.05, min_length=10, max_length=10, chunk=5, recompute_batches=2),
    "pes": TruncatedPES(SGD, num_pairs=4, std=0.05, trunc_length=10, chunk=5, min_length=20, max_length=40),
}
THETA = SGD.init_theta()


@pytest.fixture(params=sorted(ESTIMATORS))
def es(request) -> Estimator:
    return ESTIMATORS[request.param]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_estimate_is_a_finite_gradient_shaped_like_theta(es):
    state = es.init(THETA, jax.random.PRNGKey(0), QUADRATIC)
    grad, state, metrics = es.estimate(THETA, state, jax.random.PRNGKey(1), QUADRATIC, donate=True)
    assert jax.tree.structure(grad) == jax.tree.structure(THETA)
    for g, t in zip(_leaves(grad), _leaves(THETA)):
        assert g.shape == t.shape and g.dtype == t.dtype and np.all(np.isfinite(g))
    assert any(np.any(g != 0) for g in _leaves(grad))
    assert {"meta_loss", "length", "inner_steps", "nonfinite_pairs"} <= set(metrics)
    assert np.isfinite(metrics["meta_loss"]) and metrics["inner_steps"] > 0 and metrics["nonfinite_pairs"] == 0
    # The returned state feeds the next estimate.
    grad2, _, _ = es.estimate(THETA, state, jax.random.PRNGKey(2), QUADRATIC)
    assert jax.tree.structure(grad2) == jax.tree.structure(THETA)


def test_estimate_is_a_pure_function_of_its_inputs(es):
    state = es.init(THETA, jax.random.PRNGKey(0), QUADRATIC)
    (g1, s1, m1), (g2, s2, m2) = (es.estimate(THETA, state, jax.random.PRNGKey(1), QUADRATIC) for _ in range(2))
    assert m1 == m2
    for a, b in zip(_leaves((g1, s1)), _leaves((g2, s2))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["full_es", "pes"])
def test_train_builds_the_configured_estimator(name):
    config = configs.get("tiny_cpu").with_overrides([f"estimator={name}"])
    es = train.estimator(config, config.phases[0])
    assert isinstance(es, {"full_es": FullES, "pes": TruncatedPES}[name]) and isinstance(es, Estimator)


@pytest.mark.parametrize("name", ["full_es", "pes"])
def test_estimator_config_has_every_field_of_its_estimator(name):
    """A config mirrors its estimator's fields (bar the network and the phase's lengths),
    defaults included, so every field can be set from a config."""
    kind = ESTIMATOR_CONFIGS[name]
    estimator = {"full_es": FullES, "pes": TruncatedPES}[name]
    own = {f.name: f.default for f in dataclasses.fields(estimator)}
    for f in ("lopt", "min_length", "max_length"):
        own.pop(f)
    assert {f.name: f.default for f in dataclasses.fields(kind)} == own
    assert type(kind().build(None, configs.get("tiny_cpu").phases[0])) is estimator


@pytest.mark.parametrize("name", ["pes"])  # FullES: test_estimators.py checks its chunks
def test_shared_gate_product_gives_the_materialised_estimate(name):
    """With VeLO's network, both estimators use `antithetic_pairs` (the gate matrix as
    x@θ ± x@ε); the estimate equals the one with θ ± ε materialised per rollout."""
    es = dataclasses.replace(ESTIMATORS[name], lopt=SMALL_NET, std=0.01)
    plain = dataclasses.replace(es, lopt=WithoutAntithetic(SMALL_NET))
    theta = SMALL_NET.init_theta(jax.random.PRNGKey(0))
    (g1, _, m1), (g2, _, m2) = (
        e.estimate(theta, e.init(theta, jax.random.PRNGKey(1), QUADRATIC), jax.random.PRNGKey(2), QUADRATIC)
        for e in (es, plain)
    )
    assert m1["meta_loss"] == pytest.approx(m2["meta_loss"], rel=1e-5)
    for a, b in zip(_leaves(g1), _leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_names_split_out_of_estimators_are_still_importable_from_it():
    """train.py, benchmarks/ and older code import the mesh, ES and data-feed helpers from
    `meta_train.estimators`; they are the split-out modules' own functions."""
    for module, names in (
        (sharding, ["AXIS", "default_mesh", "place", "sharded_program", "to_host"]),
        (es_maths, ["OWN_DRAW_SIZE", "perturbation", "es_gradient_sum", "antithetic_thetas", "rollout_length"]),
        (data_feed, ["pair_rngs"]),
    ):
        for name in names:
            assert getattr(estimators, name) is getattr(module, name), name
