"""Evaluation suites: named lists of fixed tasks from `tasks/` (reference spec §6).

    from eval import suites
    suites.get("velodrome83")               # 83 SuiteEntry(task, steps=10_000)
    suites.get("tiny")                      # offline data, for CI and the demo
    suites.get("velodrome83/image_mlp")     # one family of a suite

`velodrome83` = the reference's 67-task `small_time_fixed` evaluation set ∪ the 75 tasks
with published Adam envelopes (82 tasks, spec §6.1) + `MLPMixer_Cifar100_tiny16`: the
MLP-Mixer is the one architecture family of the reference's evaluation files (its 125-task
baselines file) that the union lacks, tiny16 on CIFAR-100 is its cheapest fixed task, and
its Adam envelope is published, so its speedup is computable from the reference's baselines.
The paper's own list of 83 was never published (spec §8.1).
"""

from __future__ import annotations

import dataclasses

import tasks
from tasks import small_fixed

DEFAULT_STEPS = 10_000


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
    """One evaluation task: a fixed task of `tasks/` trained for `steps` steps."""

    task: str
    steps: int = DEFAULT_STEPS

    @property
    def family(self) -> str:
        return family_of(self.task)


_IMAGE_MLP = [
    "ImageMLP_FashionMnist8_Relu32",
    "ImageMLP_FashionMnist_Relu128x128",
    "ImageMLP_Mnist_128x128x128_Relu",
    *(
        f"ImageMLP_Cifar10_128x128x128_{v}"
        for v in (
            "Tanh_bs64",
            "Tanh_bs128",
            "Tanh_bs256",
            "Relu",
            "Relu_MSE",
            "BatchNorm_Relu",
            "BatchNorm_Tanh",
            "LayerNorm_Relu",
            "LayerNorm_Tanh",
        )
    ),
    *(f"ImageMLP_Cifar10_128x128_Dropout{d}_Relu_MSE" for d in ("02", "05", "08")),
    "ImageMLP_Imagenet16_Relu256x256x256",
]
_AE = [
    "ImageMLPAE_Mnist_128x32x128_bs128",
    "ImageMLPAE_FashionMnist_128x32x128_bs128",
    "ImageMLPAE_Cifar10_32x32x32_bs128",
    "ImageMLPAE_Cifar10_256x256x256_bs128",
    "ImageMLPAE_Cifar10_256x256x256_bs1024",
    "ImageMLPAE_Cifar10_128x32x128_bs256",
]
_ES = [f"ESWrapped_{p}_ImageMLP_{d}_128x128x128_Relu" for p in ("1pair", "8pair") for d in ("Mnist", "Cifar10")]
_CONV = [
    "Conv_Cifar10_16_32x64x64",
    "Conv_Cifar10_32x64x64",
    "Conv_Cifar10_32x64x64_Tanh",
    "Conv_Cifar10_32x64x64_batchnorm",
    "Conv_Cifar10_32x64x64_layernorm",
    "Conv_imagenet16_16_64x128x128x128",
    "Conv_imagenet32_16_32x64x64",
]
_RESNET = [f"Resnet_MultiRuntime_{i}" for i in range(9)]
_TRANSFORMER = [f"TransformerLM_LM1B_MultiRuntime_{i}" for i in range(9)]
_RNN = [
    *(f"RNNLM_lm1bbytes_Patch32_{c}128_Embed64" for c in ("IRNN", "VanillaRNN", "GRU", "LSTM")),
    "RNNLM_lm1bbytes_Patch128_LSTM128_Embed64",
    "RNNLM_lm1bbytes_Patch32_GRU256_Embed128",
    "RNNLM_lm1bbytes_Patch32_LSTM256_Embed128",
    "RNNLM_wikipediaenbytes_Patch32_GRU256_Embed128",
    "RNNLM_wikipediaenbytes_Patch32_LSTM256_Embed128",
]
_LOPT = ["LOpt_LearnableAdam_Cifar10_8_50", "LOpt_MLPLOpt_FahionMnist_10", "LOpt_AdafacMLPLOpt_FashionMnist_20"]
_VIT = [
    "VIT_Cifar100_skinnydeep",
    "VIT_Cifar100_wideshallow",
    "VIT_ImageNet64_skinnydeep",
    "VIT_Food101_64_skinnydeep",
]
#: `continuous_eval/evaluation_set.py::small_time_fixed`, in the reference's order (spec §6.1a).
SMALL_TIME_FIXED = tuple(_IMAGE_MLP + _AE + _ES + _CONV + _RESNET + _TRANSFORMER + _RNN + _LOPT + _VIT)
#: The 15 tasks with published Adam envelopes that are not in `small_time_fixed` (spec §6.1b).
_NORMALIZER_EXTRA = (
    "ImageMLP_Cifar10_8_Relu32",
    *(f"RNNLM_lm1b32k_Patch32_{c}256_Embed128" for c in ("IRNN", "LSTM", "VanillaRNN")),
    *(f"RNNLM_wikipediaen32k_Patch32_{c}256_Embed128" for c in ("GRU", "LSTM")),
    "Resnet_MultiRuntime_9",
    "Resnet_MultiRuntime_10",
    *(f"TransformerLM_LM1B_MultiRuntime_{i}" for i in (9, 10, 11)),
    *(f"TransformerLM_LM1B_5layer_{w}width" for w in (32, 128, 256, 512)),
)
#: The 75 tasks of the reference's `speedup_over_adam` file: small_time_fixed minus LOpt and VIT, plus 15.
NORMALIZER_SET = tuple(n for n in SMALL_TIME_FIXED if n not in _LOPT + _VIT) + _NORMALIZER_EXTRA
VELODROME83 = SMALL_TIME_FIXED + _NORMALIZER_EXTRA + ("MLPMixer_Cifar100_tiny16",)
#: Offline (the Debian package's Fashion-MNIST), for CI and the demo: the MLP that
#: `tiny_cpu` meta-trains on, a wider one on 28x28 images, the same MLP with a 1-pair ES
#: gradient (noisy), and an MLP autoencoder (another loss and architecture).
#: 200 steps: `tiny_cpu` meta-trains on runs of 50-200 steps.
TINY = (
    SuiteEntry("ImageMLP_FashionMnist8_Relu32", steps=200),
    SuiteEntry("ImageMLP_FashionMnist_Relu128x128", steps=200),
    SuiteEntry("ESWrapped_1pair_ImageMLP_FashionMnist8_Relu32", steps=200),
    SuiteEntry("ImageMLPAE_FashionMnist_128x32x128_bs128", steps=200),
)

