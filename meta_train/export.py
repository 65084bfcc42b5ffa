"""Ship a meta-training run's best θ inside the package: `velojax/weights/<name>.msgpack`
and its manifest `<name>.json` (see `velojax.shipped`).

    python -m meta_train.export --workdir runs/small_v1 --name small_v1 --version 1 \\
        --command "python -m meta_train --config small_v1 --workdir runs/small_v1" \\
        --evaluation docs/small_v1/evaluation.json --good-for "..." --not-for "..."
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from meta_train.config import MetaTrainConfig
from meta_train.workdir import best_validation
from tasks import cost
from velojax.checkpoint import load_weights, save_weights
from velojax.files import write_atomic
from velojax.shipped import sha256_of, weights_dir


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _machine() -> str:
    return f"{os.cpu_count()} CPU cores, {cost.cpu_model()}, {platform.system()} {platform.release()}"


def build_manifest(
    name: str, version: int, workdir: Path, command: str, evaluation: dict | None, good_for: str, not_for: str,
    sha256: str,
) -> dict[str, Any]:  # fmt: skip
    config = MetaTrainConfig.from_json((workdir / "config.json").read_text())
    summary = json.loads((workdir / "summary.json").read_text())
    return {
        "name": name,
        "version": int(version),
        "network": dataclasses.asdict(config.network()),
        "sha256": sha256,
        "training": {
            "command": command,
            "config": config.to_dict(),
            "commit": _commit(),
            "outer_steps": _steps_done(workdir),
            "outer_steps_planned": config.total_steps,
            "best_step": _validation_points(summary).get("best_step"),
            "validation_first_last_best": _validation_points(summary),
            "wall_time_s": summary.get("wall_time_s") or _last_elapsed(workdir),
            "machine": _machine(),
        },
        "evaluation": evaluation or {},
        "good_for": good_for,
        "not_for": not_for,
    }


def _validation_points(summary: dict) -> dict[str, float]:
    """First, last and best validation meta-loss, and the best one's step."""
    history = summary.get("validation", [])
    best = best_validation(history)
    if best is None:
        return {}
    return {"first": history[0]["val_meta_loss"], "last": history[-1]["val_meta_loss"],
            "best": best["val_meta_loss"], "best_step": best["step"]}  # fmt: skip


def _last_elapsed(workdir: Path) -> float | None:
    """The last metrics row's `elapsed_s` (the training loop of a run stopped before it returned)."""
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1]).get("elapsed_s") if lines else None


def _steps_done(workdir: Path) -> int:
    """Outer steps the workdir's run has done (its metrics rows; a stopped run may be resumed)."""
    path = workdir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def export(
    workdir: str | Path, name: str, version: int, command: str, *, evaluation: dict | None = None,
    good_for: str = "", not_for: str = "", out_dir: str | Path | None = None, which: str = "best_theta",
) -> Path:  # fmt: skip
    """Write `<out_dir>/<name>.msgpack` (θ from `workdir/<which>`) and `<name>.json`; returns the manifest path."""
    workdir = Path(workdir)
    out_dir = Path(out_dir) if out_dir is not None else weights_dir()
    config = MetaTrainConfig.from_json((workdir / "config.json").read_text())
    theta = load_weights(workdir / which, config.network())
    weights_path = save_weights(out_dir / f"{name}.msgpack", theta, gen_id=f"{name}-v{version}")
    manifest = build_manifest(name, version, workdir, command, evaluation, good_for, not_for, sha256_of(weights_path))
    return write_atomic(out_dir / f"{name}.json", json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meta_train.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, type=Path, help="a finished meta_train workdir")
    p.add_argument("--name", required=True, help="the name users pass as velo(weights=NAME)")
    p.add_argument("--version", type=int, default=1, help="manifest version (newest first in available_weights)")
    p.add_argument("--command", required=True, help="the exact training command, recorded in the manifest")
    p.add_argument("--evaluation", type=Path, help="a JSON file of headline evaluation figures")
    p.add_argument("--good-for", default="", help="what these weights are good for")
    p.add_argument("--not-for", default="", help="where they are not")
    p.add_argument("--which", default="best_theta", help="best_theta (default) or theta (the last)")
    p.add_argument("--out-dir", type=Path, help="default: the package's velojax/weights")
    args = p.parse_args(argv)
    evaluation = json.loads(args.evaluation.read_text()) if args.evaluation else None
    path = export(args.workdir, args.name, args.version, args.command, evaluation=evaluation,
                  good_for=args.good_for, not_for=args.not_for, out_dir=args.out_dir, which=args.which)  # fmt: skip
    print(f"manifest: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
