"""LR-tuned Adam baselines: computed once per task and cached, or imported from the
reference's published files (spec §6.1b/c, §6.3).

On disk (`BaselineStore`), one file per task and settings, `<dir>/<task>__<settings hash>.npz`:

    steps      float64 [512]       the envelope's steps (0 ... settings.steps)
    envelope   float64 [512]       E(s): smoothed, per-step min over LRs, resampled, non-increasing
    curve_steps int64  [E]         logged steps of the sweep
    curves     float64 [n_lrs, E]  seed-averaged loss per learning rate (NaN where diverged)
    lrs        float64 [n_lrs]
    meta       str                 JSON: task, source, settings

The reference's files load with `load_reference(path)`: `speedup_over_adam.npz` (75 tasks,
float64[2, 512] each: steps, envelope) or `speedup_over_multiple_baselines.json` (125 tasks,
[steps, envelope] lists; the envelope over Adam, Adam with two LR decays, and RAdam).
`load_reference("published")` loads the copy of `speedup_over_adam.npz` shipped in
`eval/published/` (offline).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from eval import envelope as envelope_lib
from eval import optimizers
from eval.code_version import code_version
from eval.published import ADAM_ENVELOPES
from eval.training import RunSettings, train_curves
from tasks.base import TaskFamily
from velojax.files import write_atomic


@dataclasses.dataclass(frozen=True)
class BaselineSettings:
    """The Adam sweep. Defaults are the reference's `AdamLR_100000_R5`."""

    lrs: tuple[float, ...] = optimizers.REFERENCE_LRS
    seeds: int = 5
    steps: int = 100_000
    eval_every: int = 10
    eval_batches: int = 5
    final_eval_batches: int = 10
    num_points: int = envelope_lib.NUM_POINTS
    ema_fraction: float = envelope_lib.EMA_FRACTION  # EMA 0.95 per this fraction of the sweep
    optimizer: str = "adam_ref"
    seed: int = 0

    def run_settings(self) -> RunSettings:
        return RunSettings(self.steps, self.seeds, self.eval_every, self.eval_batches, self.final_eval_batches)

    def digest(self) -> str:
        """The cache key of a sweep: these settings and the code that runs it (`code_version`)."""
        what = dataclasses.asdict(self) | {"code": code_version()}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A task's Adam envelope, with the sweep's curves when it was computed here."""

    task: str
    envelope: envelope_lib.Envelope
    source: str
    curve_steps: np.ndarray | None = None
    curves: np.ndarray | None = None
    lrs: np.ndarray | None = None

    @property
    def best_lr_index(self) -> int | None:
        """The learning rate with the lowest final seed-averaged loss (None if unknown)."""
        if self.curves is None:
            return None
        final = np.where(np.isfinite(self.curves[:, -1]), self.curves[:, -1], np.inf)
        return int(np.argmin(final))

    def save(self, path: Path, settings: BaselineSettings | None = None) -> None:
        """Atomically (`velojax.files.write_atomic`)."""
        meta = {"task": self.task, "source": self.source, "settings": settings and dataclasses.asdict(settings)}
        arrays = {"steps": self.envelope.steps, "envelope": self.envelope.loss, "meta": np.array(json.dumps(meta))}
        if self.curves is not None:
            arrays |= {"curve_steps": self.curve_steps, "curves": self.curves, "lrs": self.lrs}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Baseline:
        try:
            with np.load(path) as z:
                meta = json.loads(str(z["meta"]))
                curves = {k: z[k] for k in ("curve_steps", "curves", "lrs") if k in z.files}
                env = envelope_lib.Envelope(z["steps"], z["envelope"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable baseline file ({type(err).__name__}: {err})") from None
        return cls(meta["task"], env, meta["source"], **curves)


def compute(task: str, family: TaskFamily, settings: BaselineSettings, devices=None) -> Baseline:
    """Run the sweep (LRs × seeds, vmapped) and build the envelope."""
    spec = optimizers.OptaxSpec(settings.optimizer, tuple(settings.lrs))
    curves = train_curves(family, spec, settings.lrs, settings.run_settings(), seed=settings.seed, devices=devices)
    mean = curves.mean_over_seeds()
    env = envelope_lib.adam_envelope(curves.steps, mean, settings.num_points, settings.ema_fraction * settings.steps)
    return Baseline(task, env, f"computed:{settings.optimizer}", curves.steps, mean, np.asarray(settings.lrs))


#: The word `load_reference` (and `python -m eval --baselines`) reads as the shipped Adam envelopes.
PUBLISHED = "published"


def reference_file(name: str | Path) -> Path:
    """The file `name` stands for: `eval.published.ADAM_ENVELOPES` for "published", else the
    path itself, which must be a file."""
    path = ADAM_ENVELOPES if str(name) == PUBLISHED else Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no baselines file at {path}")
    return path


def load_reference(path: str | Path) -> dict[str, Baseline]:
    """{task: Baseline} from the reference's `speedup_over_adam.npz` or
    `speedup_over_multiple_baselines.json` (see the module doc), or "published"."""
    path = reference_file(path)
    source = f"reference:{path.name}"
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {t: Baseline(t, envelope_lib.Envelope(*np.asarray(v, np.float64)), source) for t, v in data.items()}
    out = {}
    with np.load(path) as z:
        for t in z.files:
            a = np.asarray(z[t], np.float64)
            if a.shape[0] != 2:
                raise ValueError(f"{path}: entry {t!r} has shape {a.shape}, expected [2, n]")
            out[t] = Baseline(t, envelope_lib.Envelope(a[0], a[1]), source)
    return out


class BaselineStore:
    """Baselines by task: from `reference` files first (if given), else computed with
    `settings` and cached in `directory` (a rerun reads the cache).

    With `steps_multiple`, each task's sweep runs `steps_multiple` x that task's own
    steps (the reference's 100k for 10k-step runs is 10x) instead of `settings.steps`."""

    def __init__(
        self,
        directory: str | Path,
        settings: BaselineSettings,
        reference: dict[str, Baseline] | None = None,
        steps_multiple: int | None = None,
    ):
        if steps_multiple is not None and steps_multiple < 1:
            raise ValueError(f"steps_multiple must be >= 1, got {steps_multiple}")
        self.directory = Path(directory)
        self.settings = settings
        self.reference = reference or {}
        self.steps_multiple = steps_multiple

    def settings_for(self, task_steps: int | None = None) -> BaselineSettings:
        """The sweep settings of a task run for `task_steps` steps."""
        if self.steps_multiple is None or task_steps is None:
            return self.settings
        steps = self.steps_multiple * int(task_steps)
        return dataclasses.replace(self.settings, steps=steps, eval_every=min(self.settings.eval_every, steps))

    def path(self, task: str, task_steps: int | None = None) -> Path:
        return self.directory / f"{task}__{self.settings_for(task_steps).digest()}.npz"

    def get(self, task: str, family: TaskFamily, devices=None, task_steps: int | None = None) -> Baseline:
        if task in self.reference:
            return self.reference[task]
        path = self.path(task, task_steps)
        if path.is_file():
            return Baseline.load(path)
        settings = self.settings_for(task_steps)
        baseline = compute(task, family, settings, devices)
        baseline.save(path, settings)
        return baseline
