"""LR-tuned reference Adam against the reference's published Adam envelopes (expected ~1x).

    python benchmarks/adam_vs_published.py
    python benchmarks/adam_vs_published.py --tasks ImageMLP_FashionMnist8_Relu32 --seeds 20

For every task of the published file whose data is available here, trains `adam_ref` (the
reference's Adam: eps_root 1e-8) over `--grid` for `--steps`, and prints per task:

- `speedup`: what `python -m eval --optimizer adam_ref` reports, the best learning rate's
  final loss (mean over seeds and 100 batches) against the published envelope;
- `curve`: our best learning rate's curve smoothed as the reference smooths its own (EMA
  0.95 per 10 steps) at the last step, against the published envelope: the same
  comparison without the final point's noise.

Both should be close to 1 if our tasks and measurement are the reference's; docs/eval.md
says what the figures were and why Fashion-MNIST 8x8 is not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from eval import baselines, envelope, optimizers, runner, suites
from eval.published import ADAM_ENVELOPES

BAND = (0.8, 1.25)


def curve_ratio(result: dict, published: envelope.Envelope, steps: int) -> float:
    """Steps the published envelope needs for our smoothed best-LR loss at `steps`, over `steps`."""
    xs = np.asarray(result["curve"]["steps"], np.float64)
    ys = np.asarray([np.nan if v is None else v for v in result["curve"]["loss"]], np.float64)
    ours = envelope.adam_envelope(xs, ys[None], ema_steps=10)
    return float(published.steps_to_reach(ours.loss[-1])) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baselines", type=Path, default=ADAM_ENVELOPES,
                        help="the reference's Adam envelopes (default: the copy in eval/published)")  # fmt: skip
    parser.add_argument("--tasks", help="comma-separated subset (default: every task with data)")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--grid", default="1e-3,3e-3,1e-2,3e-2", help="learning rates (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the per-task results here (JSON)")
    args = parser.parse_args()

    published = baselines.load_reference(args.baselines)
    names = args.tasks.split(",") if args.tasks else sorted(published)
    entries = suites.select(suites.get("normalizers75"), tasks_=names, steps=args.steps)
    spec = optimizers.OptaxSpec("adam_ref", tuple(float(x) for x in args.grid.split(",")))
    settings = runner.EvalSettings(seeds=args.seeds)
    rows = {}
    print(f"{'task':45s} {'final loss':>10s} {'best lr':>8s} {'speedup':>8s} {'curve':>6s} {'secs':>6s}")
    for entry in entries:
        family = runner.family_for(entry, settings)
        missing = runner.check_data(family)
        if missing:
            print(f"{entry.task:45s} skipped: {missing}")
            continue
        start = time.perf_counter()
        result = runner.evaluate_task(spec, entry, published[entry.task], settings, family)
        result["curve_ratio"] = curve_ratio(result, published[entry.task].envelope, entry.steps)
        seconds = time.perf_counter() - start
        rows[entry.task] = {k: v for k, v in result.items() if k != "curve"} | {"seconds": seconds}
        print(
            f"{entry.task:45s} {result['final_loss']:10.5f} {result['best_lr']:8.0e} {result['speedup']:8.2f}"
            f" {result['curve_ratio']:6.2f} {seconds:6.0f}"
        )
    inside = [t for t, r in rows.items() if BAND[0] <= r["speedup"] <= BAND[1]]
    print(f"{len(inside)} of {len(rows)} tasks within {BAND[0]}-{BAND[1]}x ({args.seeds} seeds, {args.steps} steps)")
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args), "tasks": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
