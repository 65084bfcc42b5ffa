"""velojax's own small fixed tasks on offline data (not the reference's): the validation
tasks of the `small_v1` meta-training recipe and the `heldout_small` / `ood_small`
evaluation suites, each with its run length.

- `VALIDATION`: four tasks of `small_v1`'s training distribution, watched during
  meta-training; one runs 3,000 steps, longer than any training rollout (100-2,000).
- `HELDOUT`: 13 configurations of that distribution (other widths, depths, batch sizes,
  resolutions, run lengths), for `python -m eval --suite heldout_small`.
- `OOD`: 7 tasks outside it: a byte-level LSTM language model on the Python standard
  library's source, a VAE, a 4-layer ConvNet, a 6,000-step horizon (3x the longest
  rollout), a batch of 8, a 256-wide MLP and MNIST-1D signals.

All validation and held-out tasks are excluded from `small_v1`'s distribution
(`TaskDistribution.exclude`), so no training pool can draw one; a test checks that the
OOD tasks lie outside its ranges.
"""

from __future__ import annotations

import functools

from tasks.distribution import build
from tasks.families.image_mlp import ImageMLP
from tasks.families.image_mlp_vae import ImageMLPVAE
from tasks.families.rnn_lm import RNNLM

_PREFIX = {"image_mlp": "ImageMLP", "image_conv": "Conv", "image_mlp_ae": "ImageMLPAE"}
_DATA = {"fashion_mnist": "FashionMnist", "synthetic_shapes": "Shapes"}


def _name(kind: str, dataset: str, size: int, widths: tuple[int, ...], act: str, batch: int) -> str:
    return f"{_PREFIX[kind]}_{_DATA[dataset]}{size}_{act.capitalize()}{'x'.join(map(str, widths))}_bs{batch}"


def _entries(rows) -> tuple[dict, dict]:
    """({name: constructor}, {name: steps}) of (kind, dataset, size, widths, act, batch, steps) rows."""
    makers, steps = {}, {}
    for kind, dataset, size, widths, act, batch, n in rows:
        name = _name(kind, dataset, size, widths, act, batch)
        makers[name] = functools.partial(build, kind, dataset, size, widths, act, batch)
        steps[name] = n
    return makers, steps


_VALIDATION_ROWS = (
    ("image_mlp", "fashion_mnist", 10, (40, 40), "relu", 64, 3000),
    ("image_conv", "synthetic_shapes", 12, (8, 8), "relu", 32, 500),
    ("image_mlp_ae", "fashion_mnist", 10, (32,), "gelu", 64, 1000),
    ("image_mlp", "synthetic_shapes", 16, (24,), "tanh", 32, 200),
)
_HELDOUT_ROWS = (
    ("image_mlp", "fashion_mnist", 8, (24,), "relu", 64, 500),
    ("image_mlp", "fashion_mnist", 12, (48, 48), "tanh", 32, 1000),
    ("image_mlp", "fashion_mnist", 16, (96,), "gelu", 48, 300),
    ("image_mlp", "fashion_mnist", 28, (32, 32), "relu", 32, 1500),
    ("image_mlp", "fashion_mnist", 20, (40, 40, 40), "gelu", 48, 1200),
    ("image_mlp", "synthetic_shapes", 16, (32, 32), "relu", 128, 800),
    ("image_mlp", "synthetic_shapes", 10, (64,), "tanh", 48, 400),
    ("image_conv", "fashion_mnist", 12, (10, 10), "relu", 24, 300),
    ("image_conv", "synthetic_shapes", 14, (6, 6), "gelu", 24, 400),
    ("image_conv", "fashion_mnist", 8, (12,), "tanh", 48, 200),
    ("image_mlp_ae", "fashion_mnist", 12, (32,), "relu", 64, 800),
    ("image_mlp_ae", "synthetic_shapes", 16, (48, 48), "gelu", 32, 400),
    ("image_mlp_ae", "fashion_mnist", 8, (24, 24), "tanh", 128, 2000),
)
_OOD_ROWS = (  # the ones `build` can write; the LM and the VAE follow
    ("image_conv", "fashion_mnist", 12, (6, 6, 6, 6), "relu", 32, 300),  # 4 conv layers (trained: <= 2)
    ("image_mlp", "fashion_mnist", 8, (32,), "relu", 64, 6000),  # 3x the longest rollout
    ("image_mlp", "fashion_mnist", 12, (32, 32), "relu", 8, 1000),  # batch 8 (trained: >= 32)
    ("image_mlp", "fashion_mnist", 8, (256,), "relu", 64, 1000),  # 256 wide (trained: <= 128)
)

VALIDATION, VALIDATION_STEPS = _entries(_VALIDATION_ROWS)
HELDOUT, HELDOUT_STEPS = _entries(_HELDOUT_ROWS)
OOD, OOD_STEPS = _entries(_OOD_ROWS)
_LM = "RNNLM_PyStdlibBytes_Patch16_LSTM32_Embed16_bs16"
OOD[_LM] = functools.partial(RNNLM, "pystdlib_bytes", "lstm", 32, 16, batch_size=16, seq_len=16, sampled_init=False)
OOD_STEPS[_LM] = 1000
_VAE = "ImageMLPVAE_FashionMnist12_Relu64_z8_bs64"
OOD[_VAE] = functools.partial(
    ImageMLPVAE, "fashion_mnist", (64,), (64,), n_z=8, batch_size=64, image_size=12, activation="relu",
    sampled_init=False, center_data=False, per_dim_loss=True,
)  # fmt: skip
OOD_STEPS[_VAE] = 1000
_SIGNALS = "ImageMLP_Mnist1d_Relu64x64_bs64"  # 1-d signals of length 40, an unseen dataset
OOD[_SIGNALS] = functools.partial(ImageMLP, "mnist1d", (64, 64), batch_size=64, activation="relu", sampled_init=False)
OOD_STEPS[_SIGNALS] = 1000

FIXED = {**VALIDATION, **HELDOUT, **OOD}
STEPS = {**VALIDATION_STEPS, **HELDOUT_STEPS, **OOD_STEPS}

__all__ = ["FIXED", "HELDOUT", "HELDOUT_STEPS", "OOD", "OOD_STEPS", "STEPS", "VALIDATION", "VALIDATION_STEPS"]
