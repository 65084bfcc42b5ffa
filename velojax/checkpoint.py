"""Reading and writing VeLO meta-parameters in the official checkpoint format.

The reference saves a flax msgpack state dict of a `ParameterCheckpoint`:
`{"params": <meta-parameters>, "gen_id": str, "step": int}`. The LSTM's initial state is
a namedtuple, which flax encodes either as `{"hidden", "cell"}` or (flax before 2022) as
`{"name", "fields", "values"}`; both are read. The six older "no_config" checkpoints store
a plain tuple `(theta, "", 0)` as `{"0", "1", "2"}`; they are read too (they need
`VeLOConfig(use_bugged_loss_features=True, use_bugged_next_lstm_state=True)`).
`save_weights` writes the official layout, so the reference can read our files as well.

The msgpack encoding is flax's (`flax.serialization.msgpack_serialize`/`msgpack_restore`),
implemented here on the `msgpack` package so that the optimizer does not need flax: the
bytes written are the ones flax writes for the same tree, and everything flax writes is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import msgpack
import numpy as np

from velojax.config import VeLOConfig
from velojax.files import write_atomic
from velojax.meta_params import MetaParams, check_meta_params, config_from_meta_params

PARAMS_FILENAME = "params"  # the file name inside an official checkpoint directory


class CheckpointError(ValueError):
    """A file is not a readable VeLO checkpoint; the message says why."""


# flax's msgpack extension codes: an array as msgpack of (shape, dtype name, C-order bytes);
# a numpy scalar the same way; a Python complex as msgpack of (real, imag).
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
# msgpack caps one object at 2**31 - 1 bytes, so flax splits larger arrays (with a margin)
# into flat chunks: {"__msgpack_chunked_array__": True, "shape": {"0": d0, ...}, "chunks": {"0": a0, ...}}.
_MAX_CHUNK_BYTES = 2**30
_CHUNKED = "__msgpack_chunked_array__"


def _array_payload(x: np.ndarray) -> bytes:
    if x.dtype.hasobject or x.dtype.isalignedstruct:
        raise TypeError(f"cannot serialise an array of dtype {x.dtype} (object and structured dtypes are unsupported)")
    return msgpack.packb((x.shape, x.dtype.name, x.tobytes("C")), use_bin_type=True)


def _pack_ext(x: Any) -> msgpack.ExtType:
    if isinstance(x, (np.ndarray, jax.Array)):
        return msgpack.ExtType(_EXT_NDARRAY, _array_payload(np.asarray(x)))
    if isinstance(x, np.generic):
        return msgpack.ExtType(_EXT_NPSCALAR, _array_payload(np.asarray(x)))
    if isinstance(x, complex):
        return msgpack.ExtType(_EXT_COMPLEX, msgpack.packb((x.real, x.imag)))
    raise TypeError(f"cannot serialise a {type(x).__name__} (only dicts, lists, Python scalars, str and arrays)")


def _dtype_named(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16, float8_*, int4: ml_dtypes types that numpy knows by object only
        if isinstance(getattr(jnp, name, None), type):
            return np.dtype(getattr(jnp, name))
        raise ValueError(f"unknown array dtype {name!r}") from None


def _array_from_payload(data: bytes) -> np.ndarray:
    shape, name, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=_dtype_named(name.decode())).reshape(shape)


def _unpack_ext(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _array_from_payload(data)
    if code == _EXT_NPSCALAR:
        return _array_from_payload(data)[()]
    if code == _EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    raise ValueError(f"unknown msgpack extension type {code}")


def _chunk_large_arrays(tree: Any) -> Any:
    """Copy of `tree` with jax arrays as numpy and arrays over the size limit chunked. Like
    flax, only dict values (and the root) are visited."""
    if isinstance(tree, jax.Array):
        tree = np.asarray(tree)
    if isinstance(tree, np.ndarray) and tree.nbytes > _MAX_CHUNK_BYTES:
        flat, size = tree.reshape(-1), max(1, _MAX_CHUNK_BYTES // tree.dtype.itemsize)
        return {
            _CHUNKED: True,
            "shape": {str(i): d for i, d in enumerate(tree.shape)},
            "chunks": {str(i): flat[start : start + size] for i, start in enumerate(range(0, flat.size, size))},
        }
    if isinstance(tree, dict):
        return {k: _chunk_large_arrays(v) for k, v in tree.items()}
    return tree


def _unchunk_arrays(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    if _CHUNKED in tree:
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        return np.concatenate([tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]).reshape(shape)
    return {k: _unchunk_arrays(v) for k, v in tree.items()}


def to_msgpack(tree: Any) -> bytes:
    """Encode a tree of dicts, lists, Python scalars, str and arrays exactly as
    `flax.serialization.msgpack_serialize` does (dict keys sorted, as its copy through
    `jax.tree.map` sorts them; tuples are refused, as flax refuses them)."""
    tree = _chunk_large_arrays(jax.tree.map(lambda x: x, tree))
    return msgpack.packb(tree, default=_pack_ext, strict_types=True)


def from_msgpack(data: bytes) -> Any:
    """Decode what `flax.serialization.msgpack_serialize` (or `to_msgpack`) wrote: arrays come
    back as read-only numpy arrays, chunked large arrays reassembled."""
    tree = msgpack.unpackb(data, ext_hook=_unpack_ext, raw=False, strict_map_key=False)
    return _unchunk_arrays(tree)


def _decode_namedtuples(tree: Any) -> Any:
    """Turn flax's pre-2022 namedtuple encoding {"name","fields","values"} into a dict."""
    if not isinstance(tree, dict):
        return tree
    if set(tree) == {"name", "fields", "values"} and isinstance(tree["fields"], dict):
        fields, values = tree["fields"], tree["values"]
        return {fields[str(i)]: _decode_namedtuples(values[str(i)]) for i in range(len(fields))}
    return {k: _decode_namedtuples(v) for k, v in tree.items()}


