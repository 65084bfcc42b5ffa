"""python -m meta_train: meta-train a VeLO-style learned optimizer with ES (FullES over full
rollouts, or PES over truncations). Rerunning the same command resumes from the workdir's
last checkpoint; see docs/meta_train.md.

examples:
  python -m meta_train --config tiny_cpu --workdir runs/tiny                # ~2 minutes on 2 cores
  python -m meta_train --config small_v1 --workdir runs/small_v1            # the shipped recipe
  python -m meta_train --config tiny_cpu --workdir runs/t2 steps=20 meta_lr=1e-3   # field=value overrides
  python -m meta_train --config small_v1 --print-config                     # its fields and values
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from meta_train import configs
from velojax import cli_common


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meta_train",
        description=__doc__,
        formatter_class=cli_common.HelpFormatter,
        epilog=cli_common.EPILOG,
    )
    parser.add_argument("--config", required=True, help=f"one of: {', '.join(configs.names())}")
    parser.add_argument(
        "--workdir", help="checkpoints, metrics.jsonl, tensorboard/, meta_loss.png, best_theta/, theta/ (required)"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the config's fields and values (with overrides) and exit"
    )
    parser.add_argument("--init-theta", help="start from these meta-parameters (velojax checkpoint)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--mock-data",
        action="store_true",
        help="tfds datasets replaced by random mock examples: a smoke run of a config offline (meaningless metrics)",
    )
    cluster = parser.add_argument_group("several processes (jax.distributed)")
    cluster.add_argument("--distributed", action="store_true", help="join a cluster detected from the environment "
                         "(TPU pods, Slurm, ...), or the one given by the flags below")  # fmt: skip
    cluster.add_argument("--coordinator", help="HOST:PORT of process 0")
    cluster.add_argument("--num-processes", type=int, help="how many processes (with --coordinator)")
    cluster.add_argument("--process-id", type=int, help="this process's index (with --coordinator)")
    parser.add_argument("overrides", nargs="*", help="config field=value, e.g. meta_lr=1e-3 steps=20")
    args = parser.parse_args(argv)
    try:
        config = configs.get(args.config).with_overrides(args.overrides)
    except (KeyError, ValueError) as err:
        parser.error(cli_common.message(err))
    if args.print_config:
        print(config.to_json())
        return 0
    if not args.workdir:
        parser.error("--workdir is required (unless --print-config)")

    import jax

    if args.distributed or args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    from meta_train import train
    from tasks import data
    from velojax.checkpoint import load_weights

    theta = load_weights(args.init_theta, config.network()) if args.init_theta else None
    print(f"meta_train: {config.name}, {config.total_steps} outer steps, {jax.device_count()} device(s) in "
          f"{jax.process_count()} process(es), workdir {args.workdir}", flush=True)  # fmt: skip
    mock = data.mock_real_datasets(num_examples=200) if args.mock_data else contextlib.nullcontext()
    with mock, jax.numpy_dtype_promotion("standard"):
        summary = train.train(config, args.workdir, init_theta=theta, progress=not args.no_progress)
    before, after = summary.get("eval_before"), summary.get("eval_after")
    if before is not None and after is not None:
        print(f"held-out meta-loss: {before:.4f} before, {after:.4f} after meta-training")
    if summary.get("steps") == config.total_steps and jax.process_index() == 0:
        w = args.workdir
        print(f"theta: {w}/theta   plot: {w}/meta_loss.png   tensorboard: {w}/tensorboard")
    return 0


if __name__ == "__main__":
    from tasks.data import DatasetUnavailable

    sys.exit(cli_common.run(main, prog="python -m meta_train", expected=(DatasetUnavailable,)))
