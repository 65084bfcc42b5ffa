"""Readers for the reference oracle (vendored in tests/data/velo_oracle, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import serialization

CASES = ("mlp", "mixed", "large", "edge", "horizon")


def _nest(flat: dict[str, np.ndarray], prefix: str) -> dict:
    out: dict = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue
        *parents, leaf = key[len(prefix) :].split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def meta_params_from_checkpoint(oracle: Path) -> dict:
    """The main meta-parameters from `checkpoint/params`, decoded with flax's msgpack reader (not
    velojax's loader, which the parity tests check against this) and nested by the JSON's paths
    (module names contain '/'). Each leaf's shape, dtype and mean |θ| must match what the
    reference recorded in meta_params.json, so a damaged fixture fails here, not as a parity error."""
    spec = json.loads((oracle / "meta_params.json").read_text())
    saved = serialization.msgpack_restore((oracle / "checkpoint" / "params").read_bytes())["params"]
    tree: dict = {}
    for leaf in spec["leaves"]:
        value = saved
        for p in leaf["path"]:
            value = value[p]
        if list(value.shape) != leaf["shape"] or value.dtype != np.dtype(leaf["dtype"]):
            raise ValueError(f"oracle leaf {leaf['key']}: {value.dtype}{value.shape}, recorded {leaf['shape']}")
        if not np.isclose(np.mean(np.abs(value), dtype=np.float64), leaf["mean_abs"], rtol=1e-5):
            raise ValueError(f"oracle leaf {leaf['key']}: mean |θ| differs from the recorded {leaf['mean_abs']}")
        node = tree
        for p in leaf["path"][:-1]:
            node = node.setdefault(p, {})
        node[leaf["path"][-1]] = value
    return tree


class Case:
    def __init__(self, oracle: Path, name: str):
        self.name = name
        self.spec = json.loads((oracle / f"case_{name}.json").read_text())
        z = np.load(oracle / f"case_{name}.npz")
        self.flat = {k: z[k] for k in z.files}
        self.num_steps = int(self.flat["num_steps"])
        self.num_updates = int(self.flat["num_updates"])
        self.params = _nest(self.flat, "params/")  # leaves [K+1, *S]
        self.grads = _nest(self.flat, "grads/")  # [K, *S]
        self.updates = _nest(self.flat, "updates/")  # [K, *S]
        self.losses = self.flat["losses"]

    def state(self, name: str) -> dict:
        """Reference state trajectory leaves, e.g. state('mom_rolling/m') -> {param path: [K+1, *S, 3]}."""
        return _nest(self.flat, f"state_traj/{name}/")

    def leaf_paths(self) -> list[str]:
        return [leaf["key"] for leaf in self.spec["param_leaves_in_jax_order"]]
