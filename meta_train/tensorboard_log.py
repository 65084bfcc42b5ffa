"""Meta-training metrics as TensorBoard scalars, written with tensorboardX (no TensorFlow).

    tensorboard --logdir WORKDIR/tensorboard

`metrics.jsonl` stays the record a run resumes from; these event files mirror it. A run
resumed from the checkpoint of outer step S opens a new file that starts with a purge at
S + 1, so TensorBoard hides what a killed process logged after that checkpoint, as
`metrics.jsonl` drops those rows.
"""

from __future__ import annotations

import numbers
from pathlib import Path

# The held-out meta-loss before (step 0) and after (the last step) meta-training.
HELD_OUT_TAG = "held_out_meta_loss"
VALIDATION_TAG = "val_meta_loss"  # the mean over the config's validation tasks


class ScalarLog:
    """Appends metric rows ({"step": int, name: value, ...}) as scalars at `step`.
    Non-numeric values (the family name) are left out. With `enabled=False` (processes
    other than 0) every call does nothing."""

    def __init__(self, logdir: str | Path, start_step: int = 0, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            # One file per (re)start, named in start order (TensorBoard reads a run's files
            # in name order; a shared name would be truncated), beginning with a purge at
            # the step this segment resumes from.
            purge = start_step + 1 if start_step else None
            self._writer = SummaryWriter(str(logdir), purge_step=purge, filename_suffix=f".from{start_step:010d}")

    def write(self, row: dict) -> None:
        numeric = {k: v for k, v in row.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        self._add(numeric, int(row["step"]))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._add({tag: value}, step)

    def _add(self, values: dict, step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            if tag != "step":
                self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()  # as durable as the JSONL line beside it

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
