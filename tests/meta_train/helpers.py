"""Small meta-training problems for tests."""

import dataclasses

import jax.numpy as jnp

from meta_train import configs
from meta_train.estimators import FullES
from meta_train.learned_optimizer import VeLONetwork
from tasks.families.quadratic import Quadratic
from velojax.config import VeLOConfig

QUADRATIC = Quadratic(dim=6, batch_size=2, noise=0.1)
SMALL_NET = VeLONetwork(VeLOConfig.small(8, 2))


def small_es(**kw) -> FullES:
    defaults = dict(num_pairs=4, min_length=10, max_length=10, chunk=5, recompute_batches=2)
    return FullES(SMALL_NET, **{**defaults, **kw})


@dataclasses.dataclass(frozen=True)
class SometimesNaN(Quadratic):
    """A quadratic whose tasks with target[0] > 0 have a NaN loss, which (unlike the
    families' normalizers) its normalizer passes on."""

    def loss(self, params, state, key, batch, cfg):
        loss, state = super().loss(params, state, key, batch, cfg)
        return jnp.where(cfg["target"][0] > 0, jnp.nan, loss), state

    def normalizer(self, loss, cfg=None):
        return jnp.log1p(loss)


# A seconds-long tiny_cpu: the CLI runs it with these overrides (plus eval_pairs=0).
TINY_OVERRIDES = ["steps=4", "min_length=10", "max_length=20", "num_pairs=2", "chunk=5", "recompute_batches=2",
                  "lstm_hidden_size=8", "param_inits=2", "checkpoint_every=1", "eval_pairs=2", "eval_length=10",
                  "batch_size=8", "meta_lr=1e-2"]  # fmt: skip
TINY_RUN = configs.get("tiny_cpu").with_overrides(TINY_OVERRIDES)
