"""The `small_v1` recipe: its config runs on small data, validates, and keeps the best θ."""

import dataclasses
import json

import jax
import numpy as np

from meta_train import configs, train
from meta_train.export import export
from velojax import optimizer, shipped
from velojax.checkpoint import load_weights


def _small_run():
    config = configs.get("small_v1").with_overrides(
        ["steps=2", "min_length=10", "max_length=20", "estimator.chunk=10", "estimator.recompute_batches=2",
         "eval_recompute_batches=2", "estimator.num_pairs=2",
         "validate_every=1", "validation_seeds=1", "pool_size=1"]
    )  # fmt: skip
    # MLPs only, in the pool and in validation, one task each: the fewest, cheapest compiles.
    mlps = [t for t, _ in config.validation if t.startswith("ImageMLP_")][:1]
    phase = config.phases[0]
    families = tuple(f for f in phase.custom.families if f.kind == "image_mlp")
    custom = dataclasses.replace(phase.custom, families=families)
    phases = (dataclasses.replace(phase, custom=custom),) + tuple(config.phases[1:])
    return dataclasses.replace(config, validation=tuple((t, 20) for t in mlps), phases=phases)


def test_small_v1_runs_two_outer_steps_validates_and_keeps_the_best_theta(tmp_path):
    config = _small_run()
    assert config.init == "scheduled" and config.phases[0].custom is not None
    summary = train.train(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["val_meta_loss"]) for r in rows)
    history = summary["validation"]
    assert [v["step"] for v in history] == [0, 1, 2]
    assert all(len(v["tasks"]) == len(config.validation) == 1 for v in history)
    best = min(history, key=lambda v: v["val_meta_loss"])
    assert summary["best"] == {"step": best["step"], "val_meta_loss": best["val_meta_loss"]}
    best_theta = load_weights(tmp_path / "best_theta", config.network())
    # The exported best θ gives exactly the validation value it was kept for.
    again = train.validate(config, best_theta)
    np.testing.assert_allclose(np.mean(list(again.values())), best["val_meta_loss"], rtol=1e-5)
    if best["step"] == 0:
        start = train.initial_theta(config)
        for a, b in zip(jax.tree.leaves(best_theta), jax.tree.leaves(start)):
            np.testing.assert_array_equal(a, b)

    # A rerun of the finished run resumes: nothing is validated again.
    again_summary = train.train(config, tmp_path, progress=False)
    assert [v["step"] for v in again_summary["validation"]] == [0, 1, 2]

    # Export into a weights directory and load it by name from there.
    out = tmp_path / "weights"
    manifest_path = export(tmp_path, "test_v9", 9, "python -m meta_train --config small_v1 ...", out_dir=out,
                           evaluation={"note": "none"}, good_for="tests", not_for="anything")  # fmt: skip
    manifest = json.loads(manifest_path.read_text())
    assert manifest["training"]["config"]["name"] == "small_v1" and manifest["version"] == 9
    assert manifest["sha256"] == shipped.sha256_of(out / "test_v9.msgpack")
    meta, _ = optimizer.resolve_weights(str(out / "test_v9.msgpack"))
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(best_theta)):
        np.testing.assert_array_equal(a, b)


def test_no_task_small_v1_trains_on_is_a_validation_heldout_or_ood_task():
    import tasks
    from tasks import small_fixed

    config = configs.get("small_v1")
    drawn = [f for _, _, pool in train.task_pools(config) for f in pool]
    assert len(drawn) == 16 and len(set(drawn)) > 8
    kept_apart = {tasks.get(name) for name in small_fixed.FIXED}
    assert not kept_apart & set(drawn)
