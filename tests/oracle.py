"""Readers for the reference oracle (`../shared/velo_oracle`, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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


def meta_params_from_npz(oracle: Path) -> dict:
    """The main meta-parameters, nested by the JSON's paths (module names contain '/')."""
    spec = json.loads((oracle / "meta_params.json").read_text())
    flat = np.load(oracle / "meta_params.npz")
    tree: dict = {}
    for leaf in spec["leaves"]:
        node = tree
        for p in leaf["path"][:-1]:
            node = node.setdefault(p, {})
        node[leaf["path"][-1]] = flat[leaf["key"]]
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