#: velojax's own offline suites for the `small_v1` learned optimizer (`tasks.small_fixed`):
#: 13 tasks of its training distribution that no training pool could draw, and 7 outside
#: it, each with its own run length.
HELDOUT_SMALL = tuple(SuiteEntry(n, steps) for n, steps in small_fixed.HELDOUT_STEPS.items())
OOD_SMALL = tuple(SuiteEntry(n, steps) for n, steps in small_fixed.OOD_STEPS.items())

_SUITES: dict[str, tuple[SuiteEntry, ...]] = {
    "velodrome83": tuple(SuiteEntry(n) for n in VELODROME83),
    "small_time_fixed": tuple(SuiteEntry(n) for n in SMALL_TIME_FIXED),
    "normalizers75": tuple(SuiteEntry(n) for n in NORMALIZER_SET),
    "tiny": TINY,
    "heldout_small": HELDOUT_SMALL,
    "ood_small": OOD_SMALL,
}
_PREFIXES = (
    ("ImageMLPAE_", "image_mlp_ae"),
    ("ImageMLPVAE_", "image_mlp_vae"),
    ("ImageMLP_", "image_mlp"),
    ("ESWrapped_", "es_wrapped"),
    ("Conv_", "image_conv"),
    ("Resnet_", "resnet"),
    ("TransformerLM_", "transformer_lm"),
    ("RNNLM_", "rnn_lm"),
    ("LOpt", "lopt"),
    ("VIT_", "vit"),
    ("MLPMixer_", "mlp_mixer"),
)


def family_of(task: str) -> str:
    """The family a fixed task's name belongs to, e.g. "image_mlp" (else "other")."""
    return next((family for prefix, family in _PREFIXES if task.startswith(prefix)), "other")


def names() -> list[str]:
    """Suite names; each also has per-family subsets "<suite>/<family>"."""
    return list(_SUITES)


def get(name: str) -> tuple[SuiteEntry, ...]:
    """The suite `name`, or "<suite>/<family>" for one family of it."""
    suite, _, family = name.partition("/")
    if suite not in _SUITES:
        raise KeyError(f"unknown suite {suite!r}; known: {', '.join(_SUITES)} (each also as '<suite>/<family>')")
    entries = _SUITES[suite]
    if not family:
        return entries
    chosen = tuple(e for e in entries if e.family == family)
    if not chosen:
        families = sorted({e.family for e in entries})
        raise KeyError(f"suite {suite!r} has no family {family!r}; its families: {', '.join(families)}")
    return chosen


def select(
    entries: tuple[SuiteEntry, ...],
    *,
    tasks_: list[str] | None = None,
    families: list[str] | None = None,
    steps: int | None = None,
) -> tuple[SuiteEntry, ...]:
    """A subset of `entries` (by task names and/or families), optionally with another length."""
    if tasks_:
        unknown = sorted(set(tasks_) - {e.task for e in entries})
        if unknown:
            raise KeyError(f"not in the suite: {', '.join(unknown)}")
        entries = tuple(e for e in entries if e.task in tasks_)
    if families:
        known = {e.family for e in entries}
        unknown = sorted(set(families) - known)
        if unknown:
            raise KeyError(f"no tasks of families {', '.join(unknown)} here; families: {', '.join(sorted(known))}")
        entries = tuple(e for e in entries if e.family in families)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        entries = tuple(dataclasses.replace(e, steps=steps) for e in entries)
    return entries


def check_resolves(entries: tuple[SuiteEntry, ...]) -> None:
    """Raise KeyError naming every entry that is not a fixed task of `tasks/`."""
    known = set(tasks.names())
    missing = [e.task for e in entries if e.task not in known]
    if missing:
        raise KeyError(f"not fixed tasks of tasks/: {', '.join(missing)}")
