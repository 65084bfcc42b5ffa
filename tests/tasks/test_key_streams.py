"""Named key streams (tasks.key_streams): distinct names give distinct keys at any indices."""

import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks.key_streams import STREAMS, root, stream, stream_id, streams

INDICES = [(), (0,), (1,), (0, 0), (0, 1), (1, 0), (2, 3)]


def _bytes(key) -> bytes:
    return np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key).tobytes()


def test_every_stream_has_its_own_id_derived_from_its_name():
    assert len(set(STREAMS)) == len(STREAMS)
    ids = [stream_id(name) for name in STREAMS]
    assert len(set(ids)) == len(ids)
    assert all(0 <= i < 2**31 for i in ids)
    # from the name alone: adding a stream never changes another's keys
    assert stream_id("train_loss") == zlib.crc32(b"train_loss") & 0x7FFFFFFF


def test_keys_of_different_streams_and_indices_are_distinct():
    key = root(0)
    keys = {(name, idx): _bytes(stream(key, name, *idx)) for name, idx in itertools.product(STREAMS, INDICES)}
    assert len(set(keys.values())) == len(keys)
    assert _bytes(key) not in set(keys.values())
    # the collision the named streams remove: the pool of (phase 0, epoch 0) and outer step 0's first estimate
    assert _bytes(stream(key, "pool", 0, 0)) != _bytes(stream(key, "estimate", 0, 0))
    # a stream is fold_in of its id, then of each index in order
    expected = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, stream_id("pick")), 2), 3)
    assert _bytes(stream(key, "pick", 2, 3)) == _bytes(expected)
    assert _bytes(stream(root(1), "pick", 2, 3)) != _bytes(expected)  # and of the root


def test_unknown_stream_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'trian_loss'"):
        stream(root(0), "trian_loss", 0)
    with pytest.raises(ValueError, match="'nope'"):
        stream_id("nope")


def test_streams_stacks_the_last_index_and_traced_indices_give_the_same_keys():
    key = root(5)
    stacked = jax.jit(lambda k, first: streams(k, "eval_loss", 4, first + jnp.arange(3)))(key, 2)
    assert stacked.shape[0] == 3
    for j in range(3):
        assert _bytes(stacked[j]) == _bytes(stream(key, "eval_loss", 4, 2 + j))
    with pytest.raises(ValueError, match="1-d"):
        streams(key, "train_loss", 3)
    with pytest.raises(ValueError, match="at least one index"):
        streams(key, "train_loss")
