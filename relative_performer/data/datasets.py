"""Datasets, transforms, the train/val split and the Lightning DataModule.

As in the original work: MNIST and FashionMNIST are resized 28 -> 32 with
``Resize(32)`` (bilinear, antialiased) and scaled to [0, 1] by ``ToTensor``;
CIFAR10 (32 x 32) is scaled by ``ToTensor`` and normalised with its channel
statistics. The ``lookup`` embedding gets the uint8 pixel values instead
(0..255, after the resize), shape (C, H, W).

Fast path: each split is loaded once with torchvision and kept as one uint8
tensor (N, C, H, W) of the images exactly as ``Resize(32)`` + ``PILToTensor``
would produce them (the batched resize is
``torch.nn.functional.interpolate(uint8, mode="bilinear", antialias=True)``,
which reproduces PIL's output bit for bit; tests check it). Items are then
converted on the fly: ``x.float() / 255`` is what ``ToTensor`` computes, so
the float input equals the original per-item PIL pipeline exactly, and the
lookup input equals ``round(float * 255)``. ``pil_transform`` is that original
per-item pipeline, kept as the reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from relative_performer.data import sources
from relative_performer.data.sources import canonical_name, resolve_root
from relative_performer.errors import UserError

Split = Literal["train", "val", "test"]

IMAGE_SIZE = 32  # MNIST and FashionMNIST are resized 28 -> 32 as in the original
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about the images it gets."""

    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model input."""
        return (self.channels, self.height, self.width)


DATASET_INFO = {
    "MNIST": DatasetInfo("MNIST", 1, IMAGE_SIZE, IMAGE_SIZE, 10, tuple(str(d) for d in range(10))),
    "FashionMNIST": DatasetInfo(
        "FashionMNIST", 1, IMAGE_SIZE, IMAGE_SIZE, 10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "CIFAR10": DatasetInfo(
        "CIFAR10", 3, 32, 32, 10,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    return DATASET_INFO[canonical_name(name)]


# ==========================================================================
# Transforms
# ==========================================================================


def pil_transform(name: str, embedding_type: str = "linear"):
    """The original per-item pipeline on PIL images (the reference for the fast path)."""
    from torchvision import transforms as T

    name = canonical_name(name)
    steps = [T.Resize(IMAGE_SIZE)] if name != "CIFAR10" else []
    if embedding_type == "lookup":
        steps.append(T.PILToTensor())
    else:
        steps.append(T.ToTensor())
        if name == "CIFAR10":
            steps.append(T.Normalize(CIFAR10_MEAN, CIFAR10_STD))
    return T.Compose(steps)


def resize_uint8(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(N, C, h, w) uint8 -> (N, C, H, W) uint8, equal to PIL's ``Resize(size)`` per image.

    ``Resize(int)`` scales the shorter side to ``size`` and keeps the aspect ratio.
    (torchvision's own ``F.resize`` on a 1-channel uint8 tensor goes through
    float and differs from PIL by 1 in ~4% of pixels; the native uint8 kernel
    of ``interpolate`` does not.)
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError("resize_uint8 expects a uint8 tensor (N, C, H, W)")
    h, w = images.shape[-2:]
    if min(h, w) == size:
        return images
    if h <= w:
        out = (size, int(size * w / h))
    else:
        out = (int(size * h / w), size)
    return torch.nn.functional.interpolate(images, size=out, mode="bilinear", antialias=True, align_corners=False)


def to_model_input(images: torch.Tensor, name: str, embedding_type: str = "linear") -> torch.Tensor:
    """uint8 images (C, H, W) or (N, C, H, W) -> what the model gets.

    ``lookup``: the uint8 values unchanged. Otherwise float32 in [0, 1]
    (``ToTensor``), and for CIFAR10 normalised per channel (``Normalize``).
    """
    if embedding_type == "lookup":
        return images
    x = images.to(torch.float32).div(255)
    if name == "CIFAR10":
        from torchvision.transforms.functional import normalize

        x = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    return x


# ==========================================================================
# Loading the raw splits
# ==========================================================================


def load_cifar10(root: str | os.PathLike | None, train: bool):
    """torchvision's CIFAR10, reading the files in place without its MD5 check.

    torchvision's ``CIFAR10.__init__`` insists on the MD5 of every batch
    (``_check_integrity``, ``_load_meta``). We override those two hooks of the
    documented class: existence is checked here, structure and readability on
    failure, and the MD5 of the official release once by ``sources.verify``
    (so small CIFAR-format files written by tests load too).
    """
    from torchvision.datasets import CIFAR10

    class CIFAR10Files(CIFAR10):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).exists() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            meta = sources.read_cifar_batch(Path(self.root) / self.base_folder / self.meta["filename"])
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    root = resolve_root(root)
    folder = root / sources.CIFAR_FOLDER
    for f in sources._cifar_files():
        if not (folder / f).exists():
            raise sources._not_fetched("CIFAR10", folder / f)
    try:
        return CIFAR10Files(str(root), train=train)
    except UserError:
        raise
    except Exception as exc:
        for f in sources.CIFAR_TRAIN if train else sources.CIFAR_TEST:
            sources.read_cifar_batch(folder / f)  # names the broken file
        raise UserError(sources._one_line(
            f"torchvision cannot read CIFAR10 in {folder} ({exc}): delete it and run "
            f"`{sources.FETCH_COMMAND.format(name='CIFAR10')}` again")) from None


def _load_mnist_like(name: str, root: Path, train: bool):
    from torchvision import datasets

    folder = root / name / "raw"
    split = "train" if train else "test"
    for f in sources.IDX_FILES[split]:
        path = folder / f
        if not path.exists():
            raise sources._not_fetched(name, path)
        sources._check_idx_size(path, name, sources._ndim_of(f))
    try:
        return getattr(datasets, name)(str(root), train=train)
    except Exception as exc:
        raise UserError(sources._one_line(
            f"torchvision cannot read {name} in {folder} ({exc}): delete it and run "
            f"`{sources.FETCH_COMMAND.format(name=name)}` again")) from None


def load_split_uint8(name: str, train: bool, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split as the model sees them before scaling.

    Returns ``images`` uint8 (N, C, 32, 32) and ``labels`` int64 (N,).
    """
    name, root = canonical_name(name), resolve_root(root)
    if name == "CIFAR10":
        ds = load_cifar10(root, train)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    else:
        ds = _load_mnist_like(name, root, train)
        images = resize_uint8(ds.data[:, None])
        labels = ds.targets.to(torch.int64)
    if labels.numel() != images.shape[0]:
        raise UserError(f"{name}: {images.shape[0]} images but {labels.numel()} labels; delete the files and fetch again")
    return images, labels


