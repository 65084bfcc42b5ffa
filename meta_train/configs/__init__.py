"""Named meta-training configs: `get(name)`, `names()`."""

from __future__ import annotations

from meta_train.config import MetaTrainConfig
from meta_train.configs import gpu8_host, small_v1, tiny_cpu, tiny_cpu_pes, velo_phases

_CONFIGS: dict[str, MetaTrainConfig] = {
    "tiny_cpu": tiny_cpu.CONFIG,
    "tiny_cpu_pes": tiny_cpu_pes.CONFIG,
    "small_v1": small_v1.CONFIG,
    **velo_phases.CONFIGS,
    "gpu8_host": gpu8_host.CONFIG,
}


def names() -> list[str]:
    return list(_CONFIGS)


def get(name: str) -> MetaTrainConfig:
    if name not in _CONFIGS:
        raise KeyError(f"no meta-training config {name!r}; known: {', '.join(_CONFIGS)}")
    return _CONFIGS[name]
