"""python -m tasks: sample meta-training tasks as VeLO's curriculum draws them, or list the fixed tasks.

examples:
  python -m tasks sample --phase 1 -n 20             # 20 tasks of phase 1 (reference cost estimates)
  python -m tasks sample --phase 2 -n 5 --offline    # on datasets that need no download
  python -m tasks sample -n 10 --calibrate           # with ms/step timed on this machine (minutes once)
  python -m tasks list --params                      # the fixed tasks with their parameter counts
"""

from __future__ import annotations

import argparse
import sys

import jax

from tasks import phases
from tasks.data import DatasetUnavailable
from velojax import cli_common


def _sample(args) -> None:
    from tasks import cost

    local = None
    if args.calibrate:
        families = phases.calibration_families()
        print(f"calibrating the cost model on this machine: timing {len(families)} tasks (cached)...",
              file=sys.stderr, flush=True)  # fmt: skip
        local = cost.calibrate(families, progress=True)
    datasets = None
    if args.offline:
        datasets = {"image": tuple(args.image_datasets.split(",")), "text": tuple(args.text_datasets.split(","))}
    print(f"phase {args.phase}, seed {args.seed}; budgets and sampling: {cost.REFERENCE.device}")
    est = "est ms/step" if local else "ref ms/step"
    header = f"{'#':>3}  {'budget s':>8}  {est:>11}  {'params':>10}  {'family':<14} {'augmentations':<44} configuration"
    print(header)
    print("-" * len(header))
    for i, key in enumerate(jax.random.split(jax.random.PRNGKey(args.seed), args.n)):
        t = phases.sample_task(key, args.phase, datasets=datasets)
        ms = 1e3 * (local or cost.REFERENCE).seconds(t.family)
        params = "-" if args.no_params else f"{t.family.num_params:,}"
        base = t.family.base().name if t.augmentations else t.family.name
        augs = ",".join(t.augmentations) or "-"
        print(f"{i:>3}  {t.max_time:>8.0e}  {ms:>11.4f}  {params:>10}  {t.base_kind:<14} {augs:<44} {base}")


def _list(args) -> None:
    from tasks import registry

    for name in registry.names():
        if args.params:
            family = registry.get(name)
            print(f"{name:<60} {family.num_params:>14,}")
        else:
            print(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tasks", description=__doc__, formatter_class=cli_common.HelpFormatter, epilog=cli_common.EPILOG
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "sample",
        help="sample tasks from a VeLO meta-training phase",
        formatter_class=cli_common.HelpFormatter,
        description="Draw tasks as a VeLO meta-training phase does (family, size under the phase's time budget, "
        "augmentations) and print one line each: budget, estimated seconds per step, parameters, family, "
        "augmentations, name. No data is read unless --calibrate.",
        epilog="examples:\n  python -m tasks sample --phase 1 -n 20\n"
        "  python -m tasks sample --phase 2 -n 5 --offline\n  python -m tasks sample -n 10 --calibrate --seed 3",
    )
    s.add_argument("--phase", type=int, default=1, choices=(1, 2), help="curriculum phase (its budgets and families)")
    s.add_argument("-n", type=int, default=20, help="how many tasks")
    s.add_argument("--seed", type=int, default=0, help="the draws are a function of it")
    s.add_argument("--calibrate", action="store_true",
                   help="show ms/step on this machine (times ~27 tasks once, minutes; cached) instead of the "
                        "reference device's estimate, which is what sampling uses")  # fmt: skip
    s.add_argument(
        "--no-params", action="store_true", help="skip the parameter counts (they build each model abstractly)"
    )
    s.add_argument("--offline", action="store_true", help="draw datasets from --image-datasets/--text-datasets")
    s.add_argument("--image-datasets", default=",".join(phases.OFFLINE_DATASETS["image"]), help="with --offline")
    s.add_argument("--text-datasets", default=",".join(phases.OFFLINE_DATASETS["text"]), help="with --offline")
    s.set_defaults(run=_sample)
    ls = sub.add_parser("list", help="list the fixed-task registry", formatter_class=cli_common.HelpFormatter)
    ls.add_argument("--params", action="store_true", help="with parameter counts (builds each model abstractly)")
    ls.set_defaults(run=_list)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(cli_common.run(main, prog="python -m tasks", expected=(DatasetUnavailable,)))
