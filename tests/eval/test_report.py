"""The report: IQM as scipy's trim_mean, atomic files, and every process's results that
match the run's settings (two "processes" simulated in one)."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.stats

from eval import baselines, cli, report, runner, stats, suites, training
from eval.published import ADAM_ENVELOPES
from velojax import files

MLP = "ImageMLP_FashionMnist8_Relu32"  # both in `tiny` and in the published Adam envelopes
AE = "ImageMLPAE_FashionMnist_128x32x128_bs128"
PUBLISHED = baselines.load_reference(ADAM_ENVELOPES)
FINAL = {MLP: 0.40, AE: 0.0095}  # the fake runs' final losses, inside each published envelope


def old_fractional_iqm(x):
    """The IQM reports before 2026-12-07 gave: order statistics weighted by their overlap with [n/4, 3n/4)."""
    x = np.sort(np.asarray(x, np.float64))
    n = x.size
    i = np.arange(n)
    w = np.clip(np.minimum(i + 1, 3 * n / 4) - np.maximum(i, n / 4), 0, 1) / (n / 2)
    return float(np.sum(x * w))


@pytest.mark.parametrize("n", [5, 6, 7, 9])
def test_iqm_is_scipy_trim_mean(n):
    x = np.random.default_rng(n).lognormal(size=n)
    assert stats.iqm(x) == scipy.stats.trim_mean(x, 0.25)
    draws = np.random.default_rng(0).lognormal(size=(4, n))
    np.testing.assert_array_equal(stats.iqm(draws, axis=-1), [scipy.stats.trim_mean(d, 0.25) for d in draws])
    assert stats.summarize(x, samples=200)["iqm"] == scipy.stats.trim_mean(x, 0.25)


def test_iqm_differs_from_the_old_fractional_weights_when_n_is_not_a_multiple_of_4():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    assert stats.iqm(x) == 7.5  # int(1.5) = 1 dropped from each end: (2 + 4 + 8 + 16) / 4
    assert old_fractional_iqm(x) == 7.0  # (0.5*2 + 4 + 8 + 0.5*16) / 3
    assert stats.iqm(np.arange(8.0)) == old_fractional_iqm(np.arange(8.0)) == 3.5  # n = 8: the same
    with pytest.raises(ValueError, match="empty"):
        stats.iqm(np.array([]))


def test_iqm_bootstrap_interval_brackets_it():
    x = np.array([0.5, 0.8, 1.0, 1.2, 2.0, 3.0, 9.0])
    s = stats.summarize(x, samples=2000)
    lo, hi = s["iqm_ci"]
    assert lo <= s["iqm"] == scipy.stats.trim_mean(x, 0.25) <= hi and lo >= 0.5 and hi <= 9.0
    assert stats.summarize(np.full(7, 3.0), samples=200)["iqm_ci"] == (3.0, 3.0)


def _result(task: str, label: str, speedup: float) -> dict:
    curve = {"steps": [0, 50, 100], "loss": [2.3, 1.0, FINAL[task]]}
    return {"task": task, "family": suites.family_of(task), "steps": 100, "optimizer": label, "status": "ok",
            "final_loss": FINAL[task], "speedup": speedup, "speedup_cap": 1000.0, "curve": curve}  # fmt: skip


RESULTS = {
    "velo": {MLP: _result(MLP, "velo", 2.0), AE: _result(AE, "velo", 0.5)},
    "adam": {MLP: _result(MLP, "adam", 1.0), AE: _result(AE, "adam", 1.5)},
}
REPORT_FILES = ("report.md", "report.html", "summary.json", "speedup_vs_fraction.png", f"curves/{MLP}.png")


def _write(out: Path) -> Path:
    return report.write(RESULTS, out, {MLP: PUBLISHED[MLP]}, title="t", samples=100, notes=["a note"])


def test_report_files_are_complete_and_no_temporary_is_left(tmp_path):
    md = _write(tmp_path)
    assert md == tmp_path / "report.md"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        REPORT_FILES + (f"curves/{AE}.png",)
    )
    for name in REPORT_FILES:
        if name.endswith(".png"):
            data = (tmp_path / name).read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iqm_definition"] == stats.IQM_DEFINITION
    assert summary["families"]["velo"]["all"]["iqm"] == 1.25 and summary["notes"] == ["a note"]
    assert f"{stats.IQM_DEFINITION}." in md.read_text()
    assert "scipy.stats.trim_mean" in (tmp_path / "report.html").read_text()
    assert "2026-12-07" in stats.IQM_DEFINITION


def test_a_failed_write_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    replace = os.replace
    original = None
    for name in REPORT_FILES:  # this file's write fails once its data is in the temporary
        monkeypatch.setattr(files.os, "replace", replace)
        _write(tmp_path)
        original = {n: (tmp_path / n).read_bytes() for n in REPORT_FILES}
        target = tmp_path / name

        def fail_for_target(src, dst, target=target):
            if Path(dst) == target:
                raise OSError("disk full")
            replace(src, dst)

        monkeypatch.setattr(files.os, "replace", fail_for_target)
        with pytest.raises(OSError, match="disk full"):
            report.write({"adam": RESULTS["adam"]}, tmp_path, {}, title="other", samples=100)
        assert target.read_bytes() == original[name]
        assert not [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(files.os, "replace", replace)
    report.write({"adam": RESULTS["adam"]}, tmp_path, {}, title="other", samples=100)
    assert all((tmp_path / n).read_bytes() != original[n] for n in REPORT_FILES)  # each write had changed its file


def _fake_train_curves(family, spec, hparams, settings, seed=0, devices=None):
    """Curves ending at FINAL[task] for every learning rate and seed (no training)."""
    steps = settings.eval_steps
    loss = np.linspace(2.3, FINAL[family.name], steps.size)
    return training.Curves(steps, np.broadcast_to(loss, (len(hparams), settings.seeds, steps.size)), hparams)


def _argv(out: Path, tasks: str, steps: int = 100) -> list[str]:
    return ["--optimizer=adam", "--grid=1e-2", "--suite=tiny", f"--tasks={tasks}", f"--steps={steps}",
            "--competitors=none", "--baselines=published", "--no-progress", f"--out={out}"]  # fmt: skip


def _speedup(task: str, steps: int = 100) -> float:
    return float(PUBLISHED[task].envelope.steps_to_reach(FINAL[task])) / steps


@pytest.fixture
def fake_training(monkeypatch):
    monkeypatch.setattr(runner, "train_curves", _fake_train_curves)


def test_the_report_covers_earlier_runs_with_the_same_settings_only(tmp_path, fake_training, capsys):
    out = tmp_path / "out"
    assert cli.main(_argv(out, MLP)) == 0
    assert json.loads((out / "summary.json").read_text())["families"]["adam"]["all"]["n"] == 1
    assert cli.main(_argv(out, AE)) == 0  # another task subset, the same settings
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["families"]["adam"]["all"]["n"] == 2
    assert summary["families"]["adam"]["image_mlp"]["median"] == pytest.approx(_speedup(MLP))
    assert summary["families"]["adam"]["image_mlp_ae"]["median"] == pytest.approx(_speedup(AE))
    text = (out / "report.md").read_text()
    assert MLP in text and AE in text and "2 of the suite's 4 tasks" in text
    assert "published envelopes (published: speedup_over_adam.npz) for 2 tasks" in text

    assert cli.main(_argv(out, MLP, steps=50)) == 0  # other steps: the AE's 100-step result is not this run's
    summary = json.loads((out / "summary.json").read_text())
    assert summary["families"]["adam"]["all"]["n"] == 1
    assert summary["families"]["adam"]["all"]["median"] == pytest.approx(_speedup(MLP, 50))
    assert AE not in (out / "report.md").read_text()
    assert json.loads(runner.result_path(out, "adam", AE).read_text())["steps"] == 100  # still there


def test_with_two_processes_process_0_reports_both_after_the_barrier(tmp_path, fake_training, monkeypatch, capsys):
    barriers = []
    monkeypatch.setattr(cli, "wait_for_all_processes", barriers.append)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    out = tmp_path / "out"
    for process in (1, 0):  # process 1 finishes first; process 0 waits at the barrier, then reports
        monkeypatch.setattr(jax, "process_index", lambda process=process: process)
        assert cli.main(_argv(out, f"{MLP},{AE}")) == 0
        assert (out / "report.md").exists() == (process == 0)
    assert len(barriers) == 2
    assert "process 1: results written" in capsys.readouterr().out
    done = runner.load_results(out)["adam"]
    assert set(done) == {MLP, AE} and done[AE]["speedup"] == pytest.approx(_speedup(AE))  # AE: process 1's task
    summary = json.loads((out / "summary.json").read_text())
    assert summary["families"]["adam"]["all"]["n"] == 2
    assert "2 tasks run by this command (2 process(es))" in summary["notes"][0]


def test_collect_ignores_torn_and_foreign_files(tmp_path, fake_training, monkeypatch):
    out = tmp_path / "out"
    assert cli.main(_argv(out, MLP)) == 0
    runner.result_path(out, "adam", AE).write_text('{"task": "ImageMLPAE')  # a torn file of another writer
    (out / "results" / "other").mkdir()
    (out / "results" / "other" / f"{MLP}.json").write_text("{}")
    monkeypatch.setattr(runner, "train_curves", lambda *a, **k: pytest.fail("reran a finished task"))
    assert cli.main(_argv(out, MLP)) == 0  # the torn file is not read
    assert json.loads((out / "summary.json").read_text())["families"]["adam"]["all"]["n"] == 1


def test_plots_of_no_finished_run_make_no_warning(tmp_path):
    """A report before any run finished (all skipped) drew an empty legend: matplotlib warned."""
    import warnings

    skipped = {"adam": {"T": {"status": "skipped", "reason": "no data"}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report.plot_speedups(skipped, tmp_path / "s.png", "t")
        report.plot_curves("T", skipped, None, tmp_path / "c.png")
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0
