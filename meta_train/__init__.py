"""meta_train: ES meta-training of VeLO-style learned optimizers.

    from meta_train import configs, train
    train.train(configs.get("tiny_cpu"), "runs/tiny")

or `python -m meta_train --config tiny_cpu --workdir runs/tiny`. See docs/meta_train.md.
"""

from meta_train.config import FullESConfig, MetaTrainConfig, PESConfig, Phase
from meta_train.estimators import Estimator, FullES
from meta_train.learned_optimizer import VeLONetwork
from meta_train.pes import PESState, TruncatedPES

__all__ = [
    "Estimator",
    "FullES",
    "FullESConfig",
    "MetaTrainConfig",
    "PESConfig",
    "PESState",
    "Phase",
    "TruncatedPES",
    "VeLONetwork",
]
