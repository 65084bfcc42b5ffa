"""The demo (the README's main command), offline:

    python -m eval demo [--out runs/demo]

1. meta-trains a 32-wide/8-bank VeLO network briefly with the `tiny_cpu` config
   (`OUT/meta_train`, about a minute): the pipeline at work, not a useful optimizer;
2. evaluates velojax's shipped learned optimizer (`small_v1`, meta-trained offline by
   `python -m meta_train --config small_v1`), that briefly meta-trained network, and
   AdamW-cosine, Lion and SGD-momentum (each tuned over learning rates per task) on the
   `tiny` suite against LR-tuned Adam (7 LRs x 2 seeds, 10x each task's steps);
3. writes the report to `OUT/report.md` (+ `report.html`, PNGs).

Rerunning resumes: finished meta-training steps, baselines and tasks are not redone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from eval import cli, optimizers
from velojax import optimizer
from velojax import shipped as shipped_weights

DEMO_LABEL = "tiny_cpu_demo"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m eval demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    p.add_argument("--weights", default=None, help="shipped learned optimizer to show (default: the newest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from meta_train import configs, train

    shipped = args.weights or optimizer.available_weights()[0]
    start = time.time()
    workdir = args.out / "meta_train"
    print(f"[1/2] meta-training tiny_cpu briefly into {workdir} (the pipeline, not a useful optimizer)", flush=True)
    summary = train.train(configs.get("tiny_cpu"), workdir, progress=not args.no_progress)
    meta_s = time.time() - start
    print(f"[2/2] evaluating {shipped} (shipped), {DEMO_LABEL} and tuned competitors on the tiny suite", flush=True)
    eval_args = cli.parser().parse_args(
        [
            "--optimizer=velo",
            f"--weights={shipped}",
            "--suite=tiny",
            f"--out={args.out}",
            "--baseline-lrs=1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1",
            "--baseline-seeds=2",
        ]
        + (["--no-progress"] if args.no_progress else [])
    )
    manifest = shipped_weights.manifest(shipped)
    notes = [
        f"{shipped}: the learned optimizer shipped with velojax (weights `{shipped}`, version "
        f"{manifest['version']}), meta-trained offline with `{manifest['training']['command']}`; no tuning here",
        f"{DEMO_LABEL}: this demo's own {meta_s:.0f} s meta-training (`tiny_cpu`, one 8x8 Fashion-MNIST MLP, "
        "150 outer steps): shows the pipeline, not a useful optimizer",
        "adamw_cosine, lion, sgd_momentum: hand-designed optimizers, each tuned per task over 7 learning rates; "
        "every speedup is against LR-tuned Adam",
    ]
    if "eval_before" in summary and "eval_after" in summary:
        notes.append(
            f"{DEMO_LABEL} held-out meta-loss (normalised, unseen tasks of its training family) "
            f"{summary['eval_before']:.3f} before -> {summary['eval_after']:.3f} after its meta-training"
        )
    demo_spec = optimizers.velo(workdir, label=DEMO_LABEL)
    path = cli.evaluate(eval_args, notes, extra_specs=(demo_spec,))
    print(f"done in {time.time() - start:.0f} s; report: {path} (and {path.with_suffix('.html')})")
    return 0
