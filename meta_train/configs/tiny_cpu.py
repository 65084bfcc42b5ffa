"""Minutes on a 2-core laptop: a 32-wide/8-bank VeLO network meta-trained with FullES on
an 8x8 Fashion-MNIST MLP (the Debian package's copy, offline)."""

from meta_train.config import FullESConfig, MetaTrainConfig, Phase

CONFIG = MetaTrainConfig(
    name="tiny_cpu",
    phases=(
        Phase(
            steps=150,
            min_length=50,
            max_length=200,
            tasks=("ImageMLP_FashionMnist8_Relu32",),
            offline=True,
            batch_size=64,
        ),
    ),
    lstm_hidden_size=32,
    param_inits=8,
    estimator=FullESConfig(num_pairs=8, chunk=25, recompute_batches=10),
    eval_recompute_batches=10,
    meta_lr=3e-3,
    checkpoint_every=25,
    eval_pairs=16,
    # Its longest training rollout: lengths are LogUniform in [50, 200] rounded down to a
    # multiple of the chunk (25), so 200 only at a float32 tie. (Until 24b760b,
    # eval_length=200 ran 175 steps through a float64 rounding; every tiny_cpu figure
    # measured before that is at 175.)
    eval_length=175,
)