def _find_meta_params(state: Any, path: Path) -> MetaParams:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a msgpack map at the top level, got {type(state).__name__}.")
    if "params" in state:  # ParameterCheckpoint(params, gen_id, step)
        return state["params"]
    if {"0", "1", "2"} <= set(state):  # no_config checkpoints: (theta, "", 0)
        return state["0"]
    if "lstm_init_state" in state and "rnn_params" in state:  # a bare meta-parameter tree
        return state
    raise CheckpointError(
        f"{path}: not a VeLO checkpoint: top-level keys are {sorted(state)}, expected 'params' (with 'gen_id', 'step')."
    )


def load_weights(path: str | os.PathLike, config: VeLOConfig | None = None) -> MetaParams:
    """Read VeLO meta-parameters from an official checkpoint file (or one `save_weights`
    wrote). A directory is read as `<dir>/params`, the layout of the official bucket.

    Args:
      path: the checkpoint file or directory.
      config: check the tree against this config; by default, against the config
        whose sizes fit the file (`config_from_meta_params`).
    Returns:
      The meta-parameter tree (nested dict of float32 jax arrays, official names).
    Raises:
      FileNotFoundError: no such file.
      CheckpointError: the file is truncated, not msgpack, or not a VeLO tree (the message
        names the problem, e.g. the leaves whose shapes do not match).
    """
    path = Path(path)
    if path.is_dir():
        path = path / PARAMS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no VeLO checkpoint at {path}")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: the file is empty.")
    try:
        state = from_msgpack(data)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise CheckpointError(
            f"{path}: not a readable flax msgpack checkpoint ({type(e).__name__}: {e}); "
            f"the file may be truncated ({len(data)} bytes) or of another format."
        ) from None
    tree = _decode_namedtuples(_find_meta_params(state, path))
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: the meta-parameters are a {type(tree).__name__}, not a tree of arrays.")
    non_arrays = [name for name, leaf in _named_leaves(tree) if not isinstance(leaf, (np.ndarray, np.generic))]
    if non_arrays:
        raise CheckpointError(f"{path}: these entries are not arrays: {', '.join(non_arrays[:10])}")
    try:
        check_meta_params(tree, config if config is not None else config_from_meta_params(tree))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def save_weights(path: str | os.PathLike, meta_params: MetaParams, *, gen_id: str = "velojax", step: int = 0) -> Path:
    """Write meta-parameters in the official format, atomically (a temporary file in the
    same directory, then a rename): a reader never sees a partial file.

    Returns the path written.
    """
    path = Path(path)
    config_from_meta_params(meta_params)  # refuse to write a malformed tree
    state = {
        "params": jax.tree.map(lambda x: np.asarray(x, np.float32), meta_params),
        "gen_id": gen_id,
        "step": int(step),
    }
    return write_atomic(path, to_msgpack(state))


def _named_leaves(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out += _named_leaves(value, name)
        else:
            out.append((name, value))
    return out
