"""python -m eval: an optimizer's speedup over LR-tuned Adam on a task suite, with a report (docs/eval.md).

examples:
  python -m eval demo [--out runs/demo]      # the shipped learned optimizer and 3 tuned competitors
                                             # on the `tiny` suite, offline, ~7 minutes on 2 cores
  python -m eval --optimizer velo --weights small_v1 --suite heldout_small --out runs/small_v1
  python -m eval --optimizer velo --weights runs/tiny --suite tiny --out runs/eval   # a meta_train workdir
  python -m eval --optimizer adam_ref --grid 1e-3,3e-3,1e-2,3e-2 --suite tiny --steps 10000
      --baselines speedup_over_adam.npz --competitors none --out runs/check  # the reference's Adam
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path

from eval import baselines as baselines_lib
from eval import optimizers, report, runner, suites
from tasks import data
from velojax import cli_common

DEFAULT_COMPETITORS = ("adamw_cosine", "lion", "sgd_momentum")
BASELINE_STEPS_MULTIPLE = 10  # the reference's 100k-step sweeps for 10k-step runs


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval", description=__doc__, formatter_class=cli_common.HelpFormatter, epilog=cli_common.EPILOG
    )
    p.add_argument(
        "--optimizer", default="velo", help="velo, or an optax alias / adamw_cosine / sgd_momentum / adam_ref"
    )
    p.add_argument(
        "--weights",
        help="velo's weights: a shipped name (e.g. small_v1), a file, its directory, or a meta_train workdir "
        "(the best θ by validation, else the final, else the newest checkpoint's; default: the official "
        "pretrained VeLO)",
    )
    p.add_argument("--step", type=int, help="with a meta_train workdir as --weights: the θ of this checkpoint")
    p.add_argument("--grid", type=_floats, help="learning rates to tune a non-velo --optimizer over")
    p.add_argument("--suite", default="tiny", help=f"one of {', '.join(suites.names())}, or SUITE/FAMILY")
    p.add_argument("--out", required=True, type=Path, help="output directory (results, baselines, report)")
    p.add_argument("--steps", type=int, help="train every task this many steps (default: the suite's, 10k)")
    p.add_argument("--tasks", type=_names, help="comma-separated task names (a subset of the suite)")
    p.add_argument("--families", type=_names, help="comma-separated families (a subset of the suite)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per optimizer run (vmapped)")
    p.add_argument("--eval-every", type=int, default=10, help="log the loss every N steps (reference: 10)")
    p.add_argument(
        "--final-eval-batches",
        type=int,
        default=runner.EvalSettings.final_eval_batches,
        help="batches the scored final loss is averaged over (the reference: 10)",
    )
    p.add_argument("--batch-size", type=int, help="override every task's batch size (smoke tests)")
    p.add_argument(
        "--competitors",
        type=_names,
        default=list(DEFAULT_COMPETITORS),
        help="tuned hand-designed optimizers to run too ('none' for none)",
    )
    p.add_argument(
        "--competitor-grid", type=_floats, default=optimizers.COMPETITOR_LRS, help="learning rates of the competitors"
    )
    p.add_argument(
        "--baselines",
        default="compute",
        help="'compute' (Adam sweep, cached in OUT/baselines) or a reference file "
        "(speedup_over_adam.npz / speedup_over_multiple_baselines.json); tasks it lacks are computed",
    )
    p.add_argument(
        "--baseline-lrs", type=_floats, default=optimizers.REFERENCE_LRS, help="the Adam sweep's learning rates"
    )
    p.add_argument("--baseline-seeds", type=int, default=5, help="seeds per learning rate of the Adam sweep")
    p.add_argument(
        "--baseline-steps", type=int, help="Adam sweep length for every task (default: 10x each task's own steps)"
    )
    p.add_argument("--mock-data", action="store_true", help="tfds datasets replaced by random mock data (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _specs(args, extra: tuple = ()) -> list:
    main = optimizers.parse(args.optimizer, weights=args.weights, grid=args.grid, step=args.step)
    if isinstance(main, optimizers.VeLOSpec):
        print(f"velo weights: {main.source}", flush=True)
    if args.optimizer == "velo" and args.weights and main.source.startswith("shipped:"):
        main = dataclasses.replace(main, label=str(args.weights))  # e.g. "small_v1", not "velo"
    competitors = [] if args.competitors == ["none"] else args.competitors
    specs = [main, *extra]
    return specs + [optimizers.OptaxSpec(c, tuple(args.competitor_grid)) for c in competitors if c != main.label]


def evaluate(args, notes: list[str] | None = None, extra_specs: tuple = ()) -> Path:
    """Run `args` (see `parser`); `extra_specs` are more optimizers under test, listed after the main one."""
    entries = suites.select(suites.get(args.suite), tasks_=args.tasks, families=args.families, steps=args.steps)
    suites.check_resolves(entries)
    steps = {e.steps for e in entries}
    baseline_steps = args.baseline_steps or 10 * max(steps)  # per task (10x its steps) unless given
    settings = baselines_lib.BaselineSettings(
        lrs=tuple(args.baseline_lrs),
        seeds=args.baseline_seeds,
        steps=baseline_steps,
        eval_every=min(args.eval_every, baseline_steps),
    )
    reference = {} if args.baselines == "compute" else baselines_lib.load_reference(args.baselines)
    multiple = None if args.baseline_steps else BASELINE_STEPS_MULTIPLE
    store = baselines_lib.BaselineStore(args.out / "baselines", settings, reference, steps_multiple=multiple)
    eval_settings = runner.EvalSettings(
        seeds=args.seeds,
        eval_every=args.eval_every,
        final_eval_batches=args.final_eval_batches,
        batch_size=args.batch_size,
    )
    specs = _specs(args, tuple(extra_specs))
    start = time.time()
    mock = data.mock_real_datasets(num_examples=200) if args.mock_data else contextlib.nullcontext()
    with mock:
        results = runner.run_suite(entries, specs, args.out, store, eval_settings, progress=not args.no_progress)
        used = {}
        for e in entries:
            with contextlib.suppress(Exception):  # the report draws what exists
                if e.task in reference or store.path(e.task, e.steps).is_file():
                    used[e.task] = reference.get(e.task) or baselines_lib.Baseline.load(store.path(e.task, e.steps))
    notes = list(notes or []) + [
        f"suite {args.suite}: {len(entries)} tasks, {', '.join(map(str, sorted(steps)))} steps; "
        f"optimizers: {', '.join(s.label for s in specs)}",
        _baseline_note(entries, reference, args.baselines, settings, multiple),
        f"evaluation time this run: {time.time() - start:.0f} s" + (" (mock data)" if args.mock_data else ""),
    ]
    path = report.write(results, args.out, used, title=f"{specs[0].label} on {args.suite}", notes=notes)
    return path


def _baseline_note(
    entries, reference: dict, path: str, settings: baselines_lib.BaselineSettings, multiple: int | None = None
) -> str:
    computed = sum(e.task not in reference for e in entries)
    length = f"{multiple}x each task's steps" if multiple else f"{settings.steps} steps"
    sweep = f"{len(settings.lrs)} LRs x {settings.seeds} seeds x {length}"
    if not reference:
        return f"Adam baselines: computed here ({sweep})"
    note = f"Adam baselines: the reference's published envelopes ({path}) for {len(entries) - computed} tasks"
    return note + (f"; computed here for {computed} ({sweep})" if computed else "")


def main(argv: list[str]) -> int:
    """`python -m eval ...` (the `demo` subcommand is dispatched by eval/__main__.py)."""
    args = parser().parse_args(argv)
    try:
        path = evaluate(args)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"python -m eval: {err}") from None
    print(f"report: {path}")
    return 0
