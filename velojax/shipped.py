"""Learned-optimizer weights shipped inside the package, loaded by name (no download).

    from velojax import optimizer
    optimizer.available_weights()                    # ["small_v1", ...], newest version first
    tx = optimizer.velo(num_steps=1_000, weights="small_v1")

Each entry is `velojax/weights/<name>.msgpack` (the official checkpoint format, readable
by `load_weights` and by the reference) and `<name>.json`, its manifest:

    {"name", "version", "network": VeLOConfig fields, "sha256": of the msgpack file,
     "training": {"command", "config", "commit", "wall_time_s", "machine", ...},
     "evaluation": headline figures, "good_for", "not_for"}

`load_shipped(name)` checks the file against the manifest's sha256 before reading it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from velojax.checkpoint import CheckpointError, load_weights
from velojax.config import VeLOConfig
from velojax.meta_params import MetaParams

WEIGHTS_PACKAGE = "velojax.weights"


def weights_dir() -> Path:
    """The directory of the shipped weights and manifests."""
    return Path(str(resources.files(WEIGHTS_PACKAGE)))


@functools.cache
def _manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(weights_dir().glob("*.json")):
        manifest = json.loads(path.read_text())
        if manifest.get("name") != path.stem:
            raise CheckpointError(f"{path}: manifest name {manifest.get('name')!r} does not match the file name")
        found[path.stem] = manifest
    return found


def available_weights() -> list[str]:
    """Names of the shipped weights, newest version first (ties: by name)."""
    manifests = _manifests()
    return sorted(manifests, key=lambda n: (-int(manifests[n].get("version", 0)), n))


def manifest(name: str) -> dict[str, Any]:
    """The manifest of shipped weights `name` (see the module doc)."""
    manifests = _manifests()
    if name not in manifests:
        raise KeyError(f"no shipped weights named {name!r}; available: {', '.join(available_weights()) or 'none'}")
    return manifests[name]


def shipped_path(name: str) -> Path:
    """The msgpack file of shipped weights `name`."""
    manifest(name)
    return weights_dir() / f"{name}.msgpack"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def network_config(name: str) -> VeLOConfig:
    """The `VeLOConfig` the weights `name` were trained with (from the manifest)."""
    fields = {f.name for f in dataclasses.fields(VeLOConfig)}
    return VeLOConfig(**{k: v for k, v in manifest(name)["network"].items() if k in fields})


def load_shipped(name: str) -> tuple[MetaParams, VeLOConfig]:
    """(meta-parameters, config) of shipped weights `name`, after checking the file's sha256.

    Raises KeyError for an unknown name and CheckpointError when the file does not match
    its manifest."""
    path, expected = shipped_path(name), manifest(name)["sha256"]
    if not path.is_file():
        raise CheckpointError(f"shipped weights {name!r}: {path} is missing (a broken install?)")
    got = sha256_of(path)
    if got != expected:
        raise CheckpointError(f"shipped weights {name!r}: {path} has sha256 {got}, the manifest says {expected}")
    config = network_config(name)
    return load_weights(path, config), config
