"""Atomic, keep-last-N checkpoints of the meta-training state with orbax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from velojax.checkpoint import CheckpointError  # one error for every unusable checkpoint

__all__ = ["CheckpointError", "Checkpointer"]


class Checkpointer:
    """`save(step, state)` writes `dir/<step>` (orbax writes to a temporary directory and
    renames it when complete, so a kill never leaves a half checkpoint that looks whole);
    `restore_latest(template)` reads the newest one into the structure of `template`."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: dict[str, Any]) -> None:
        self._manager.save(int(step), args=ocp.args.StandardSave(dict(state)))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The steps of the kept checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def restore_latest(self, template: dict[str, Any]) -> dict[str, Any] | None:
        """The newest checkpoint restored like `template` (arrays, structure, dtypes), or
        None if there is none. Raises CheckpointError if it does not fit or is corrupt."""
        step = self._manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(_abstract, dict(template))
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises many types for unreadable/mismatched data
            raise CheckpointError(
                f"cannot restore checkpoint {self.directory / str(step)}: {type(err).__name__}: {err}\n"
                "It is corrupt or from a different config; delete it (or the workdir) to start over."
            ) from err
        if int(restored["step"]) != step:
            raise CheckpointError(f"checkpoint {self.directory / str(step)} holds step {int(restored['step'])}")
        return type(template)(restored)


def _abstract(x):
    if isinstance(x, jax.Array):  # restored with the same sharding (several processes too)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, (np.ndarray, np.generic)):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    return x
