"""Datasets held in host memory behind one interface, and batch sampling.

Every dataset has the four splits of the reference (`SPLITS`): for datasets with a
single training set, train = its first 80%, inner_valid = the next 10%, outer_valid =
the last 10%; test is the dataset's own test set. Batches are sampled on the host with
a numpy Generator (reproducible from a seed) and returned as numpy arrays, ready to be
stacked into `[steps, ...]` chunks for a jitted training loop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np

SPLITS = ("train", "inner_valid", "outer_valid", "test")


class DatasetUnavailable(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says how to get it."""


def split_train(n: int) -> dict[str, slice]:
    """The reference's split of one training set: [0, 80%), [80%, 90%), [90%, 100%)."""
    a, b = int(0.8 * n), int(0.9 * n)
    return {"train": slice(0, a), "inner_valid": slice(a, b), "outer_valid": slice(b, n)}


def _check_split(splits: Mapping, split: str) -> None:
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; this dataset has {sorted(splits)}")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Labelled images: per split, uint8 images [N, H, W, C] and int32 labels [N]."""

    name: str
    num_classes: int
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(next(iter(self.splits.values()))[0].shape[1:])

    @functools.lru_cache(maxsize=16)  # noqa: B019  (datasets live for the process)
    def resized(self, split: str, size: int | None) -> np.ndarray:
        """The split's images resized to size x size (bilinear, as tf.image.resize), uint8."""
        _check_split(self.splits, split)
        images = self.splits[split][0]
        if size is None or images.shape[1:3] == (size, size):
            return images
        return resize_images(images, size)

    def sample(self, rng: np.random.Generator, split: str, batch_size: int, image_size: int | None = None) -> dict:
        """{"image": uint8 [B, s, s, C], "label": int32 [B]} drawn uniformly with replacement."""
        images = self.resized(split, image_size)
        idx = rng.integers(0, images.shape[0], size=batch_size)
        return {"image": images[idx], "label": self.splits[split][1][idx]}

    def batch_spec(self, batch_size: int, image_size: int | None = None) -> dict:
        h, w, c = self.image_shape if image_size is None else (image_size, image_size, self.image_shape[2])
        return {"image": ((batch_size, h, w, c), np.uint8), "label": ((batch_size,), np.int32)}


@dataclasses.dataclass(frozen=True, eq=False)
class TokenDataset:
    """A token stream per split (int32 [N]) with ids in [0, vocab_size); 0 is padding."""

    name: str
    vocab_size: int
    splits: Mapping[str, np.ndarray]

    def sample(self, rng: np.random.Generator, split: str, batch_size: int, seq_len: int) -> dict:
        """{"tokens": int32 [B, seq_len + 1]}: random windows; inputs are [:, :-1], targets [:, 1:]."""
        _check_split(self.splits, split)
        tokens = self.splits[split]
        if tokens.shape[0] <= seq_len + 1:
            raise ValueError(f"{self.name}/{split} has {tokens.shape[0]} tokens, fewer than a window of {seq_len + 1}")
        start = rng.integers(0, tokens.shape[0] - seq_len - 1, size=batch_size)
        return {"tokens": tokens[start[:, None] + np.arange(seq_len + 1)[None, :]]}

    def batch_spec(self, batch_size: int, seq_len: int) -> dict:
        return {"tokens": ((batch_size, seq_len + 1), np.int32)}


def resize_images(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Bilinear resize of uint8 images [N, H, W, C] to [N, size, size, C] (no antialiasing,
    like tf.image.resize's default), in chunks to bound memory."""
    import jax
    import jax.numpy as jnp

    out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
    resize = jax.jit(
        lambda x: jnp.clip(
            jnp.round(
                jax.image.resize(
                    x.astype(jnp.float32), (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False
                )
            ),
            0,
            255,
        ).astype(jnp.uint8)
    )
    for start in range(0, images.shape[0], chunk):
        out[start : start + chunk] = np.asarray(resize(images[start : start + chunk]))
    return out
