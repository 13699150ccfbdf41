"""The shifted-image test set (protocol of the original ``test_shifted.py``).

Test split, only the chosen labels (default ``[1]``), only images whose
content leaves at least ``min_shift`` empty columns on both sides; each shift
``s`` in ``[-min_shift, min_shift]`` moves empty columns from one side to the
other (``torch.roll``: because of the selection only zeros wrap around, so it
is a pure translation of the content). ``axis="y"`` does the same with rows.

"Empty" means every pixel of the column (all rows, all channels) is exactly
zero in the image *as fed to the model*: the 32 x 32 image after
``Resize(32)``, as uint8. The resize's antialiasing spreads ink by about one
pixel, so a 28 x 28 margin check would let a little ink wrap around; checking
the rolled image itself guarantees that a shift never moves content across
the border. ``load_shift_test_set`` selects on the uint8 images and converts
afterwards, so it is also right for normalised inputs (CIFAR10), whose empty
pixels are not 0.

Shapes: ``images`` (N, C, H, W), ``labels`` (N,). A positive shift moves the
content right (x) or down (y).
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Literal, Sequence

import torch

from relative_performer.data.datasets import load_split_uint8, to_model_input
from relative_performer.data.sources import canonical_name
from relative_performer.errors import UserError

Axis = Literal["x", "y"]
AXES = ("x", "y")


def _dim(axis: str) -> int:
    if axis not in AXES:
        raise UserError(f"unknown shift axis {axis!r}: choose x (columns) or y (rows)")
    return -1 if axis == "x" else -2


def empty_margins(images: torch.Tensor, axis: Axis = "x") -> tuple[torch.Tensor, torch.Tensor]:
    """Number of leading and trailing all-zero columns (x) or rows (y) per image.

    Returns two int64 tensors (N,); an all-zero image has both equal to the
    image width (height).
    """
    dim = _dim(axis)
    lines = images.ne(0).movedim(dim, 1).flatten(2).any(-1)  # (N, L): line holds content
    length = lines.shape[1]
    has = lines.any(1)
    first = torch.where(has, lines.to(torch.int8).argmax(1), torch.full_like(has, length, dtype=torch.int64))
    last = torch.where(has, lines.flip(1).to(torch.int8).argmax(1), torch.full_like(has, length, dtype=torch.int64))
    return first.to(torch.int64), last.to(torch.int64)


def shiftable_mask(
    images: torch.Tensor,
    labels: torch.Tensor,
    labels_to_keep: Iterable[int] | None = (1,),
    min_shift: int = 8,
    axis: Axis = "x",
) -> torch.Tensor:
    """Bool (N,): label kept (``None`` keeps all) and >= ``min_shift`` empty lines on both sides."""
    if min_shift < 0:
        raise UserError(f"min_shift must be >= 0, got {min_shift}")
    before, after = empty_margins(images, axis)
    mask = (before >= min_shift) & (after >= min_shift)
    if labels_to_keep is not None:
        keep = torch.as_tensor(list(labels_to_keep), dtype=labels.dtype)
        mask &= torch.isin(labels, keep)
    return mask


def select_shiftable(
    images: torch.Tensor,
    labels: torch.Tensor,
    labels_to_keep: Iterable[int] | None = (1,),
    min_shift: int = 8,
    axis: Axis = "x",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (and labels) that every shift in ``[-min_shift, min_shift]`` only translates.

    Works on uint8 images or unnormalised floats (empty = exactly 0).
    """
    mask = shiftable_mask(images, labels, labels_to_keep, min_shift, axis)
    return images[mask], labels[mask]


def shift_images(images: torch.Tensor, shift: int, axis: Axis = "x") -> torch.Tensor:
    """Roll (N, C, H, W) images by ``shift`` pixels along width (x) or height (y)."""
    return torch.roll(images, shifts=int(shift), dims=_dim(axis))


def shift_range(min_shift: int) -> range:
    """The shifts of the protocol: ``-min_shift .. min_shift``."""
    return range(-min_shift, min_shift + 1)


def shifted_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    shift: int,
    axis: Axis = "x",
    batch_size: int = 256,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(shifted images, labels)`` in order; shifting is done per batch."""
    for start in range(0, images.shape[0], batch_size):
        yield shift_images(images[start : start + batch_size], shift, axis), labels[start : start + batch_size]


def load_shift_test_set(
    name: str,
    root: str | os.PathLike | None = None,
    embedding_type: str = "linear",
    labels_to_keep: Sequence[int] | None = (1,),
    min_shift: int = 8,
    axis: Axis = "x",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shiftable test images as model inputs (N, C, H, W) and their labels (N,).

    Selection is done on the uint8 images (see the module docstring); feed
    ``shifted_batches(images, labels, s, axis)`` to the model for each ``s`` in
    ``shift_range(min_shift)``.
    """
    name = canonical_name(name)
    images, labels = load_split_uint8(name, train=False, root=root)
    _, height, width = images.shape[1:]
    side = width if axis == "x" else height
    if 2 * min_shift > side:
        raise UserError(f"min_shift {min_shift} is too large for {side}-pixel images")
    images, labels = select_shiftable(images, labels, labels_to_keep, min_shift, axis)
    if images.shape[0] == 0:
        which = "any label" if labels_to_keep is None else f"labels {list(labels_to_keep)}"
        raise UserError(
            f"no {name} test image of {which} has {min_shift} empty "
            f"{'columns' if axis == 'x' else 'rows'} on both sides: lower min_shift or choose other labels"
        )
    return to_model_input(images, name, embedding_type), labels
