"""python -m eval: an optimizer's speedup over LR-tuned Adam on a task suite, with a report (docs/eval.md).

examples:
  python -m eval demo [--out runs/demo]      # the shipped learned optimizer and 3 tuned competitors
                                             # on the `tiny` suite, offline, ~7 minutes on 2 cores
  python -m eval --optimizer velo --weights small_v1 --suite heldout_small --out runs/small_v1
  python -m eval --optimizer velo --weights runs/tiny --suite tiny --out runs/eval   # a meta_train workdir
  python -m eval --optimizer adam_ref --grid 1e-3,3e-3,1e-2,3e-2 --suite tiny --steps 10000
      --baselines published --competitors none --out runs/check  # the reference's Adam, its envelopes
  python -m eval --suite heldout_small --out runs/e --coordinator 127.0.0.1:1234 --num-processes 2
      --process-id 0     # and the same with --process-id 1: tasks split, process 0 writes the report
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path

import jax

from eval import baselines as baselines_lib
from eval import optimizers, report, runner, suites
from tasks import data
from velojax import cli_common

DEFAULT_COMPETITORS = ("adamw_cosine", "lion", "sgd_momentum")
BASELINE_STEPS_MULTIPLE = 10  # the reference's 100k-step sweeps for 10k-step runs
BARRIER_TIMEOUT_S = 7 * 24 * 3600  # how long finished processes wait for the slowest one


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
        help="'compute' (Adam sweep, cached in OUT/baselines), 'published' (the reference's LR-tuned Adam "
        "envelopes of 75 tasks, shipped in eval/published/speedup_over_adam.npz: offline), or a reference file "
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
    cli_common.add_cluster_flags(p)
    return p


def wait_for_all_processes(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Block until every process of the jax.distributed cluster has called this with `name`.
    The coordination service's barrier: a device collective (`sync_global_devices`) failed
    on CPU when processes arrived more than 30 s apart (gloo's setup timed out)."""
    from jax._src import distributed  # the barrier has no public API

    distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)


def _specs(args, extra: tuple = ()) -> list:
    main = optimizers.parse(args.optimizer, weights=args.weights, grid=args.grid, step=args.step)
    if isinstance(main, optimizers.VeLOSpec):
        print(f"velo weights: {main.source}", flush=True)
    if args.optimizer == "velo" and args.weights and main.source.startswith("shipped:"):
        main = dataclasses.replace(main, label=str(args.weights))  # e.g. "small_v1", not "velo"
    competitors = [] if args.competitors == ["none"] else args.competitors
    specs = [main, *extra]
    return specs + [optimizers.OptaxSpec(c, tuple(args.competitor_grid)) for c in competitors if c != main.label]


def evaluate(args, notes: list[str] | None = None, extra_specs: tuple = ()) -> Path | None:
    """Run `args` (see `parser`); `extra_specs` are more optimizers under test, listed after the main one.

    This process runs its share of the tasks. The report, written by process 0 once every
    process has finished, shows every result in `args.out` of the suite's tasks whose
    fingerprint matches these settings (also those of earlier runs on other `--tasks`).
    Returns the report's path (None on the other processes)."""
    suite = suites.select(suites.get(args.suite), steps=args.steps)
    entries = suites.select(suite, tasks_=args.tasks, families=args.families)
    suites.check_resolves(entries)
    steps = {e.steps for e in entries}
    baseline_steps = args.baseline_steps or 10 * max(steps)  # per task (10x its steps) unless given
    settings = baselines_lib.BaselineSettings(
        lrs=tuple(args.baseline_lrs),
        seeds=args.baseline_seeds,
        steps=baseline_steps,
        eval_every=min(args.eval_every, baseline_steps),
    )
    reference_file = None if args.baselines == "compute" else baselines_lib.reference_file(args.baselines)
    reference = baselines_lib.load_reference(reference_file) if reference_file else {}
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
        runner.run_suite(entries, specs, args.out, store, eval_settings, progress=not args.no_progress)
    processes = jax.process_count()
    if processes > 1:  # the report waits for every process's results
        wait_for_all_processes("python -m eval: results written")
        if jax.process_index() != 0:
            return None
    results = runner.collect(suite, specs, args.out, store, eval_settings)
    present = [e for e in suite if any(e.task in res for res in results.values())]
    used = {}
    for e in present:
        with contextlib.suppress(OSError, ValueError, KeyError):  # a missing or torn baseline: drawn without
            if e.task in reference or store.path(e.task, e.steps).is_file():
                used[e.task] = reference.get(e.task) or baselines_lib.Baseline.load(store.path(e.task, e.steps))
    notes = list(notes or []) + [
        f"suite {args.suite}: {len(entries)} tasks run by this command ({processes} process(es)), "
        f"{', '.join(map(str, sorted(steps)))} steps; optimizers: {', '.join(s.label for s in specs)}",
        f"this report covers the results present in {args.out} that match these settings: "
        f"{len(present)} of the suite's {len(suite)} tasks",
        _baseline_note(present, reference, args.baselines, settings, multiple, reference_file),
        f"evaluation time this run: {time.time() - start:.0f} s" + (" (mock data)" if args.mock_data else ""),
    ]
    return report.write(results, args.out, used, title=f"{specs[0].label} on {args.suite}", notes=notes)


def _baseline_note(
    entries,
    reference: dict,
    path: str,
    settings: baselines_lib.BaselineSettings,
    multiple: int | None = None,
    file: Path | None = None,
) -> str:
    computed = sum(e.task not in reference for e in entries)
    length = f"{multiple}x each task's steps" if multiple else f"{settings.steps} steps"
    sweep = f"{len(settings.lrs)} LRs x {settings.seeds} seeds x {length}"
    if not reference:
        return f"Adam baselines: computed here ({sweep})"
    where = f"{path}: {file.name}" if file is not None and path == baselines_lib.PUBLISHED else path
    note = f"Adam baselines: the reference's published envelopes ({where}) for {len(entries) - computed} tasks"
    return note + (f"; computed here for {computed} ({sweep})" if computed else "")


def main(argv: list[str]) -> int:
    """`python -m eval ...` (the `demo` subcommand is dispatched by eval/__main__.py). Expected
    failures (a bad flag value, a missing file) raise; `velojax.cli_common.run` prints them as
    one line and exits 2."""
    args = parser().parse_args(argv)
    if args.baselines != "compute":
        baselines_lib.reference_file(args.baselines)  # a missing file fails before any work
    cli_common.join_cluster(args)
    path = evaluate(args)
    if path is None:
        print(f"process {jax.process_index()}: results written to {args.out}; process 0 writes the report")
    else:
        print(f"report: {path}")
    return 0
