"""`meta_train.workdir`: one rule for which θ of a workdir eval and users get."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from eval import optimizers
from meta_train import workdir
from velojax.checkpoint import CheckpointError, save_weights

SMALL_V1 = Path(__file__).parents[2] / "docs" / "small_v1" / "training" / "workdir"  # stopped at step 60


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
    assert (at_60.kind, at_60.step) == ("checkpoint", 60)
    for a, b in zip(jax.tree.leaves(ckpt), jax.tree.leaves(best)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # No best_theta/: the final θ if the run finished, else the newest checkpoint's.
    _remove(run / "best_theta")
    assert workdir.choose(run).kind == "checkpoint"
    save_weights(run / "theta", jax.tree.map(lambda x: x * 0, best))
    summary = json.loads((run / "summary.json").read_text()) | {"steps": 120}
    (run / "summary.json").write_text(json.dumps(summary))
    final, _, chosen = workdir.weights(run)
    assert (chosen.kind, chosen.step) == ("final", 120) and all(np.all(x == 0) for x in jax.tree.leaves(final))

    with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
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
    assert optimizers.velo(run, step=60).source.endswith("the θ of the checkpoint (step 60)")
    with pytest.raises(ValueError, match="workdir only"):
        optimizers.velo("small_v1", step=60)
