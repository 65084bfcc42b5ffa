"""The demo (the README's main command), offline:

    python -m eval demo [--out runs/demo]

1. meta-trains a 32-wide/8-bank VeLO network with the `tiny_cpu` config (`OUT/meta_train`);
2. evaluates it, AdamW-cosine, Lion and SGD-momentum (tuned over learning rates) on the
   `tiny` suite against LR-tuned Adam (7 LRs x 2 seeds, 10x the steps);
3. writes the report to `OUT/report.md` (+ `report.html`, PNGs).

Rerunning resumes: finished meta-training steps, baselines and tasks are not redone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from eval import cli


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m eval demo", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from meta_train import configs, train

    start = time.time()
    workdir = args.out / "meta_train"
    print(f"[1/2] meta-training tiny_cpu into {workdir}", flush=True)
    summary = train.train(configs.get("tiny_cpu"), workdir, progress=not args.no_progress)
    meta_s = time.time() - start
    print(f"[2/2] evaluating on the tiny suite into {args.out}", flush=True)
    eval_args = cli.parser().parse_args(
        [
            "--optimizer=velo",
            f"--weights={workdir}",
            "--suite=tiny",
            f"--out={args.out}",
            "--baseline-lrs=1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1",
            "--baseline-seeds=2",
        ]
        + (["--no-progress"] if args.no_progress else [])
    )
    notes = [f"meta-training (tiny_cpu): {meta_s:.0f} s this run"]
    if "eval_before" in summary and "eval_after" in summary:
        notes.append(
            f"held-out meta-loss (normalised, unseen tasks of the training family) {summary['eval_before']:.3f} "
            f"before -> {summary['eval_after']:.3f} after meta-training"
        )
    path = cli.evaluate(eval_args, notes)
    print(f"done in {time.time() - start:.0f} s; report: {path} (and {path.with_suffix('.html')})")
    return 0
