"""The official checkpoint format (both namedtuple encodings, the no_config tuple layout),
corrupt and mismatched files, and save/load round trips."""

import collections

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from flax import serialization, struct

from tests.helpers import SMALL, lively_meta_params
from velojax import optimizer
from velojax.checkpoint import CheckpointError

LSTMState = collections.namedtuple("LSTMState", ["hidden", "cell"])  # haiku's


@struct.dataclass
class ParameterCheckpoint:  # the reference's checkpoint target
    params: dict
    gen_id: str
    step: int


@pytest.fixture(scope="module")
def meta():
    return jax.tree.map(np.asarray, lively_meta_params())


def _as_reference_tree(meta):
    """The tree as the reference holds it: lstm_init_state is a namedtuple."""
    tree = dict(meta)
    tree["lstm_init_state"] = LSTMState(**meta["lstm_init_state"])
    return tree


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_reads_the_current_flax_encoding(tmp_path, meta):
    path = tmp_path / "params"
    path.write_bytes(serialization.to_bytes(ParameterCheckpoint(_as_reference_tree(meta), "gen", 7)))
    _assert_same(optimizer.load_weights(path), meta)


def test_reads_the_pre_2022_namedtuple_encoding(tmp_path, meta):
    state = serialization.to_state_dict(ParameterCheckpoint(meta, "gen", 0))
    lstm = state["params"]["lstm_init_state"]
    state["params"]["lstm_init_state"] = {
        "name": "LSTMState",
        "fields": {"0": "hidden", "1": "cell"},
        "values": {"0": lstm["hidden"], "1": lstm["cell"]},
    }
    path = tmp_path / "params"
    path.write_bytes(serialization.msgpack_serialize(state))
    _assert_same(optimizer.load_weights(path), meta)


def test_reads_the_no_config_tuple_layout(tmp_path, meta):
    path = tmp_path / "old.checkpoint"
    path.write_bytes(serialization.to_bytes((_as_reference_tree(meta), "", 0)))
    _assert_same(optimizer.load_weights(path), meta)


def test_a_directory_means_its_params_file(tmp_path, meta):
    optimizer.save_weights(tmp_path / "run" / "params", meta)
    _assert_same(optimizer.load_weights(tmp_path / "run"), meta)


def test_round_trip_is_exact_and_readable_by_the_reference_loader(tmp_path, meta):
    path = optimizer.save_weights(tmp_path / "deep" / "dir" / "params", meta, gen_id="mine", step=12)
    _assert_same(optimizer.load_weights(path), meta)
    # the reference restores into ParameterCheckpoint(template) with flax.serialization.from_bytes
    template = ParameterCheckpoint(jax.tree.map(np.zeros_like, _as_reference_tree(meta)), "", 0)
    restored = serialization.from_bytes(template, path.read_bytes())
    assert restored.gen_id == "mine" and restored.step == 12
    _assert_same(restored.params["rnn_params"], meta["rnn_params"])
    assert [p.name for p in path.parent.iterdir()] == ["params"]  # no temporary file left behind


def test_save_refuses_a_malformed_tree_and_writes_nothing(tmp_path, meta):
    bad = jax.tree.map(lambda x: x, meta)
    del bad["rnn_params"]["step_size"]
    with pytest.raises(ValueError, match="missing leaves: rnn_params/step_size/b, rnn_params/step_size/w"):
        optimizer.save_weights(tmp_path / "params", bad)
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no VeLO checkpoint"):
        optimizer.load_weights(tmp_path / "nope")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"\x00\x01garbage\xff" * 10, "not a readable flax msgpack checkpoint"),
        (msgpack.packb({"foo": 1}), r"not a VeLO checkpoint: top-level keys are \['foo'\]"),
        (msgpack.packb({"params": 3}), "the meta-parameters are a int"),
    ],
)
def test_corrupt_files(tmp_path, content, message):
    path = tmp_path / "params"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        optimizer.load_weights(path)


def test_truncated_file(tmp_path, meta):
    path = optimizer.save_weights(tmp_path / "params", meta)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="may be truncated"):
        optimizer.load_weights(path)


def test_wrong_shapes_and_missing_leaves_are_named(tmp_path, meta):
    state = serialization.to_state_dict(ParameterCheckpoint(meta, "gen", 0))
    state["params"]["rnn_params"]["step_size"]["w"] = np.zeros((7, 1), np.float32)
    del state["params"]["ff_mod_stack"]["~"]["w0__13"]
    path = tmp_path / "params"
    path.write_bytes(serialization.msgpack_serialize(state))
    with pytest.raises(CheckpointError) as err:
        optimizer.load_weights(path)
    assert "missing leaves: ff_mod_stack/~/w0__13" in str(err.value)
    assert "rnn_params/step_size/w has shape (7, 1), expected (32, 1)" in str(err.value)


def test_config_mismatch_is_reported(tmp_path, meta):
    path = optimizer.save_weights(tmp_path / "params", meta)
    with pytest.raises(CheckpointError, match="do not match VeLOConfig"):
        optimizer.load_weights(path, optimizer.VeLOConfig())  # VeLO-size config, small file


def test_velo_accepts_a_path(tmp_path, meta):
    path = optimizer.save_weights(tmp_path / "params", meta)
    tx = optimizer.velo(5, weights=str(path))
    params = {"w": jnp.ones((2, 3))}
    updates, _ = tx.update({"w": jnp.full((2, 3), 0.1)}, tx.init(params), params, value=1.0)
    reference, _ = optimizer.velo(5, weights=meta, config=SMALL).update(
        {"w": jnp.full((2, 3), 0.1)}, tx.init(params), params, value=1.0
    )
    np.testing.assert_array_equal(np.asarray(updates["w"]), np.asarray(reference["w"]))
