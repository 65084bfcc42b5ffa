"""Real datasets through tensorflow-datasets' random-access data sources, without
TensorFlow: `tfds.data_source` over array_record files, images decoded by tfds (PIL).

Offline, a dataset that is not already prepared fails at once with `DatasetUnavailable`
(`download=False` is the default; tfds would otherwise retry a download for minutes). With
`download=True` the network is probed first (3 s), then tfds downloads and prepares the
dataset as array_record. (Not exercised here: this project's machines have no network;
the tests use `tfds.testing.mock_data`.)
"""

from __future__ import annotations

import contextlib
import logging
import socket

import numpy as np

from tasks.data.base import DatasetUnavailable, ImageDataset, TokenDataset, resize_images, split_train
from tasks.data.text import WordTokenizer, encode_bytes

_PROBE = ("storage.googleapis.com", 443)
# Builders that tfds registers only when their module is imported (its lazy registry skips
# them when TensorFlow is absent).
_BUILDER_MODULES = {"wikipedia": "tensorflow_datasets.text.wikipedia"}


def _network_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(_PROBE, timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _source(tfds_name: str, split: str, data_dir: str | None, download: bool):
    """tfds's random-access data source for one split (array_record)."""
    import importlib

    import tensorflow_datasets as tfds

    module = _BUILDER_MODULES.get(tfds_name.split("/")[0])
    if module is not None:
        importlib.import_module(module)
    try:
        with _quiet_absl():  # tfds warns about the folder it is looking for before it fails
            return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetUnavailable(
            f"tensorflow-datasets {tfds.__version__} has no dataset {tfds_name!r} (it may need an extra package)."
        ) from None
    except Exception as err:  # tfds raises several types for "not prepared"
        if not download:
            raise DatasetUnavailable(
                f"the tfds dataset {tfds_name!r} is not prepared (array_record) under "
                f"{data_dir or '~/tensorflow_datasets'}: {type(err).__name__}. Prepare it once with network access "
                f"(tasks.data.load(..., download=True) or `tfds build {tfds_name} --file_format=array_record`), "
                "or use an offline dataset (tasks.data.OFFLINE)."
            ) from None
    if not _network_reachable():
        raise DatasetUnavailable(f"cannot download {tfds_name!r}: {_PROBE[0]} is unreachable (no network?)")
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=True)


def _read_all(source, keys: tuple[str, ...]) -> dict[str, list]:
    examples = [source[i] for i in range(len(source))]
    return {k: [ex[k] for ex in examples] for k in keys}


def load_images(tfds_name: str, name: str, *, image_size: int | None = None, test_split: str = "test",
                data_dir: str | None = None, download: bool = False) -> ImageDataset:  # fmt: skip
    """An image classification dataset; images larger than `image_size` are stored resized."""
    import tensorflow_datasets as tfds

    def arrays(split):
        data = _read_all(_source(tfds_name, split, data_dir, download), ("image", "label"))
        if image_size is not None:
            images = np.stack([resize_images(np.asarray(x)[None], image_size)[0] for x in data["image"]])
        else:
            images = np.stack([np.asarray(x) for x in data["image"]])
        return images.astype(np.uint8), np.asarray(data["label"], np.int32)

    train_x, train_y = arrays("train")
    splits = {k: (train_x[s], train_y[s]) for k, s in split_train(len(train_x)).items()}
    splits["test"] = arrays(test_split)
    num_classes = tfds.builder(tfds_name, data_dir=data_dir).info.features["label"].num_classes
    return ImageDataset(name, int(num_classes), splits)


def load_text(tfds_name: str, name: str, *, text_key: str = "text", vocab_size: int | None = None,
              max_bytes: int = 100_000_000, test_split: str | None = "test", data_dir: str | None = None,
              download: bool = False) -> TokenDataset:  # fmt: skip
    """A text dataset as a token stream (bytes, or a word vocabulary of `vocab_size` fitted on
    the training text); at most `max_bytes` of text per split are read. `test_split=None`
    (a dataset with only a train split, e.g. wikipedia) holds out the last 5% of the train
    text as the test split."""

    def text(split):
        source = _source(tfds_name, split, data_dir, download)
        parts, total = [], 0
        for i in range(len(source)):
            t = source[i][text_key]
            t = t if isinstance(t, bytes) else str(t).encode()
            parts.append(t)
            total += len(t)
            if total >= max_bytes:
                break
        return b"\n".join(parts)

    train = text("train")
    if test_split is None:
        cut = int(0.95 * len(train))
        train, test = train[:cut], train[cut:]
    else:
        test = text(test_split)
    parts = {k: train[s] for k, s in split_train(len(train)).items()}
    parts["test"] = test
    if vocab_size is None:
        return TokenDataset(name, 257, {k: encode_bytes(v) for k, v in parts.items()})
    tok = WordTokenizer.fit(parts["train"], vocab_size)
    return TokenDataset(name, tok.vocab_size, {k: tok.encode(v) for k, v in parts.items()})
