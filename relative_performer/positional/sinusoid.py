"""Sinusoidal features of 2-D grid positions with learnable frequencies.

Shape legend: n - pixels (row-major), a - axes (y, x), s - frequency scales.
Positions are computed from the image's height and width at every call, never
stored, so a model runs on images of any size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

AXES = 2  # y, x


def grid_positions(height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(n, 2) integer-valued (y, x) coordinates of the pixels of an image, row-major."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, AXES)


def inverse_timescales(count: int, max_timescale: float = 64.0) -> Tensor:
    """``count`` frequencies 1 / T with timescales T geometric from 1 to ``max_timescale``.

    The default reaches about twice the side of a 32 x 32 image, so the slowest
    sinusoid does not wrap around within the image.
    """
    if count == 1:
        return torch.ones(1)
    exponents = torch.arange(count, dtype=torch.float64) / (count - 1)
    return (max_timescale ** -exponents).float()


class LearnableSinusoidEncoding(nn.Module):
    """Absolute 2-D encoding of ``dim`` channels: ``[sin(w y), cos(w y), sin(w x), cos(w x)]``.

    ``dim // 4`` learnable frequencies shared by the two axes (the original's
    ``LearnableSinusoidEncoding``: 32 parameters at dim 128).
    """

    def __init__(self, dim: int, max_timescale: float = 64.0):
        super().__init__()
        if dim % 4:
            raise ValueError(f"the absolute sinusoid encoding needs dim divisible by 4 (got {dim})")
        self.frequencies = nn.Parameter(inverse_timescales(dim // 4, max_timescale))

    def forward(self, height: int, width: int) -> Tensor:
        """(n, dim) encoding of the pixels of a height x width image."""
        positions = grid_positions(height, width, device=self.frequencies.device)
        angles = positions[:, :, None] * self.frequencies  # (n, a, dim/4)
        return torch.cat((angles.sin(), angles.cos()), dim=-1).reshape(positions.shape[0], -1)


class GridSinusoidFeatures(nn.Module):
    """Strategy 1 position features: per axis a and scale s, ``[sin(w_as p_a), cos(w_as p_a)]``.

    ``frequencies`` (a, s) are learnable. Returns (n, a, s, 2) with the last axis
    (sin, cos); the rotation-constrained query blocks act on that last axis.
    """

    def __init__(self, scales: int, max_timescale: float = 64.0):
        super().__init__()
        self.frequencies = nn.Parameter(inverse_timescales(scales, max_timescale).repeat(AXES, 1))

    @property
    def num_features(self) -> int:
        return self.frequencies.numel() * 2

    def forward(self, height: int, width: int) -> Tensor:
        positions = grid_positions(height, width, device=self.frequencies.device)
        angles = positions[:, :, None] * self.frequencies  # (n, a, s)
        return torch.stack((angles.sin(), angles.cos()), dim=-1)

    @torch.no_grad()
    def make_periodic(self, height: int, width: int) -> None:
        """Round the frequencies to multiples of 2 pi / side (per axis), for cyclic-shift tests."""
        for axis, side in enumerate((height, width)):
            base = 2 * math.pi / side
            self.frequencies[axis] = torch.clamp(torch.round(self.frequencies[axis] / base), min=1) * base
