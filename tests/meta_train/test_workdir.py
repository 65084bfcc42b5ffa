"""`meta_train.workdir`: one rule for which θ of a workdir eval and users get; the θ that
training writes beside every checkpoint."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from eval import optimizers
from meta_train import checkpointing, train, workdir
from tests.meta_train.helpers import TINY_RUN
from velojax.checkpoint import CheckpointError, load_weights, save_weights

SMALL_V1 = Path(__file__).parents[2] / "docs" / "small_v1" / "training" / "workdir"  # stopped at step 60
# 3 of 4 outer steps, a checkpoint after each, the last 2 kept: an unfinished run without validation.
UNFINISHED = TINY_RUN.with_overrides(["eval_pairs=0", "keep_checkpoints=2"])


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _copy(tmp_path) -> Path:
    return Path(shutil.copytree(SMALL_V1, tmp_path / "run"))


def test_best_by_validation_else_final_else_the_newest_checkpoint(tmp_path):
    run = _copy(tmp_path)
    best, network, chosen = workdir.weights(run)
    assert (chosen.kind, chosen.step) == ("best", 60) and chosen.val_meta_loss == pytest.approx(0.957, abs=1e-3)
    assert "best θ by validation (step 60" in chosen.describe()

    # The checkpoint of step 60 holds the same θ the run kept as its best.
    ckpt, _, at_60 = workdir.weights(run, step=60)
    assert (at_60.kind, at_60.step, at_60.path) == ("step", 60, None)  # an old workdir: restored from orbax
    for a, b in zip(jax.tree.leaves(ckpt), jax.tree.leaves(best)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # No best_theta/: the final θ if the run finished, else the newest checkpoint's.
    _remove(run / "best_theta")
    assert workdir.choose(run).kind == "latest"
    save_weights(run / "theta", jax.tree.map(lambda x: x * 0, best))
    summary = json.loads((run / "summary.json").read_text()) | {"steps": 120}
    (run / "summary.json").write_text(json.dumps(summary))
    final, _, chosen = workdir.weights(run)
    assert (chosen.kind, chosen.step) == ("final", 120) and all(np.all(x == 0) for x in jax.tree.leaves(final))

    assert workdir.choose(run, step=120).path == run / "theta"  # a step's θ may be the final one
    with pytest.raises(FileNotFoundError, match=r"no θ of step 7 \(kept: \[60\]\)"):
        workdir.weights(run, step=7)
    _remove(run / "theta")
    _remove(run / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no θ yet"):
        workdir.choose(run)
    with pytest.raises(FileNotFoundError, match="not a meta_train workdir"):
        workdir.choose(tmp_path)


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    run = _copy(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["lstm_hidden_size"] = config.get("lstm_hidden_size", 32) + 1
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match the config's network"):
        workdir.weights(run, step=60)


def test_eval_takes_a_workdirs_theta_by_the_same_rule_and_says_which(tmp_path):
    run = _copy(tmp_path)
    spec = optimizers.velo(run)
    assert spec.source == workdir.choose(run).describe()
    assert optimizers.velo(run, step=60).source.endswith("the θ of the requested step (step 60)")
    with pytest.raises(ValueError, match="workdir only"):
        optimizers.velo("small_v1", step=60)


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory) -> Path:
    """The workdir of UNFINISHED stopped after 3 outer steps (checkpoints 2 and 3 kept)."""
    run = tmp_path_factory.mktemp("unfinished")
    with jax.numpy_dtype_promotion("standard"):
        train.train(UNFINISHED, run, progress=False, stop_after=3)
    return run


def _orbax_theta(run: Path, step: int):
    restored = ocp.CheckpointManager((run / "checkpoints").absolute()).restore(step, args=ocp.args.StandardRestore())
    return restored["theta"]


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_each_kept_checkpoint_has_its_theta_beside_it(unfinished):
    assert checkpointing.Checkpointer(unfinished / "checkpoints").steps() == [2, 3]
    assert sorted(p.name for p in (unfinished / "theta_at").iterdir()) == ["2", "3"]  # 1 pruned with its checkpoint
    for step in (2, 3):
        theta = load_weights(workdir.step_theta_path(unfinished, step), UNFINISHED.network())
        _assert_equal(theta, _orbax_theta(unfinished, step))
    with pytest.raises(AssertionError):  # the steps' θ differ: the files are not one θ twice
        _assert_equal(*(load_weights(unfinished / "theta_at" / s) for s in ("2", "3")))
    # Every file was written atomically: no temporary file is left behind.
    assert [p for p in unfinished.rglob("*") if "tmp" in p.name] == []


def test_an_unfinished_run_gives_its_newest_theta_and_says_so(unfinished, tmp_path):
    theta, network, chosen = workdir.weights(unfinished)
    assert (chosen.kind, chosen.step, chosen.path) == ("latest", 3, workdir.step_theta_path(unfinished, 3))
    assert chosen.describe() == f"{unfinished}: the θ of the newest checkpoint (step 3; no best or final θ yet)"
    _assert_equal(theta, _orbax_theta(unfinished, 3))
    assert network == UNFINISHED.network()
    assert optimizers.velo(unfinished).source == chosen.describe()  # eval --weights WORKDIR takes the same

    _, _, at_2 = workdir.weights(unfinished, step=2)
    assert (at_2.kind, at_2.step, at_2.path) == ("step", 2, workdir.step_theta_path(unfinished, 2))
    with pytest.raises(FileNotFoundError, match=r"no θ of step 1 \(kept: \[2, 3\]\)"):
        workdir.choose(unfinished, step=1)

    # A workdir without the θ files (older, or killed between a checkpoint and its θ): the checkpoint.
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    shutil.rmtree(run / "theta_at" / "3")
    restored, _, chosen = workdir.weights(run)
    assert (chosen.kind, chosen.step, chosen.path) == ("latest", 3, None)
    _assert_equal(restored, theta)


def test_a_restarted_run_writes_the_theta_a_kill_left_out(unfinished, tmp_path):
    run = Path(shutil.copytree(unfinished, tmp_path / "run"))
    shutil.rmtree(run / "theta_at" / "3")
    (run / "theta_at" / "1").mkdir()  # a kill in the write of a θ its checkpoint's pruning then removed
    (run / "theta_at" / "1" / ".params.x.tmp").write_bytes(b"half")
    with jax.numpy_dtype_promotion("standard"):
        train.train(UNFINISHED, run, progress=False, stop_after=0)
    _assert_equal(load_weights(workdir.step_theta_path(run, 3)), _orbax_theta(run, 3))
    assert sorted(p.name for p in (run / "theta_at").iterdir()) == ["2", "3"]


def test_pruning_keeps_the_given_steps_only(tmp_path):
    theta = load_weights(SMALL_V1 / "best_theta")
    for step in (1, 2, 5, 9):
        workdir.save_step_theta(tmp_path, step, theta, gen_id="t")
    (tmp_path / "theta_at" / "7").mkdir()  # half-written
    workdir.prune_step_thetas(tmp_path, keep={2, 5})
    assert sorted(p.name for p in (tmp_path / "theta_at").iterdir()) == ["2", "5"]


def test_export_writes_the_chosen_theta_to_a_file_or_a_directory(unfinished, tmp_path):
    path, chosen = workdir.export(unfinished, tmp_path / "out" / "w.msgpack", step=2)
    assert path == tmp_path / "out" / "w.msgpack" and chosen.step == 2
    _assert_equal(load_weights(path, UNFINISHED.network()), _orbax_theta(unfinished, 2))
    path, chosen = workdir.export(unfinished, tmp_path / "out")  # an existing directory
    assert path == tmp_path / "out" / "params" and (chosen.kind, chosen.step) == ("latest", 3)
    _assert_equal(load_weights(tmp_path / "out"), _orbax_theta(unfinished, 3))
    with pytest.raises(ValueError, match="cannot write"):
        workdir.export(unfinished, tmp_path / "out" / "w.msgpack" / "x")  # its parent is a file
