"""How well the cost model predicts step times on this machine.

    python benchmarks/cost_model.py [--eval 20] [--seed 1]

Calibrates the local cost model (tasks.cost.calibrate, uncached) on its default set, then
samples `--eval` phase-1 tasks (offline datasets, base families, no augmentations),
measures their seconds per inner step of 8 vmapped tasks (SGD, 10-step unrolls) and
prints predicted / measured with the median and worst ratio.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np

from tasks import cost, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-time", type=float, default=1e-4, help="reference budget of the evaluated samples")
    args = parser.parse_args()

    start = time.perf_counter()
    calibration = phases.calibration_families()
    model = cost.calibrate(calibration, use_cache=False)
    print(f"calibrated on {len(calibration)} configs in {time.perf_counter() - start:.0f} s: {model}", flush=True)

    ratios = []
    keys = jax.random.split(jax.random.PRNGKey(args.seed), args.eval)
    print(f"{'kind':<15} {'predicted ms':>12} {'measured ms':>12} {'ratio':>7}  config")
    for key in keys:
        task = phases.sample_task(key, 1, datasets=phases.OFFLINE_DATASETS)
        family = task.family.base() if task.augmentations else task.family
        if task.max_time > args.max_time:  # keep the evaluation quick: re-draw under the cap
            found = cost.rejection_sample(phases.family_sampler(task.base_kind, phases.OFFLINE_DATASETS),
                                          np.random.default_rng(int(key[-1])), args.max_time)  # fmt: skip
            family = found[0] if found else family
        with jax.numpy_dtype_promotion("standard"):
            measured = cost.measure_step_seconds(family, model.num_tasks)
        predicted = model.seconds(family)
        ratios.append(predicted / measured)
        print(
            f"{task.base_kind:<15} {1e3 * predicted:>12.3f} {1e3 * measured:>12.3f} {ratios[-1]:>7.2f}  {family.name}",
            flush=True,
        )
    logs = np.abs(np.log(ratios))
    worst = ratios[int(np.argmax(logs))]
    print(f"\nratio predicted/measured over {len(ratios)} configs: median {np.median(ratios):.2f}, "
          f"worst {worst:.2f} (|log| median {math.exp(np.median(logs)):.2f}x off)")  # fmt: skip


if __name__ == "__main__":
    main()
