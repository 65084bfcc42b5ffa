"""The family contract (`check_family`) on every fixed task, batch shrunk to 4, on mock data.

The full sweep costs about 16 minutes on 2 cores (most of it ResNets, ViTs, MLP-Mixers and
learned-optimizer tasks), so the default run checks a representative of every architecture
variant and the rest carry the `slow` marker: `python -m pytest -m slow tests/tasks`."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import tasks
from tasks.base import with_batch_size
from tests.tasks.conformance import check_family, mock_real_datasets

# One fixed task per family and main variant (normalisation, dropout, loss, width, cell,
# dataset kind), chosen among the cheap ones: ~2-10 s each on 2 cores.
REPRESENTATIVES = {
    "Conv_Cifar10_32x64x64_batchnorm",
    "ESWrapped_8pair_ImageMLP_Mnist_128x128x128_Relu",
    "ImageMLP_Cifar10_1024x1024_Relu",
    "ImageMLP_Cifar10_128x128_Dropout05_Relu_MSE",
    "ImageMLP_Cifar10_128x128x128_BatchNorm_Tanh",
    "LOpt_MLPLOpt_FahionMnist_10",
    "MLPMixer_Cifar100_tiny16",
    "RNNLM_lm1bbytes_Patch128_LSTM128_Embed64",
    "RNNLM_wikipediaenbytes_Patch32_GRU256_Embed128",
    "TransformerLM_LM1B_MultiRuntime_3",
}


def _optimizer(name: str) -> optax.GradientTransformation:
    """Adam for 5 steps on one batch of 4; wide or noisy models overshoot at 3e-3."""
    if any(f"_{w}x{w}_" in name for w in (1024, 4096, 8192)):
        return optax.adam(1e-4)
    if "Dropout" in name:
        return optax.adam(3e-4)
    return optax.adam(3e-3)


def _params():
    return [_param(name) for name in tasks.names()]


def _param(name):
    marks = () if name in REPRESENTATIVES else (pytest.mark.slow,)
    return pytest.param(name, marks=marks, id=name)


def test_representatives_are_fixed_tasks():
    assert REPRESENTATIVES <= set(tasks.names())


@pytest.mark.parametrize("name", _params())
def test_fixed_task_contract(name):
    family = with_batch_size(tasks.get(name), 4)
    # 200 mock examples: the longest language-model windows (129 tokens) fit every split.
    with mock_real_datasets(num_examples=200):
        if name.startswith("ESWrapped_"):
            # An ES gradient of 1-8 directions with |ε| ~ 3 (σ = 0.01 on ~100k weights) is a
            # descent direction only probably: the contract is checked on the wrapped task,
            # and the ES gradient itself for finiteness (its accuracy: test_augmentations).
            check_family(family.inner, optimizer=_optimizer(name))
            key = jax.random.PRNGKey(0)
            params, state = family.init(key, family.sample(key))
            batch = family.get_batch(np.random.default_rng(0), "train")
            (loss, _), grads = jax.jit(family.loss_and_grad)(params, state, key, batch, family.sample(key))
            leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
            assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in leaves) and any(np.any(g) for g in leaves)
        else:
            check_family(family, optimizer=_optimizer(name))
