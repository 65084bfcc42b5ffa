"""Which θ of a meta-training workdir to use, by one rule, for eval, export and users.

    theta, network, chosen = workdir.weights("runs/small_v1")           # best, else final, else latest
    theta, network, chosen = workdir.weights("runs/small_v1", step=60)  # the θ of step 60
    print(chosen.describe())    # "runs/small_v1: the best θ by validation (step 60, val_meta_loss 0.957)"

Without `step`: the best θ by validation (`best_theta/`) if the run validates, else the
final θ (`theta/`, written when the run finishes), else the newest checkpoint's, so an
unfinished run can be evaluated too. With `step`: that step's θ.

The θ of a checkpoint is read from `theta_at/<step>/params` (velojax weights format, written
by `train.py` next to every checkpoint and pruned with them), or, in a workdir written before
those files existed, restored from the orbax checkpoint `checkpoints/<step>`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from meta_train.config import MetaTrainConfig
from meta_train.learned_optimizer import VeLONetwork
from velojax.checkpoint import PARAMS_FILENAME, CheckpointError, load_weights, save_weights
from velojax.config import VeLOConfig
from velojax.meta_params import MetaParams

CONFIG, SUMMARY, BEST, FINAL, CHECKPOINTS = "config.json", "summary.json", "best_theta", "theta", "checkpoints"
THETA_AT = "theta_at"  # theta_at/<step>/params: the θ of checkpoint <step>

_WHAT = {
    "best": "the best θ by validation",
    "final": "the final θ",
    "latest": "the θ of the newest checkpoint",
    "step": "the θ of the requested step",
}


@dataclasses.dataclass(frozen=True)
class Chosen:
    """Which θ of a workdir `weights` takes, and why: kind is "best" (by validation), "final",
    "latest" (the newest checkpoint, no best or final θ yet) or "step" (the one asked for).
    `path` is the weights file read; None when the θ is restored from an orbax checkpoint."""

    workdir: Path
    kind: str
    step: int | None
    val_meta_loss: float | None = None
    path: Path | None = None

    def describe(self) -> str:
        extra = f", val_meta_loss {self.val_meta_loss:.4g}" if self.val_meta_loss is not None else ""
        extra += "; no best or final θ yet" if self.kind == "latest" else ""
        return f"{self.workdir}: {_WHAT[self.kind]} (step {self.step}{extra})"


def is_workdir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def best_validation(history: list[dict]) -> dict | None:
    """The entry of a validation history (summary.json's "validation") with the lowest
    finite val_meta_loss (the earliest on ties), or None."""
    finite = [v for v in history if np.isfinite(v["val_meta_loss"])]
    return min(finite, key=lambda v: (v["val_meta_loss"], v["step"])) if finite else None


def step_theta_path(workdir: str | Path, step: int) -> Path:
    """Where the θ of checkpoint `step` is written: `<workdir>/theta_at/<step>/params`."""
    return Path(workdir) / THETA_AT / str(int(step)) / PARAMS_FILENAME


def save_step_theta(workdir: str | Path, step: int, theta: MetaParams, gen_id: str) -> Path:
    """Write the θ of checkpoint `step` (atomically, velojax weights format)."""
    return save_weights(step_theta_path(workdir, step), theta, gen_id=gen_id, step=step)


def prune_step_thetas(workdir: str | Path, keep: set[int]) -> None:
    """Remove `theta_at/<s>` for every s not in `keep` (the kept checkpoints' steps and the
    best step), half-written ones included."""
    root = Path(workdir) / THETA_AT
    for entry in root.iterdir() if root.is_dir() else ():
        if not (entry.name.isdigit() and int(entry.name) in keep):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _step_thetas(workdir: Path) -> dict[int, Path]:
    root = workdir / THETA_AT
    dirs = [d for d in root.iterdir() if d.name.isdigit()] if root.is_dir() else []
    return {int(d.name): d / PARAMS_FILENAME for d in dirs if (d / PARAMS_FILENAME).is_file()}


def _summary(workdir: Path) -> dict:
    path = workdir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


def _checkpoint_steps(workdir: Path) -> list[int]:
    if not (workdir / CHECKPOINTS).is_dir():
        return []
    return sorted(ocp.CheckpointManager((workdir / CHECKPOINTS).absolute()).all_steps())


def choose(workdir: str | Path, step: int | None = None) -> Chosen:
    """The θ `weights` would load (see the module doc), without loading it."""
    workdir = Path(workdir)
    if not is_workdir(workdir):
        raise FileNotFoundError(f"{workdir} is not a meta_train workdir (no {CONFIG})")
    summary = _summary(workdir)
    best = best_validation(summary.get("validation", []))
    # Every θ the workdir keeps, by step: a checkpoint's file, else the checkpoint itself (None).
    kept: dict[int, Path | None] = dict.fromkeys(_checkpoint_steps(workdir))
    kept.update(_step_thetas(workdir))
    if step is not None:
        if step not in kept and best is not None and int(best["step"]) == step and (workdir / BEST).exists():
            kept[step] = workdir / BEST
        if step not in kept and summary.get("steps") == step and (workdir / FINAL).exists():
            kept[step] = workdir / FINAL
        if step not in kept:
            raise FileNotFoundError(f"{workdir}: no θ of step {step} (kept: {sorted(kept) or 'none'})")
        return Chosen(workdir, "step", step, path=kept[step])
    if best is not None and (workdir / BEST).exists():
        return Chosen(workdir, "best", int(best["step"]), float(best["val_meta_loss"]), path=workdir / BEST)
    if (workdir / FINAL).exists():
        return Chosen(workdir, "final", summary.get("steps"), path=workdir / FINAL)
    if kept:
        latest = max(kept)
        return Chosen(workdir, "latest", latest, path=kept[latest])
    raise FileNotFoundError(f"{workdir}: no θ yet (no {BEST}/, {FINAL}/ or checkpoint): has the run taken a step?")


def weights(workdir: str | Path, step: int | None = None) -> tuple[MetaParams, VeLOConfig, Chosen]:
    """(θ, its network config, where it came from) of a workdir (see the module doc)."""
    chosen = choose(workdir, step)
    network = MetaTrainConfig.from_json((chosen.workdir / CONFIG).read_text()).network()
    if chosen.path is not None:
        return load_weights(chosen.path, network), network, chosen
    return _restore_theta(chosen.workdir, chosen.step, network), network, chosen


def _restore_theta(workdir: Path, step: int, network: VeLOConfig) -> MetaParams:
    """θ from the orbax checkpoint of `step` (workdirs without theta_at/ files)."""
    manager = ocp.CheckpointManager((workdir / CHECKPOINTS).absolute())
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as err:  # orbax raises many types for unreadable data
        raise CheckpointError(f"cannot read checkpoint {step} of {workdir}: {err}") from err
    theta = jax.tree.map(np.asarray, restored["theta"])
    expected = jax.eval_shape(VeLONetwork(network).init_theta, jax.random.PRNGKey(0))
    if jax.tree.structure(theta) != jax.tree.structure(expected) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(expected))
    ):
        raise CheckpointError(f"checkpoint {step} of {workdir}: θ does not match the config's network")
    return theta


def export(workdir: str | Path, to: str | Path, step: int | None = None) -> tuple[Path, Chosen]:
    """Write the θ `weights(workdir, step)` takes to `to` (velojax weights format, atomically;
    an existing directory, or a path ending in "/", gets `<to>/params`). Returns (the file
    written, what was chosen)."""
    theta, _, chosen = weights(workdir, step)
    path = Path(to)
    if path.is_dir() or str(to).endswith(("/", "\\")):
        path = path / PARAMS_FILENAME
    gen_id = f"{MetaTrainConfig.from_json((chosen.workdir / CONFIG).read_text()).name}-step{chosen.step}"
    try:
        return save_weights(path, theta, gen_id=gen_id, step=chosen.step or 0), chosen
    except OSError as err:  # an unwritable or impossible destination is the user's to fix
        where = f" ({err.filename})" if err.filename and Path(err.filename) != path else ""
        raise ValueError(f"cannot write {path}: {err.strerror or err}{where}") from err
