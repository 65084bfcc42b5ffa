"""The named fixed tasks of the reference (spec section 6.2): `tasks.get(name)`.

Each family module defines `FIXED = {name: zero-argument constructor}`; this registry
collects them. Building a family is cheap (no data is loaded, no model is built).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

from tasks.base import TaskFamily

FAMILY_MODULES = (
    "image_mlp",
    "image_conv",
    "image_mlp_ae",
    "image_mlp_vae",
    "resnet",
    "vit",
    "rnn_lm",
    "transformer_lm",
    "lopt",
    "mlp_mixer",
)


@functools.cache
def fixed_tasks() -> dict:
    """{name: constructor} of every fixed task, in registration order."""
    out: dict = {}
    for module in FAMILY_MODULES + ("augmentations", "small_fixed"):
        mod = importlib.import_module(f"tasks.families.{module}" if module in FAMILY_MODULES else f"tasks.{module}")
        for name, make in getattr(mod, "FIXED", {}).items():
            if name in out:
                raise ValueError(f"fixed task {name!r} is defined twice")
            out[name] = make
    return out


def get(name: str) -> TaskFamily:
    """The fixed task `name` (see `names()`)."""
    tasks = fixed_tasks()
    if name not in tasks:
        close = [n for n in tasks if n.lower().startswith(name.lower().split("_")[0])][:8]
        raise KeyError(f"no fixed task {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    return dataclasses.replace(tasks[name](), label=name)


def names() -> list[str]:
    return list(fixed_tasks())
