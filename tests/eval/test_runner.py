"""Training curves, baselines (cached, atomic), the resumable runner, the report and the CLI."""

import json

import jax
import numpy as np
import pytest

import tasks
from eval import baselines, cli, optimizers, report, runner, suites, training
from eval.published import MULTIPLE_BASELINES
from tests.tasks.test_rollout import KeyedQuadratic
from velojax import VeLOConfig, cli_common, hand_designed_meta_params, save_weights

TASK = "ImageMLP_FashionMnist8_Relu32"
TINY_BASELINE = baselines.BaselineSettings(lrs=(1e-3, 3e-2), seeds=2, steps=40, eval_every=10)


@pytest.fixture(scope="module")
def family():
    return tasks.base.with_batch_size(tasks.get(TASK), 16)


def test_train_curves_log_steps_and_match_across_layouts(family):
    spec = optimizers.OptaxSpec("sgd", (0.1, 0.3, 1e-9))
    settings = training.RunSettings(steps=25, seeds=2, eval_every=10, eval_batches=2, final_eval_batches=3)
    both = training.train_curves(family, spec, spec.grid, settings)  # hyperparameters split over 2 devices
    one = training.train_curves(family, spec, spec.grid, settings, devices=jax.devices()[:1])
    np.testing.assert_array_equal(both.steps, [0, 10, 20, 25])
    assert both.loss.shape == (3, 2, 4)
    np.testing.assert_allclose(both.loss, one.loss, rtol=1e-5)
    # the hyperparameters of a seed share its init and evaluation batches: one loss at step 0
    np.testing.assert_allclose(both.loss[:, :, 0], np.broadcast_to(both.loss[:1, :, 0], (3, 2)), rtol=1e-6)
    # a learning rate of 1e-9 barely moves: its curve changes only by the evaluation batches'
    # sampling noise (means over 2-3 batches of 16: ~0.05), far less than lr 0.3's drop
    assert np.all(np.abs(both.loss[2, :, 1:] - both.loss[2, :, :1]) < 0.15)
    assert np.all(both.loss[1, :, 0] - both.loss[1, :, -1] > 0.4)
    # the seeds differ (own init and data)
    assert both.loss[0, 0, 0] != both.loss[0, 1, 0]
    assert np.all(both.final[:2] < both.loss[:2, :, 0].mean(axis=1))
    with pytest.raises(ValueError, match="steps"):
        training.RunSettings(steps=0)


def test_baseline_store_computes_once_and_round_trips(family, tmp_path, monkeypatch):
    store = baselines.BaselineStore(tmp_path, TINY_BASELINE)
    b = store.get(TASK, family)
    assert b.source == "computed:adam_ref" and b.curves.shape == (2, 5) and b.envelope.steps.size == 512
    assert np.all(np.diff(b.envelope.loss) <= 0) and b.envelope.max_steps == 40
    assert [p.name for p in tmp_path.iterdir()] == [store.path(TASK).name]  # no temporary left
    monkeypatch.setattr(baselines, "compute", lambda *a, **k: pytest.fail("recomputed a cached baseline"))
    again = store.get(TASK, family)
    np.testing.assert_array_equal(again.envelope.loss, b.envelope.loss)
    np.testing.assert_array_equal(again.curves, b.curves)
    other = baselines.BaselineStore(tmp_path, baselines.BaselineSettings(lrs=(1e-3,), seeds=1, steps=40))
    assert other.path(TASK) != store.path(TASK)  # other settings, other file
    store.path(TASK).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable baseline"):
        store.get(TASK, family)


def test_runner_resumes_skips_missing_data_and_reports(family, tmp_path, monkeypatch):
    theta_dir = tmp_path / "theta"
    save_weights(theta_dir, hand_designed_meta_params(VeLOConfig.small(8, 2)))
    velo = optimizers.velo(theta_dir)
    assert velo == optimizers.velo(theta_dir) and hash(velo) == hash(optimizers.velo(theta_dir))
    specs = [velo, optimizers.OptaxSpec("adam", (1e-2,))]
    entries = (suites.SuiteEntry(TASK, steps=20), suites.SuiteEntry("Conv_Cifar10_32x64x64", steps=20))
    store = baselines.BaselineStore(tmp_path / "baselines", TINY_BASELINE)
    settings = runner.EvalSettings(eval_every=10, eval_batches=2, final_eval_batches=2, batch_size=16)
    out = tmp_path / "out"
    results = runner.run_suite(entries, specs, out, store, settings, progress=False)
    for label in ("velo", "adam"):
        ok = results[label][TASK]
        assert ok["status"] == "ok" and np.isfinite(ok["final_loss"])
        env = store.get(TASK, family).envelope
        np.testing.assert_allclose(ok["speedup"], env.steps_to_reach(ok["final_loss"]) / 20)
        assert ok["curve"]["steps"] == [0, 10, 20]
        skipped = results[label]["Conv_Cifar10_32x64x64"]  # CIFAR-10 is not prepared offline
        assert skipped["status"] == "skipped" and skipped["reason"].startswith("dataset not available")
    assert results["adam"][TASK]["final_loss"] < results["adam"][TASK]["curve"]["loss"][0]

    monkeypatch.setattr(runner, "train_curves", lambda *a, **k: pytest.fail("reran a finished task"))
    again = runner.run_suite(entries, specs, out, store, settings, progress=False)
    assert again == results == runner.load_results(out)

    md = report.write(results, tmp_path / "report", {TASK: store.get(TASK, family)}, samples=200)
    text = md.read_text()
    assert "Conv_Cifar10_32x64x64: skipped: dataset not available" in text
    assert (tmp_path / "report" / "speedup_vs_fraction.png").stat().st_size > 1000
    assert (tmp_path / "report" / "curves" / f"{TASK}.png").is_file()
    assert "<table>" in (tmp_path / "report" / "report.html").read_text()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["families"]["adam"]["all"]["n"] == 1


