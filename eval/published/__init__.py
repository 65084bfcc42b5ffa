"""The reference's published LR-tuned baselines, shipped so `--baselines published` works offline.

Provenance and licence: see `NOTICE` in this directory and docs/eval.md.
"""

from pathlib import Path

DIR = Path(__file__).resolve().parent
#: 75 tasks: the reference's LR-tuned Adam loss envelopes (steps, loss) per task.
ADAM_ENVELOPES = DIR / "speedup_over_adam.npz"
#: 125 tasks: the reference's baselines of several optimizers per task (JSON).
MULTIPLE_BASELINES = DIR / "speedup_over_multiple_baselines.json"
