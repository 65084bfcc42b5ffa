"""`tiny_cpu` meta-trained with TruncatedPES: 8 pairs keep their 8x8 Fashion-MNIST MLP
runs alive across outer steps (episodes of 50-200 steps, VeLO's num_steps per episode),
50 inner steps per estimate, the average training loss as meta-loss."""

import dataclasses

from meta_train.configs import tiny_cpu

CONFIG = dataclasses.replace(tiny_cpu.CONFIG, name="tiny_cpu_pes", estimator="pes", trunc_length=50)
