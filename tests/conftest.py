"""Shared fixtures. Data fixtures write tiny datasets in torchvision's layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from relative_performer.data import sources

FAKE_TRAIN, FAKE_TEST = 60, 20  # images per split of the fake datasets (6 and 2 per class)


def fake_digits(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like uint8 images (n, size, size): a bright bar plus noise in a blank border; labels 0..9 cycling."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(4, 8, size=2)
        h, w = rng.integers(8, 16), rng.integers(2, 10)
        images[i, top : top + h, left : left + w] = rng.integers(1, 256, size=(h, w))
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def centred_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose content (a label-dependent bar) sits in columns/rows 10..17."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = 10 + int(rng.integers(0, 2))
        images[i, top : top + 2 + label // 2, 11 + label % 5 : 14 + label % 5] = rng.integers(128, 256)
    return images, labels


@pytest.fixture
def fake_mnist_root(tmp_path: Path) -> Path:
    """A data root with a tiny MNIST (60 train / 20 test images) as uncompressed IDX files."""
    raw = tmp_path / "MNIST" / "raw"
    for split, n, seed in (("train", FAKE_TRAIN, 0), ("test", FAKE_TEST, 1)):
        images, labels = fake_digits(n, seed)
        img_file, lbl_file = sources.IDX_FILES[split]
        sources.write_idx(raw / img_file, images)
        sources.write_idx(raw / lbl_file, labels)
    return tmp_path


def write_fake_cifar(root: Path, per_batch: int = 10, n_test: int = 10, seed: int = 0) -> Path:
    """The seven files of cifar-10-batches-py with tiny batches (labels 0..9 cycling)."""
    rng = np.random.default_rng(seed)
    folder = root / sources.CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(f, per_batch) for f in sources.CIFAR_TRAIN] + [(f, n_test) for f in sources.CIFAR_TEST]:
        entry = {
            "batch_label": name,
            "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
            "labels": [int(i % 10) for i in range(n)],
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": per_batch, "num_vis": 3072}
    with open(folder / sources.CIFAR_META, "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return folder


@pytest.fixture
def fake_cifar_root(tmp_path: Path) -> Path:
    """A data root with a tiny CIFAR10 (5 x 10 train / 10 test images)."""
    write_fake_cifar(tmp_path)
    return tmp_path


@pytest.fixture
def make_digits():
    """The generator of fake MNIST-like images: ``make_digits(n, seed) -> (images, labels)``."""
    return fake_digits


@pytest.fixture
def make_cifar():
    """The writer of fake CIFAR10 files: ``make_cifar(root, per_batch, n_test) -> folder``."""
    return write_fake_cifar
