"""Datasets that need no network: real Fashion-MNIST from the Debian package
`dataset-fashion-mnist`, procedural images and 1-D signals, and real text (this Python
installation's own standard library source) as byte and word token streams."""

from __future__ import annotations

import gzip
import os
import sysconfig
from pathlib import Path

import numpy as np

from tasks.data.base import DatasetUnavailable, ImageDataset, TokenDataset, split_train
from tasks.data.text import WordTokenizer, encode_bytes

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "VELOJAX_FASHION_MNIST_DIR"


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def fashion_mnist_local(root: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST (60k train / 10k test, 28x28x1, 10 classes) from the idx files of the
    Debian package `dataset-fashion-mnist` (or `$VELOJAX_FASHION_MNIST_DIR`)."""
    root = Path(root or os.environ.get(FASHION_MNIST_ENV) or DEBIAN_FASHION_MNIST)
    files = {k: root / f"{k}-{kind}-idx{d}-ubyte.gz" for k, kind, d in (("train", "images", 3), ("t10k", "images", 3))}
    labels = {k: root / f"{k}-labels-idx1-ubyte.gz" for k in ("train", "t10k")}
    missing = [str(p) for p in list(files.values()) + list(labels.values()) if not p.is_file()]
    if missing:
        raise DatasetUnavailable(
            f"Fashion-MNIST is not on disk (missing {missing[0]}). Install it with "
            f"`apt-get install dataset-fashion-mnist` (the README's commands do), or set ${FASHION_MNIST_ENV} "
            "to a folder with the four idx .gz files."
        )
    train_x, test_x = (_read_idx(files[k])[..., None] for k in ("train", "t10k"))
    train_y, test_y = (_read_idx(labels[k]).astype(np.int32) for k in ("train", "t10k"))
    splits = {name: (train_x[s], train_y[s]) for name, s in split_train(len(train_x)).items()}
    splits["test"] = (test_x, test_y)
    return ImageDataset("fashion_mnist", 10, splits)


def synthetic_shapes(num_examples: int = 24_000, size: int = 16, seed: int = 0) -> ImageDataset:
    """Procedural 10-class images (size x size x 1): filled or outlined shapes (disc, ring,
    square, frame, cross, diagonal, horizontal/vertical bars, triangle, dots) at random
    positions and scales, with random contrast and noise. The last 1/6 is the test split."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) * 2 - 1  # [-1, 1]
    labels = rng.integers(0, 10, num_examples).astype(np.int32)
    cx, cy = rng.uniform(-0.35, 0.35, (2, num_examples, 1, 1))
    r = rng.uniform(0.3, 0.6, (num_examples, 1, 1))
    x, y = xx[None] - cx, yy[None] - cy
    d, box = np.sqrt(x**2 + y**2), np.maximum(np.abs(x), np.abs(y))
    masks = [
        d < r,
        np.abs(d - r) < 0.12,
        box < r,
        np.abs(box - r) < 0.12,
        (np.abs(x) < 0.12) & (box < r) | (np.abs(y) < 0.12) & (box < r),
        (np.abs(x - y) < 0.15) & (box < r),
        (np.abs(y) < 0.15) & (box < r),
        (np.abs(x) < 0.15) & (box < r),
        (y > -r) & (y < r) & (np.abs(x) < (r - y) / 2),
        (np.cos(x * 9) * np.cos(y * 9) > 0.5) & (box < r),
    ]
    shape = np.select([labels[:, None, None] == k for k in range(10)], masks).astype(np.float32)
    contrast = rng.uniform(0.5, 1.0, (num_examples, 1, 1))
    img = np.clip(shape * contrast + rng.normal(0, 0.08, shape.shape), 0, 1)
    images = (img * 255).round().astype(np.uint8)[..., None]
    n_test = num_examples // 6
    splits = {k: (images[s], labels[s]) for k, s in split_train(num_examples - n_test).items()}
    splits["test"] = (images[-n_test:], labels[-n_test:])
    return ImageDataset("synthetic_shapes", 10, splits)


def mnist1d(num_examples: int = 12_000, length: int = 40, seed: int = 0) -> ImageDataset:
    """A procedural 1-D classification set in the spirit of MNIST-1D: 10 fixed template
    signals, each example randomly padded, shifted, scaled, sheared and noised, then
    resampled to `length`. Stored as images of shape (1, length, 1), values in uint8."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 12)
    templates = np.stack([np.sin(2 * np.pi * (k + 1) * t / 3 + k) * (1 - t * (k % 3) / 3) for k in range(10)])
    labels = rng.integers(0, 10, num_examples).astype(np.int32)
    base = templates[labels]
    pad = rng.integers(4, 16, (num_examples, 2))
    out = np.empty((num_examples, length), np.float32)
    grid = np.linspace(0, 1, length)
    for i in range(num_examples):
        sig = np.concatenate([np.zeros(pad[i, 0]), base[i] * rng.uniform(0.6, 1.4), np.zeros(pad[i, 1])])
        sig = np.roll(sig, rng.integers(-3, 4))
        src = np.linspace(0, 1, sig.size)
        warped = np.clip(grid + rng.uniform(-0.1, 0.1) * grid * (1 - grid), 0, 1)
        out[i] = np.interp(warped, src, sig) + grid * rng.uniform(-0.5, 0.5)
    out += np.cumsum(rng.normal(0, 0.06, out.shape), axis=1) * 0.3 + rng.normal(0, 0.1, out.shape)
    images = np.clip((out - out.min()) / (out.max() - out.min()) * 255, 0, 255).round().astype(np.uint8)
    images = images[:, None, :, None]
    n_test = num_examples // 6
    splits = {k: (images[s], labels[s]) for k, s in split_train(num_examples - n_test).items()}
    splits["test"] = (images[-n_test:], labels[-n_test:])
    return ImageDataset("mnist1d", 10, splits)


def python_stdlib_text(max_bytes: int = 8_000_000) -> list[tuple[str, bytes]]:
    """(path, source) of this installation's standard-library .py files, sorted by path,
    up to `max_bytes` in all. Real, reasonably varied English-and-code text that every
    Python installation carries."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "lib2to3/tests/")) or "/test" in rel:
            continue
        data = path.read_bytes()
        docs.append((rel, data))
        total += len(data)
        if total >= max_bytes:
            break
    if not docs:
        raise DatasetUnavailable(f"no standard-library sources found under {root}")
    return docs


def python_text(vocab_size: int | None = None, max_bytes: int = 8_000_000) -> TokenDataset:
    """The standard-library corpus as a token stream: bytes (vocab 257) when vocab_size is
    None, else a word vocabulary of that size fitted on the training documents. Documents
    are split 80/10/10/(test: every 10th document) by position, so no file is in two splits."""
    docs = python_stdlib_text(max_bytes)
    test = [d for i, (_, d) in enumerate(docs) if i % 10 == 9]
    rest = [d for i, (_, d) in enumerate(docs) if i % 10 != 9]
    parts = {k: b"\n".join(rest[s]) for k, s in split_train(len(rest)).items()}
    parts["test"] = b"\n".join(test)
    if vocab_size is None:
        return TokenDataset("pystdlib_bytes", 257, {k: encode_bytes(v) for k, v in parts.items()})
    tok = WordTokenizer.fit(parts["train"], vocab_size)
    return TokenDataset(f"pystdlib_words{vocab_size}", tok.vocab_size, {k: tok.encode(v) for k, v in parts.items()})
