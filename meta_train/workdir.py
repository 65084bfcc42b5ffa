"""Which θ of a meta-training workdir to use, by one rule, for eval, export and users.

    theta, network, chosen = workdir.weights("runs/small_v1")           # best, else final, else latest
    theta, network, chosen = workdir.weights("runs/small_v1", step=60)  # the checkpoint of step 60
    print(chosen.describe())    # "runs/small_v1: the best θ by validation (step 60, val_meta_loss 0.957)"

Without `step`: the best θ by validation (`best_theta/`) if the run validates, else the final
θ (`theta/`, written when the run finishes), else the newest checkpoint's, so an unfinished
run can be evaluated too. With `step`: that checkpoint's θ.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from meta_train.config import MetaTrainConfig
from meta_train.learned_optimizer import VeLONetwork
from velojax.checkpoint import CheckpointError, load_weights
from velojax.config import VeLOConfig
from velojax.meta_params import MetaParams

CONFIG, SUMMARY, BEST, FINAL, CHECKPOINTS = "config.json", "summary.json", "best_theta", "theta", "checkpoints"


@dataclasses.dataclass(frozen=True)
class Chosen:
    """Where a workdir's θ came from: kind is "best" (by validation), "final" or "checkpoint"."""

    workdir: Path
    kind: str
    step: int | None
    val_meta_loss: float | None = None

    def describe(self) -> str:
        what = {"best": "the best θ by validation", "final": "the final θ", "checkpoint": "the θ of the checkpoint"}
        extra = f", val_meta_loss {self.val_meta_loss:.4g}" if self.val_meta_loss is not None else ""
        return f"{self.workdir}: {what[self.kind]} (step {self.step}{extra})"


def is_workdir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def best_validation(history: list[dict]) -> dict | None:
    """The entry of a validation history (summary.json's "validation") with the lowest
    finite val_meta_loss (the earliest on ties), or None."""
    finite = [v for v in history if np.isfinite(v["val_meta_loss"])]
    return min(finite, key=lambda v: (v["val_meta_loss"], v["step"])) if finite else None


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
    if step is not None:
        steps = _checkpoint_steps(workdir)
        if step not in steps:
            raise FileNotFoundError(f"{workdir}: no checkpoint of step {step} (kept: {steps or 'none'})")
        return Chosen(workdir, "checkpoint", step)
    best = best_validation(summary.get("validation", []))
    if best is not None and (workdir / BEST).exists():
        return Chosen(workdir, "best", int(best["step"]), float(best["val_meta_loss"]))
    if (workdir / FINAL).exists():
        return Chosen(workdir, "final", summary.get("steps"))
    steps = _checkpoint_steps(workdir)
    if steps:
        return Chosen(workdir, "checkpoint", steps[-1])
    raise FileNotFoundError(f"{workdir}: no θ yet (no {BEST}/, {FINAL}/ or checkpoint): has the run taken a step?")


def weights(workdir: str | Path, step: int | None = None) -> tuple[MetaParams, VeLOConfig, Chosen]:
    """(θ, its network config, where it came from) of a workdir (see the module doc)."""
    chosen = choose(workdir, step)
    network = MetaTrainConfig.from_json((chosen.workdir / CONFIG).read_text()).network()
    if chosen.kind != "checkpoint":
        return load_weights(chosen.workdir / (BEST if chosen.kind == "best" else FINAL), network), network, chosen
    manager = ocp.CheckpointManager((chosen.workdir / CHECKPOINTS).absolute())
    try:
        restored = manager.restore(chosen.step, args=ocp.args.StandardRestore())
    except Exception as err:  # orbax raises many types for unreadable data
        raise CheckpointError(f"cannot read checkpoint {chosen.step} of {chosen.workdir}: {err}") from err
    theta = jax.tree.map(np.asarray, restored["theta"])
    expected = jax.eval_shape(VeLONetwork(network).init_theta, jax.random.PRNGKey(0))
    if jax.tree.structure(theta) != jax.tree.structure(expected) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(expected))
    ):
        raise CheckpointError(f"checkpoint {chosen.step} of {chosen.workdir}: θ does not match the config's network")
    return theta, network, chosen
