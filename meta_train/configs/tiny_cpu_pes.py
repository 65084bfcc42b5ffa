"""`tiny_cpu` meta-trained with TruncatedPES: 8 pairs keep their 8x8 Fashion-MNIST MLP
runs alive across outer steps (episodes of 50-200 steps, VeLO's num_steps per episode),
50 inner steps per estimate, the average training loss as meta-loss."""

import dataclasses

from meta_train.config import PESConfig
from meta_train.configs import tiny_cpu

CONFIG = dataclasses.replace(
    tiny_cpu.CONFIG,
    name="tiny_cpu_pes",
    estimator=PESConfig(num_pairs=8, chunk=25, trunc_length=50, sign_delta=1.0),
)
