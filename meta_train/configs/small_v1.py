"""A learned optimizer of our own on 2 CPU cores: a 32-wide/8-bank VeLO network,
meta-trained with FullES on velojax's offline task distribution (MLPs, ConvNets and MLP
autoencoders on real Fashion-MNIST at 8-28 px and on procedural shapes; varied widths,
depths, activations and batch sizes; rollouts of 400-2,000 steps).

It starts from `velojax.meta_params.scheduled_meta_params` (an Adam-like normalised
momentum step relative to each tensor's RMS, with a cosine decay over the run written
into the LSTM) rather than from the meta-loss clamp of a random θ; ES then adjusts every
part of the network for the final loss of whole runs. Validation: four tasks never in
the training pool, one of them 3,000 steps (longer than any training rollout); the
best θ by it is exported to `best_theta/`. See docs/meta_train.md ("small_v1"), also for
what did not work (100-2,000-step rollouts at meta_lr 1e-3 made long runs diverge).
"""

from meta_train.config import FullESConfig, MetaTrainConfig, Phase
from tasks import small_fixed
from tasks.distribution import FamilyRange, TaskDistribution

DATASETS = ("fashion_mnist", "synthetic_shapes")
DISTRIBUTION = TaskDistribution(
    families=(
        FamilyRange(
            "image_mlp",
            weight=2.0,
            datasets=DATASETS,
            image_sizes=(8, 28),
            widths=(16, 128),
            depths=(1, 3),
            batch_sizes=(32, 256),
        ),
        FamilyRange(
            "image_conv",
            weight=0.5,
            datasets=DATASETS,
            image_sizes=(8, 16),
            widths=(4, 12),
            depths=(1, 2),
            batch_sizes=(16, 48),
        ),
        FamilyRange(
            "image_mlp_ae",
            datasets=DATASETS,
            image_sizes=(8, 16),
            widths=(16, 64),
            depths=(1, 2),
            batch_sizes=(32, 128),
        ),
    ),  # fmt: skip
    max_step_mflops=8.0,
    exclude=tuple(small_fixed.VALIDATION) + tuple(small_fixed.HELDOUT) + tuple(small_fixed.OOD),
)

CONFIG = MetaTrainConfig(
    name="small_v1",
    phases=(Phase(steps=120, min_length=400, max_length=2000, custom=DISTRIBUTION, pool_size=8, resample_every=60),),
    lstm_hidden_size=32,
    param_inits=8,
    estimator=FullESConfig(
        num_pairs=8, std=0.01, chunk=100, length_multiple=10, loss_type="last_recompute", recompute_batches=5
    ),
    eval_recompute_batches=5,
    meta_lr=3e-4,
    meta_lr_final_fraction=0.1,
    checkpoint_every=10,
    eval_pairs=0,
    init="scheduled",
    init_lr_mult=30.0,
    init_decay=0.3,
    validation=tuple(small_fixed.VALIDATION_STEPS.items()),
    validate_every=15,
    validation_seeds=2,
)
