"""The reference recipe (spec §4), phases 1-4, as synchronous outer steps.

One outer step here is one learner update of the reference: it averages the estimates of
512 worker messages. Phase 1's messages hold 8 estimators (each its own family) of 8
pairs, later phases 1 estimator of 8 pairs, hence `estimates_per_step`. The reference's
staleness and asynchronous workers have no counterpart: every estimate uses the current θ.
Phases 2-4 start from the previous phase's θ (`python -m meta_train --init-theta PATH`);
their length is not recorded in the reference (its configs cap each at 100k updates)."""

from meta_train.config import FullESConfig, MetaTrainConfig, Phase

# Lengths are multiples of 10 (the reference's steps_per_jit); 100 steps per compiled call,
# as each call regenerates the pairs' perturbations (|θ| normals per pair).
_ESTIMATOR = FullESConfig(
    num_pairs=8, std=0.01, chunk=100, length_multiple=10, loss_type="last_recompute", recompute_batches=100,
    sign_delta=1.0,
)  # fmt: skip
_PHASES = {
    1: (Phase(steps=100_000, min_length=100, max_length=20_000, distribution=1), 512 * 8, 4),
    2: (Phase(steps=100_000, min_length=200, max_length=20_000, distribution=2), 512, 10),
    3: (Phase(steps=100_000, min_length=200, max_length=20_000, distribution=2), 512, 20),
    4: (Phase(steps=100_000, min_length=200, max_length=200_000, distribution=2, resample_every=200), 512, 20),
}

CONFIGS = {
    f"velo_phase{i}": MetaTrainConfig(
        name=f"velo_phase{i}",
        phases=(phase,),
        estimates_per_step=estimates,
        accumulate=k,
        meta_lr=3e-4,
        estimator=_ESTIMATOR,
    )
    for i, (phase, estimates, k) in _PHASES.items()
}
