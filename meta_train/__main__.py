"""python -m meta_train: meta-train a VeLO-style learned optimizer with ES (FullES over full
rollouts, or PES over truncations). Rerunning the same command resumes from the workdir's
last checkpoint; see docs/meta_train.md. `python -m meta_train export` writes a workdir's θ
to a weights file (see `python -m meta_train export --help`).

examples:
  python -m meta_train --config tiny_cpu --workdir runs/tiny                # ~2 minutes on 2 cores
  python -m meta_train --config small_v1 --workdir runs/small_v1            # the shipped recipe
  python -m meta_train --config tiny_cpu --workdir runs/t2 steps=20 meta_lr=1e-3   # field=value overrides
  python -m meta_train --config small_v1 --print-config                     # its fields and values
  python -m meta_train export --workdir runs/tiny --to tiny.msgpack         # its θ, finished or not
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from meta_train import configs
from velojax import cli_common

EXPORT_DOC = """python -m meta_train export: write one θ of a meta_train workdir to a weights file
(the format of `velojax.checkpoint.load_weights`, `optimizer.velo(n, weights=PATH)` and
`python -m eval --weights PATH`), finished run or not.

Without --step it takes the θ that `python -m eval --weights WORKDIR` takes: the best by
validation (best_theta/), else the final θ (theta/), else the newest checkpoint's (a run
still going or stopped early). --step S takes the θ of step S (a kept checkpoint's). It
prints which step it took, why, and the file it wrote. (To ship a run's θ inside the
package with a manifest, see `python -m meta_train.export --help`.)

examples:
  python -m meta_train export --workdir runs/tiny --to tiny.msgpack               # best, else final, else newest
  python -m meta_train export --workdir runs/tiny --step 100 --to runs/tiny_100/  # writes runs/tiny_100/params
  python -m eval --optimizer velo --weights tiny.msgpack --suite tiny --out runs/eval
"""


def export_main(argv: list[str]) -> int:
    """`python -m meta_train export`: see EXPORT_DOC."""
    parser = argparse.ArgumentParser(
        prog="python -m meta_train export",
        description=EXPORT_DOC,
        formatter_class=cli_common.HelpFormatter,
        epilog=cli_common.EPILOG,
    )
    parser.add_argument("--workdir", required=True, type=Path, help="a meta_train workdir (finished or not)")
    parser.add_argument(
        "--step", type=int, metavar="S", help="the θ of this step (default: best, else final, else newest)"
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="PATH",
        help="the weights file to write; an existing directory (or PATH/) gets PATH/params",
    )
    args = parser.parse_args(argv)
    from meta_train import workdir

    path, chosen = workdir.export(args.workdir, args.to, args.step)
    print(f"exported {chosen.describe()} to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m meta_train",
        description=__doc__,
        formatter_class=cli_common.HelpFormatter,
        epilog=cli_common.EPILOG,
    )
    parser.add_argument("--config", required=True, help=f"one of: {', '.join(configs.names())}")
    parser.add_argument(
        "--workdir",
        help="checkpoints/, theta_at/, metrics.jsonl, tensorboard/, meta_loss.png, best_theta/, theta/ (required)",
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
    cli_common.add_cluster_flags(parser)
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

    try:
        cli_common.join_cluster(args)
    except ValueError as err:
        parser.error(cli_common.message(err))

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

    prog = "python -m meta_train export" if sys.argv[1:2] == ["export"] else "python -m meta_train"
    sys.exit(cli_common.run(main, prog=prog, expected=(DatasetUnavailable,)))
