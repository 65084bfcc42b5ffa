"""The official checkpoint format (both namedtuple encodings, the no_config tuple layout),
corrupt and mismatched files, and save/load round trips."""

import collections

import chex
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from flax import serialization, struct

from tests.helpers import SMALL, assert_tree_finite, lively_meta_params
from velojax import checkpoint, optimizer, shipped
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
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b), strict=True)


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
    updates, _ = jax.jit(tx.update)({"w": jnp.full((2, 3), 0.1)}, tx.init(params), params, value=1.0)
    reference, _ = jax.jit(optimizer.velo(5, weights=meta, config=SMALL).update)(
        {"w": jnp.full((2, 3), 0.1)}, tx.init(params), params, value=1.0
    )
    chex.assert_shape(updates["w"], (2, 3))
    assert_tree_finite(updates)
    assert np.any(np.asarray(updates["w"]) != 0)
    np.testing.assert_array_equal(np.asarray(updates["w"]), np.asarray(reference["w"]))


# velojax.checkpoint reimplements flax's msgpack encoding; flax (a dev dependency) is the oracle.


def _every_kind_of_leaf():
    """Keys out of order, every array dtype flax handles (bfloat16 included), 0-d and empty
    arrays, numpy and Python scalars, complex, None, lists and jax arrays."""
    rng = np.random.RandomState(0)
    return {
        "z": {"b": rng.randn(3, 4).astype(np.float32), "a": jnp.arange(6, dtype=jnp.int32).reshape(2, 3)},
        "dtypes": {
            name: rng.randn(5).astype(dtype)
            for name, dtype in [("f16", np.float16), ("f64", np.float64), ("c64", np.complex64), ("i8", np.int8)]
        },
        "bf16": jnp.linspace(-2, 2, 7, dtype=jnp.bfloat16),
        "bool": np.array([True, False, True]),
        "uint": np.arange(4, dtype=np.uint16),
        "zero_d": np.array(1.5, np.float32),
        "jax_zero_d": jnp.asarray(2.5),
        "empty": np.zeros((0, 3), np.float32),
        "np_scalars": [np.float32(0.25), np.int64(-3), np.bool_(True)],
        "python": [1, -(2**40), 0.1, True, "text", b"bytes", None, 1 - 2j],
        "step": 7,
    }


def _assert_identical_trees(ours, theirs):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert type(x) is type(y), (type(x), type(y))
        if isinstance(y, (np.ndarray, np.generic)):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


def test_writes_the_bytes_flax_writes():
    tree = _every_kind_of_leaf()
    assert checkpoint.to_msgpack(tree) == serialization.msgpack_serialize(tree)
    state = {"params": jax.tree.map(np.asarray, lively_meta_params()), "gen_id": "g", "step": 3}
    assert checkpoint.to_msgpack(state) == serialization.msgpack_serialize(state)


def test_reads_what_flax_writes_as_flax_does():
    data = serialization.msgpack_serialize(_every_kind_of_leaf())
    ours, theirs = checkpoint.from_msgpack(data), serialization.msgpack_restore(data)
    _assert_identical_trees(ours, theirs)
    assert ours["bf16"].dtype == jnp.bfloat16 and ours["python"][-1] == 1 - 2j
    assert isinstance(ours["np_scalars"][0], np.float32) and ours["np_scalars"][0] == 0.25


def test_save_weights_writes_the_bytes_flax_writes(tmp_path, meta):
    path = optimizer.save_weights(tmp_path / "params", meta, gen_id="g", step=5)
    state = {"params": jax.tree.map(lambda x: np.asarray(x, np.float32), meta), "gen_id": "g", "step": 5}
    assert path.read_bytes() == serialization.msgpack_serialize(state)


def test_shipped_weights_re_encode_to_the_same_bytes():
    data = shipped.shipped_path("small_v1").read_bytes()
    assert checkpoint.to_msgpack(checkpoint.from_msgpack(data)) == data


def test_large_arrays_are_chunked_as_flax_chunks_them(monkeypatch):
    # flax splits arrays over 2**30 bytes; shrink the limit on both sides to test it on 40 bytes
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 16)
    monkeypatch.setattr(checkpoint, "_MAX_CHUNK_BYTES", 16)
    big = np.arange(10, dtype=np.float32).reshape(2, 5)
    tree = {"big": big, "nested": {"big": big.astype(np.float64)}, "small": np.ones(2, np.float32)}
    data = checkpoint.to_msgpack(tree)
    assert data == serialization.msgpack_serialize(tree)
    assert msgpack.unpackb(data, strict_map_key=False)["big"]["__msgpack_chunked_array__"] is True
    ours = checkpoint.from_msgpack(data)
    _assert_identical_trees(ours, serialization.msgpack_restore(data))
    np.testing.assert_array_equal(ours["nested"]["big"], big)
    assert ours["big"].shape == (2, 5) and ours["nested"]["big"].dtype == np.float64


def test_encoding_refuses_what_flax_refuses():
    with pytest.raises(TypeError, match="cannot serialise a tuple"):
        checkpoint.to_msgpack({"a": (1, 2)})
    with pytest.raises(TypeError, match="object and structured dtypes"):
        checkpoint.to_msgpack({"a": np.array([object()])})


def test_unknown_extension_type_is_a_clear_error(tmp_path):
    path = tmp_path / "params"
    path.write_bytes(msgpack.packb({"params": msgpack.ExtType(9, b"x")}))
    with pytest.raises(CheckpointError, match="unknown msgpack extension type 9"):
        optimizer.load_weights(path)
