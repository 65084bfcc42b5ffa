"""Datasets by name, with the reference's four splits (train / inner_valid / outer_valid /
test), loaded once per process.

    from tasks import data
    ds = data.load("fashion_mnist")     # tfds if prepared, else the Debian package's files
    batch = ds.sample(np.random.default_rng(0), "train", batch_size=128, image_size=8)

Names in `REAL` come from tensorflow-datasets (no TensorFlow); names in `OFFLINE` need no
network. `load(name)` raises `DatasetUnavailable` at once, with instructions, when a
dataset is neither prepared nor (with download=True) downloadable.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

from tasks.data import offline, tfds_source
from tasks.data.base import SPLITS, DatasetUnavailable, ImageDataset, TokenDataset

Dataset = ImageDataset | TokenDataset

# name -> (loader(data_dir, download), fallback loader or None)
REAL: dict[str, Callable] = {
    "mnist": lambda **kw: tfds_source.load_images("mnist", "mnist", **kw),
    "fashion_mnist": lambda **kw: tfds_source.load_images("fashion_mnist", "fashion_mnist", **kw),
    "cifar10": lambda **kw: tfds_source.load_images("cifar10", "cifar10", **kw),
    "cifar100": lambda **kw: tfds_source.load_images("cifar100", "cifar100", **kw),
    "imagenet16": lambda **kw: tfds_source.load_images(
        "imagenet_resized/16x16", "imagenet16", test_split="validation", **kw
    ),
    "imagenet32": lambda **kw: tfds_source.load_images(
        "imagenet_resized/32x32", "imagenet32", test_split="validation", **kw
    ),
    "imagenet64": lambda **kw: tfds_source.load_images(
        "imagenet_resized/64x64", "imagenet64", test_split="validation", **kw
    ),
    "food101_64": lambda **kw: tfds_source.load_images(
        "food101", "food101_64", image_size=64, test_split="validation", **kw
    ),
    "lm1b_bytes": lambda **kw: tfds_source.load_text("lm1b", "lm1b_bytes", **kw),
    "lm1b_32k": lambda **kw: tfds_source.load_text("lm1b", "lm1b_32k", vocab_size=32768, **kw),
    "wikipedia_en_bytes": lambda **kw: tfds_source.load_text(
        "wikipedia/20230601.en", "wikipedia_en_bytes", test_split=None, **kw
    ),
    "wikipedia_en_32k": lambda **kw: tfds_source.load_text(
        "wikipedia/20230601.en", "wikipedia_en_32k", vocab_size=32768, test_split=None, **kw
    ),
}
OFFLINE: dict[str, Callable] = {
    "fashion_mnist_local": offline.fashion_mnist_local,
    "synthetic_shapes": offline.synthetic_shapes,
    "mnist1d": offline.mnist1d,
    "pystdlib_bytes": offline.python_text,
    "pystdlib_words": lambda: offline.python_text(vocab_size=2048),
}
# Offline stand-ins for real datasets with the same content.
_FALLBACKS = {"fashion_mnist": "fashion_mnist_local"}
NAMES = tuple(REAL) + tuple(OFFLINE)


@functools.cache
def load(name: str, *, data_dir: str | None = None, download: bool = False) -> Dataset:
    """The dataset `name` (see NAMES), loaded into host memory once per process."""
    if name in OFFLINE:
        return OFFLINE[name]()
    if name not in REAL:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    try:
        return REAL[name](data_dir=data_dir, download=download)
    except DatasetUnavailable as err:
        fallback = _FALLBACKS.get(name)
        if fallback is None:
            raise
        try:
            return load(fallback)
        except DatasetUnavailable as err2:
            raise DatasetUnavailable(f"{err}\nThe offline copy is unavailable too: {err2}") from None


def available(name: str, *, data_dir: str | None = None) -> bool:
    """Whether `load(name)` would succeed without network."""
    try:
        load(name, data_dir=data_dir)
    except DatasetUnavailable:
        return False
    return True


__all__ = [
    "NAMES",
    "OFFLINE",
    "REAL",
    "SPLITS",
    "Dataset",
    "DatasetUnavailable",
    "ImageDataset",
    "TokenDataset",
    "available",
    "load",
]


# Static facts about each dataset, for building models and batch specs without loading data:
# ("image", (H, W, C), num_classes) or ("text", vocab_size).
INFO: dict[str, tuple] = {
    "mnist": ("image", (28, 28, 1), 10),
    "fashion_mnist": ("image", (28, 28, 1), 10),
    "fashion_mnist_local": ("image", (28, 28, 1), 10),
    "cifar10": ("image", (32, 32, 3), 10),
    "cifar100": ("image", (32, 32, 3), 100),
    "imagenet16": ("image", (16, 16, 3), 1000),
    "imagenet32": ("image", (32, 32, 3), 1000),
    "imagenet64": ("image", (64, 64, 3), 1000),
    "food101_64": ("image", (64, 64, 3), 101),
    "synthetic_shapes": ("image", (16, 16, 1), 10),
    "mnist1d": ("image", (1, 40, 1), 10),
    "lm1b_bytes": ("text", 257),
    "lm1b_32k": ("text", 32768),
    "wikipedia_en_bytes": ("text", 257),
    "wikipedia_en_32k": ("text", 32768),
    "pystdlib_bytes": ("text", 257),
    "pystdlib_words": ("text", 2048),
}
assert set(INFO) == set(NAMES)


@contextlib.contextmanager
def mock_real_datasets(num_examples: int = 20):
    """Within the block, tfds datasets are tfds's random mock examples (tests, smoke runs).
    `load`'s per-process cache is cleared before and after, so no mock data leaks out."""
    import tensorflow_datasets as tfds

    load.cache_clear()
    try:
        with tfds.testing.mock_data(num_examples=num_examples):
            yield
    finally:
        load.cache_clear()
