"""Run an optimizer (and tuned competitors) over a suite against LR-tuned Adam baselines.

Per task it writes `<out>/results/<label>/<task>.json` as soon as the task is done:

    {"task", "family", "steps", "status": "ok" | "skipped", "reason",
     "final_loss", "speedup", "adam_steps", "best_lr", "curve": {"steps", "loss"},
     "key": settings fingerprint}

A rerun with the same settings skips tasks whose file exists. A task whose dataset is not
available is recorded as skipped, never a crash. Tasks are split across processes
(`jax.process_index()`); each task's runs across the local devices (`eval.training`).
`collect` gathers every process's results that match the settings (what the report shows).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

import tasks
from eval.baselines import Baseline, BaselineStore
from eval.code_version import code_version
from eval.suites import SuiteEntry
from eval.training import RunSettings, train_curves
from tasks.base import with_batch_size
from tasks.data import DatasetUnavailable
from velojax.files import write_atomic


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How each optimizer under test is run on a task: loss logged every 10 steps over 5
    batches as the reference does; its final loss, the one that is scored, over 100 batches
    (the reference: 10). Ten batches leave a sampling error of about ±0.02 on a classifier's
    loss, which on a flat envelope is a factor of 2 or more in steps (docs/eval.md)."""

    seeds: int = 1
    eval_every: int = 10
    eval_batches: int = 5
    final_eval_batches: int = 100
    batch_size: int | None = None  # override every task's batch size (smoke tests)
    seed: int = 0

    def run_settings(self, steps: int) -> RunSettings:
        every = min(self.eval_every, steps)
        return RunSettings(steps, self.seeds, every, self.eval_batches, self.final_eval_batches)


def result_path(out: Path, label: str, task: str) -> Path:
    return Path(out) / "results" / label / f"{task}.json"


def _fingerprint(spec, entry: SuiteEntry, settings: EvalSettings, baseline_key: str) -> str:
    what = [repr(spec), entry.task, entry.steps, dataclasses.asdict(settings), baseline_key, code_version()]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:16]


def result_key(spec, entry: SuiteEntry, settings: EvalSettings, store: BaselineStore) -> str:
    """The fingerprint a result of `spec` on `entry` under these settings carries."""
    return _fingerprint(spec, entry, settings, store.settings_for(entry.steps).digest())


def _matching(path: Path, key: str) -> dict | None:
    """The result in `path` if it exists, is complete JSON and carries `key`; else None."""
    try:
        done = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # missing, or not JSON (a torn or foreign file)
        return None
    return done if isinstance(done, dict) and done.get("key") == key else None


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1))


def family_for(entry: SuiteEntry, settings: EvalSettings):
    family = tasks.get(entry.task)
    return with_batch_size(family, settings.batch_size) if settings.batch_size else family


def check_data(family) -> str | None:
    """None if a batch can be drawn, else why not (a missing dataset)."""
    try:
        family.get_batch(np.random.default_rng(0), "train")
    except DatasetUnavailable as err:
        return f"dataset not available: {str(err).splitlines()[0]}"
    return None


def evaluate_task(spec, entry: SuiteEntry, baseline: Baseline, settings: EvalSettings, family=None) -> dict:
    """Train with `spec` over its grid; the best grid point's final loss gives the speedup."""
    family = family or family_for(entry, settings)
    curves = train_curves(family, spec, spec.grid, settings.run_settings(entry.steps), seed=settings.seed)
    final = curves.final
    best = int(np.argmin(np.where(np.isfinite(final), final, np.inf)))
    loss = float(final[best])
    adam_steps = float(baseline.envelope.steps_to_reach(loss))
    return {
        "status": "ok",
        "final_loss": loss if np.isfinite(loss) else None,
        "adam_steps": adam_steps,
        "speedup": adam_steps / entry.steps,
        "speedup_cap": baseline.envelope.max_steps / entry.steps,
        "best_lr": float(spec.grid[best]) if len(spec.grid) > 1 else None,
        "curve": {"steps": curves.steps.tolist(), "loss": _nan_to_none(curves.mean_over_seeds()[best])},
    }


def _nan_to_none(x) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(x, np.float64)]


def run_suite(
    entries: Iterable[SuiteEntry],
    specs: list,
    out: str | Path,
    store: BaselineStore,
    settings: EvalSettings = EvalSettings(),
    progress: bool = True,
) -> dict[str, dict[str, dict]]:
    """Evaluate every spec on every entry (resumable; see the module doc).
    Returns {label: {task: result}} for this process's tasks."""
    out = Path(out)
    entries = list(entries)
    mine = entries[jax.process_index() :: jax.process_count()]
    results: dict[str, dict[str, dict]] = {s.label: {} for s in specs}
    bar = tqdm(mine, desc="eval", unit="task", disable=not progress, dynamic_ncols=True)
    for entry in bar:
        bar.set_postfix_str(entry.task)
        family = family_for(entry, settings)
        todo = []
        for spec in specs:
            path = result_path(out, spec.label, entry.task)
            key = result_key(spec, entry, settings, store)
            done = _matching(path, key)
            if done is not None:
                results[spec.label][entry.task] = done
                continue
            todo.append((spec, path, key))
        if not todo:
            continue
        reason = check_data(family)
        baseline = None
        if reason is None:
            try:
                baseline = store.get(entry.task, family, task_steps=entry.steps)
            except DatasetUnavailable as err:
                reason = f"dataset not available: {str(err).splitlines()[0]}"
        for spec, path, key in todo:
            head = {"task": entry.task, "family": entry.family, "steps": entry.steps, "optimizer": spec.label}
            if reason is not None:
                result = head | {"status": "skipped", "reason": reason, "key": key}
            else:
                result = head | evaluate_task(spec, entry, baseline, settings, family) | {"key": key}
                result["baseline_source"] = baseline.source
            _write_json(path, result)
            results[spec.label][entry.task] = result
    return results


def collect(
    entries: Iterable[SuiteEntry], specs: list, out: str | Path, store: BaselineStore, settings: EvalSettings
) -> dict[str, dict[str, dict]]:
    """{label: {task: result}} of every result file in `out` (any process's) for these
    entries and specs whose fingerprint matches these settings, in the entries' order;
    files of other settings (e.g. other steps) are left out."""
    found: dict[str, dict[str, dict]] = {s.label: {} for s in specs}
    for entry in entries:
        for spec in specs:
            done = _matching(result_path(out, spec.label, entry.task), result_key(spec, entry, settings, store))
            if done is not None:
                found[spec.label][entry.task] = done
    return found


def load_results(out: str | Path) -> dict[str, dict[str, dict]]:
    """{label: {task: result}} of every result file under `out` (all processes')."""
    root = Path(out) / "results"
    found: dict[str, dict[str, dict]] = {}
    for path in sorted(root.glob("*/*.json")):
        found.setdefault(path.parent.name, {})[path.stem] = json.loads(path.read_text())
    return found


def speedups(results: dict[str, dict]) -> dict[str, float]:
    """{task: speedup} of the finished (status ok) tasks."""
    return {t: r["speedup"] for t, r in results.items() if r.get("status") == "ok"}
