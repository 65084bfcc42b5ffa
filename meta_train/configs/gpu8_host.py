"""One host with 8 GPUs: the VeLO-size network on the phase-1 distribution, 8 pairs per
device (64 per estimate, split over the "pairs" mesh axis), 8 estimates (families) per
outer step, Adam every 4 steps; rollouts up to 5,000 steps so that an outer step stays
around a minute."""

from meta_train.config import FullESConfig, MetaTrainConfig, Phase

CONFIG = MetaTrainConfig(
    name="gpu8_host",
    phases=(
        Phase(steps=2_000, min_length=100, max_length=2_000, distribution=1, resample_every=100),
        Phase(steps=8_000, min_length=200, max_length=5_000, distribution=1, resample_every=100),
    ),
    estimator=FullESConfig(num_pairs=64, chunk=50, recompute_batches=20),
    estimates_per_step=8,
    eval_recompute_batches=20,
    accumulate=4,
    meta_lr=3e-4,
    checkpoint_every=10,
)