def test_cli_on_reference_baselines_and_mock_data(tmp_path, capsys):
    """The velodrome83 path end to end on a few tasks: tfds mock data, the reference's
    published envelopes (shipped in eval/published) as baselines."""
    two = "ImageMLP_Cifar10_8_Relu32,Conv_Cifar10_32x64x64"
    argv = [
        "--optimizer=adam",
        "--grid=1e-3",
        "--suite=velodrome83",
        f"--tasks={two}",
        f"--out={tmp_path}",
        "--steps=5",
        "--eval-every=5",
        "--batch-size=4",
        "--competitors=none",
        f"--baselines={MULTIPLE_BASELINES}",
        "--mock-data",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    assert "report:" in capsys.readouterr().out
    res = runner.load_results(tmp_path)["adam"]
    assert {r["status"] for r in res.values()} == {"ok"}
    assert {r["baseline_source"] for r in res.values()} == {"reference:speedup_over_multiple_baselines.json"}
    assert not (tmp_path / "baselines").exists()  # nothing computed


def test_cli_errors_are_clear(tmp_path, capsys):
    """`cli.main` raises; `python -m eval` (cli_common.run) prints one line and exits 2."""
    for argv, message in (
        (["--suite=nope"], "unknown suite 'nope'"),
        (["--optimizer=adamm"], "unknown optimizer"),
        (["--optimizer=velo", f"--weights={tmp_path}/none"], "no VeLO weights"),
    ):
        assert cli_common.run(cli.main, [*argv, f"--out={tmp_path}"], prog="python -m eval") == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m eval: error: ") and message in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_velodrome83_end_to_end_on_mock_data(tmp_path):
    """`python -m eval --suite velodrome83 --steps 20` on tfds mock data (batch 8) against
    the reference's published envelopes: every task finishes (about 10 min on 2 cores)."""
    save_weights(tmp_path / "theta", hand_designed_meta_params(VeLOConfig.small(8, 2)))
    argv = ["--optimizer=velo", f"--weights={tmp_path / 'theta'}", "--suite=velodrome83", "--steps=20",
            "--batch-size=8", "--competitors=none", f"--baselines={MULTIPLE_BASELINES}", "--mock-data", "--no-progress",
            f"--out={tmp_path / 'out'}"]  # fmt: skip
    assert cli.main(argv) == 0
    res = runner.load_results(tmp_path / "out")["velo"]
    assert len(res) == 83 and {r["status"] for r in res.values()} == {"ok"}
    assert (tmp_path / "out" / "report.html").is_file()


def test_cli_runs_the_tiny_suite(tmp_path):
    """The whole `tiny` suite through the CLI with few steps: every task finishes against a
    computed (cached) Adam envelope, and the report lists them all."""
    out = tmp_path / "out"
    argv = ["--optimizer=adam", "--grid=1e-2", "--suite=tiny", "--steps=10", "--eval-every=10", "--batch-size=8",
            "--competitors=none", "--baseline-lrs=3e-3,3e-2", "--baseline-seeds=1", "--baseline-steps=20",
            f"--out={out}", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    res = runner.load_results(out)["adam"]
    assert set(res) == {e.task for e in suites.get("tiny")}
    assert {r["status"] for r in res.values()} == {"ok"}
    assert len(list((out / "baselines").glob("*.npz"))) == 4
    for r in res.values():
        assert 0.0 <= r["speedup"] <= 2.0 and np.isfinite(r["final_loss"])  # the envelope spans 20 steps
    text = (out / "report.md").read_text()
    assert all(t in text for t in res)


def test_baseline_sweeps_run_ten_times_each_tasks_own_steps(family, tmp_path):
    store = baselines.BaselineStore(tmp_path, TINY_BASELINE, steps_multiple=10)
    assert store.settings_for(3).steps == 30 and store.settings_for(3).eval_every == 10
    assert store.settings_for(None) == TINY_BASELINE
    assert store.path(TASK, 3) != store.path(TASK, 4)
    b = store.get(TASK, family, task_steps=3)
    assert b.envelope.max_steps == 30 and store.path(TASK, 3).is_file()
    with pytest.raises(ValueError, match="steps_multiple"):
        baselines.BaselineStore(tmp_path, TINY_BASELINE, steps_multiple=0)


def test_cli_sweeps_each_task_for_ten_times_its_steps(tmp_path):
    out = tmp_path / "out"
    argv = ["--optimizer=velo", "--weights=small_v1", "--suite=heldout_small",
            "--tasks=ImageMLP_FashionMnist8_Relu24_bs64", "--steps=4",
            "--eval-every=2", "--batch-size=8", "--competitors=none", "--baseline-lrs=3e-3,3e-2",
            "--baseline-seeds=1", f"--out={out}", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    res = runner.load_results(out)["small_v1"]  # shipped weights are labelled by their name
    assert {r["status"] for r in res.values()} == {"ok"} and len(res) == 1
    maxima = {baselines.Baseline.load(p).envelope.max_steps for p in (out / "baselines").glob("*.npz")}
    assert maxima == {40}
    assert "10x each task's steps" in (out / "report.md").read_text()


def test_the_scored_final_loss_is_averaged_over_100_batches_unless_told():
    assert cli.parser().parse_args(["--out", "x"]).final_eval_batches == runner.EvalSettings().final_eval_batches == 100
    assert cli.parser().parse_args(["--out", "x", "--final-eval-batches", "7"]).final_eval_batches == 7
    spec, entry = optimizers.OptaxSpec("adam", (1e-2,)), suites.SuiteEntry(TASK, steps=20)
    fingerprint = lambda s: runner._fingerprint(spec, entry, s, "baseline")  # noqa: E731
    # Results cached under the reference's 10 batches are not reused for 100.
    assert fingerprint(runner.EvalSettings()) != fingerprint(runner.EvalSettings(final_eval_batches=10))


def test_a_code_change_invalidates_cached_results_and_baselines(tmp_path, monkeypatch):
    """Results and computed baselines carry the code's digest: files written by other code
    are not reused."""
    from eval import code_version as cv

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__main__.py").write_text("print()\n")
    before = cv.digest_of([tmp_path / "pkg"], tmp_path)
    (tmp_path / "pkg" / "__main__.py").write_text("print('cli only')\n")  # a command line: no effect
    assert cv.digest_of([tmp_path / "pkg"], tmp_path) == before
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert cv.digest_of([tmp_path / "pkg"], tmp_path) != before
    assert len(cv.code_version()) == 16 and cv.code_version() == cv.code_version()

    spec, entry = optimizers.OptaxSpec("adam", (1e-2,)), suites.SuiteEntry(TASK, steps=20)
    result = runner._fingerprint(spec, entry, runner.EvalSettings(), "baseline")
    baseline = baselines.BaselineSettings().digest()
    monkeypatch.setattr(runner, "code_version", lambda: "other code")
    monkeypatch.setattr(baselines, "code_version", lambda: "other code")
    assert runner._fingerprint(spec, entry, runner.EvalSettings(), "baseline") != result
    assert baselines.BaselineSettings().digest() != baseline


def test_train_curves_do_not_depend_on_the_chunking():
    """23 steps in chunks of 1, 2 or 10 logging blocks (then a tail of 3 steps; the final
    evaluation in 2 groups): the same curves. Step t's key is ("train_loss", t) and batch j of logged
    evaluation i's is ("eval_loss", i, j), from each seed's key."""
    family = KeyedQuadratic(dim=3, batch_size=2, noise=0.5)  # its loss reads its key
    spec = optimizers.OptaxSpec("sgd", (0.05, 0.2))
    runs = {
        chunk: training.train_curves(
            family,
            spec,
            spec.grid,
            training.RunSettings(steps=23, seeds=2, eval_every=5, eval_batches=2, final_eval_batches=4, chunk=chunk),
            devices=jax.devices()[:1],
        ).loss
        for chunk in (5, 10, 50)
    }
    assert runs[5].shape == (2, 2, 6) and np.all(np.isfinite(runs[5]))
    np.testing.assert_allclose(runs[10], runs[5], rtol=1e-6)
    np.testing.assert_allclose(runs[50], runs[5], rtol=1e-6)
    assert runs[5][0, 0, -1] < runs[5][0, 0, 0]  # it trains