def split_indices(n: int, val_size: int = 5000, seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices: ``random_split(range(n), [n - val_size, val_size], Generator().manual_seed(seed))``."""
    if not 0 <= val_size < n:
        raise UserError(f"val_size {val_size} must be between 0 and the {n} training images - 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - val_size], perm[n - val_size :]


# ==========================================================================
# Datasets
# ==========================================================================


class ImageTensorDataset(Dataset):
    """Images held as one uint8 tensor, converted per item for the model.

    ``images``: uint8 (N, C, H, W); ``labels``: int64 (N,). An item is
    ``(to_model_input(images[i]), labels[i])``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str, embedding_type: str = "linear"):
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError("images must be uint8 (N, C, H, W) and labels (N,)")
        self.images, self.labels = images, labels
        self.name, self.embedding_type = canonical_name(name), embedding_type

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_model_input(self.images[index], self.name, self.embedding_type), self.labels[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole dataset as model inputs (N, C, H, W) and labels (N,)."""
        return to_model_input(self.images, self.name, self.embedding_type), self.labels

    def subset(self, indices: torch.Tensor) -> "ImageTensorDataset":
        return ImageTensorDataset(self.images[indices], self.labels[indices], self.name, self.embedding_type)


def make_dataset(
    name: str,
    split: Split,
    root: str | os.PathLike | None = None,
    embedding_type: str = "linear",
    val_size: int = 5000,
    split_seed: int = 42,
) -> ImageTensorDataset:
    """One split, ready for a DataLoader: ``train`` and ``val`` partition the training set."""
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}: choose train, val or test")
    images, labels = load_split_uint8(name, split != "test", root)
    ds = ImageTensorDataset(images, labels, name, embedding_type)
    if split == "test":
        return ds
    train_idx, val_idx = split_indices(len(ds), val_size, split_seed)
    return ds.subset(train_idx if split == "train" else val_idx)


# ==========================================================================
# Lightning
# ==========================================================================


class ImageDataModule(L.LightningDataModule):
    """MNIST / FashionMNIST / CIFAR10 with a fixed validation split."""

    def __init__(
        self,
        dataset: str,
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        embedding_type: str = "linear",
        val_size: int = 5000,
        split_seed: int = 42,
    ):
        super().__init__()
        self.dataset = canonical_name(dataset)
        self.data_dir = resolve_root(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.embedding_type = embedding_type
        self.val_size = val_size
        self.split_seed = split_seed
        self.train_set: ImageTensorDataset | None = None
        self.val_set: ImageTensorDataset | None = None
        self.test_set: ImageTensorDataset | None = None

    @property
    def info(self) -> DatasetInfo:
        return DATASET_INFO[self.dataset]

    def prepare_data(self) -> None:
        sources.fetch(self.dataset, self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = load_split_uint8(self.dataset, True, self.data_dir)
            full = ImageTensorDataset(images, labels, self.dataset, self.embedding_type)
            train_idx, val_idx = split_indices(len(full), self.val_size, self.split_seed)
            self.train_set, self.val_set = full.subset(train_idx), full.subset(val_idx)
        if stage in (None, "test", "predict") and self.test_set is None:
            images, labels = load_split_uint8(self.dataset, False, self.data_dir)
            self.test_set = ImageTensorDataset(images, labels, self.dataset, self.embedding_type)

    def _loader(self, ds: ImageTensorDataset | None, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
