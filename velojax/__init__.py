"""velojax: VeLO-style learned optimizers in modern JAX.

`from velojax import optimizer` and `optimizer.velo(num_steps)` give VeLO as an optax
optimizer; `velojax.core` is the pure functional update for meta-training.
"""

from velojax import optimizer
from velojax.config import VeLOConfig
from velojax.core import VeLOState, velo_init, velo_update
from velojax.meta_params import hand_designed_meta_params, init_meta_params
from velojax.optimizer import load_weights, save_weights, velo

__version__ = "0.1.0"

__all__ = [
    "VeLOConfig",
    "VeLOState",
    "hand_designed_meta_params",
    "init_meta_params",
    "load_weights",
    "optimizer",
    "save_weights",
    "velo",
    "velo_init",
    "velo_update",
]
