"""Datasets: offline sources load real data; absent datasets fail fast with a clear message;
tfds-backed loaders work without TensorFlow (on mock data)."""

import logging
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tasks import data
from tasks.data.text import WordTokenizer, encode_bytes


def test_no_tensorflow_is_imported():
    data.load("synthetic_shapes")
    assert "tensorflow" not in sys.modules


def test_fashion_mnist_from_the_debian_package_is_real_data():
    ds = data.load("fashion_mnist_local")
    assert ds.num_classes == 10
    sizes = {k: v[0].shape[0] for k, v in ds.splits.items()}
    assert sizes == {"train": 48000, "inner_valid": 6000, "outer_valid": 6000, "test": 10000}
    images, labels = ds.splits["train"]
    assert images.shape[1:] == (28, 28, 1) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).min() > 4000  # balanced, all classes present
    assert 60 < images.mean() < 90  # Fashion-MNIST's mean intensity is ~73/255
    # the fallback: "fashion_mnist" resolves to the same data when tfds has none
    assert data.load("fashion_mnist").splits["test"][0].shape == (10000, 28, 28, 1)


def test_batches_are_reproducible_resized_and_in_range():
    ds = data.load("fashion_mnist_local")
    a = ds.sample(np.random.default_rng(3), "train", 16, 8)
    b = ds.sample(np.random.default_rng(3), "train", 16, 8)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (16, 8, 8, 1) and a["label"].dtype == np.int32
    assert a["image"].max() > 100  # resizing keeps the intensity range


def test_procedural_datasets():
    shapes = data.load("synthetic_shapes")
    assert {k: v[0].shape[1:] for k, v in shapes.splits.items()}["train"] == (16, 16, 1)
    assert len(np.unique(shapes.splits["train"][1])) == 10
    signals = data.load("mnist1d")
    assert signals.splits["train"][0].shape[1:] == (1, 40, 1)
    # classes differ on average: a nearest-class-mean classifier beats chance clearly
    x, y = (a.reshape(len(a), -1).astype(np.float32) for a in signals.splits["train"][:1]), signals.splits["train"][1]
    x = next(iter(x))
    means = np.stack([x[y == k].mean(0) for k in range(10)])
    xt, yt = signals.splits["test"][0].reshape(-1, 40).astype(np.float32), signals.splits["test"][1]
    accuracy = np.mean(np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1) == yt)
    assert accuracy > 0.3


def test_python_text_streams():
    raw = data.load("pystdlib_bytes")
    assert raw.vocab_size == 257 and raw.splits["train"].shape[0] > 1_000_000
    assert raw.splits["train"].min() >= 1 and raw.splits["train"].max() <= 256
    text = bytes((raw.splits["train"][:2000] - 1).astype(np.uint8))
    assert b"def " in text or b"import " in text
    words = data.load("pystdlib_words")
    assert words.vocab_size == 2048 and words.splits["train"].max() < 2048
    assert words.splits["train"].shape[0] < raw.splits["train"].shape[0]  # words compress
    batch = words.sample(np.random.default_rng(0), "outer_valid", 4, 16)
    assert batch["tokens"].shape == (4, 17)


def test_word_tokenizer_round_trips():
    text = b"def foo(bar):\n    return bar + 1  # zz\n" * 3
    tok = WordTokenizer.fit(text, 300)
    assert tok.decode(tok.encode(text)) == text
    assert np.array_equal(encode_bytes(b"\x00\xff"), np.array([1, 256]))


def test_absent_dataset_fails_fast_with_instructions(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailable, match="not prepared .* download=True"):
        data.REAL["cifar10"](data_dir=str(tmp_path))
    with pytest.raises(data.DatasetUnavailable, match="'wikipedia/20230601.en' is not prepared"):
        data.REAL["wikipedia_en_bytes"](data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        data.load("nope")


def test_tfds_loaders_work_without_tensorflow_on_mock_data():
    with tfds.testing.mock_data(num_examples=20):
        cifar = data.REAL["cifar10"]()
        lm = data.REAL["lm1b_bytes"]()
        wiki = data.REAL["wikipedia_en_bytes"]()  # a train split only: test is held out of it
    assert cifar.num_classes == 10 and cifar.splits["train"][0].shape[1:] == (32, 32, 3)
    assert set(cifar.splits) == set(data.SPLITS)
    assert lm.vocab_size == 257 and lm.splits["train"].dtype == np.int32
    assert set(wiki.splits) == set(data.SPLITS) and 0 < len(wiki.splits["test"]) < len(wiki.splits["train"]) / 10
    assert "tensorflow" not in sys.modules


def test_static_info_matches_the_data():
    for name in ("fashion_mnist_local", "synthetic_shapes", "mnist1d"):
        kind, shape, classes = data.INFO[name]
        ds = data.load(name)
        assert ds.image_shape == shape and ds.num_classes == classes
    for name in ("pystdlib_bytes", "pystdlib_words"):
        assert data.load(name).vocab_size == data.INFO[name][1]


def test_probing_an_unprepared_tfds_dataset_logs_no_warning(tmp_path, caplog):
    """tfds logged absl's 'Variant folder ... has no dataset_info.json' for the folder it was
    looking for, before failing: noise in every offline run."""
    from tasks.data import tfds_source

    with caplog.at_level(logging.WARNING), pytest.raises(data.DatasetUnavailable, match="is not prepared"):
        tfds_source._source("mnist", "train", str(tmp_path), download=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
