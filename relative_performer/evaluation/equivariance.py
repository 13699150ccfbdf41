"""How far a model's class logits move under cyclic shifts of the input image.

Exact attention (``no_projection``) is compared with FAVOR+ random features on the
same weights. Positions are made periodic first (strategy 1's frequencies rounded
to multiples of 2 pi / side; the exactly relative model is periodic by
construction), so that an exactly relative model is exactly invariant to
``torch.roll`` and every deviation measured is the random features' doing.
Runs in float64 on random weights and random images by default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from relative_performer.attention.favor import FeatureMap
from relative_performer.models.classifier import ImageClassifier
from relative_performer.models.registry import MODELS, create_model


def with_exact_attention(model: ImageClassifier) -> ImageClassifier:
    """A copy of ``model`` whose attention layers use exact softmax attention (same weights)."""
    exact = copy.deepcopy(model)
    for module in exact.modules():
        if isinstance(getattr(module, "feature_map", None), FeatureMap):
            module.feature_map = None
    exact.cfg = replace(exact.cfg, no_projection=True)
    return exact


def make_periodic(model: nn.Module, height: int, width: int) -> None:
    """Round learnable sinusoid frequencies (strategy 1) to multiples of 2 pi / side."""
    for module in model.modules():
        if hasattr(module, "make_periodic"):
            module.make_periodic(height, width)


@torch.no_grad()
def shift_error(model: nn.Module, images: torch.Tensor, shifts: list[tuple[int, int]]) -> float:
    """Max |logits(roll(x)) - logits(x)| over the shifts, relative to the logits' scale."""
    model.eval()
    reference = model(images)
    scale = reference.abs().max().clamp_min(1e-12)
    worst = 0.0
    for dy, dx in shifts:
        moved = model(torch.roll(images, shifts=(dy, dx), dims=(-2, -1)))
        worst = max(worst, float((moved - reference).abs().max() / scale))
    return worst


@dataclass
class EquivarianceRow:
    model: str
    attention: str
    draw: int
    max_relative_logit_change: float


def measure(
    models: list[str] | None = None, side: int = 16, dim: int = 32, depth: int = 2, heads: int = 4,
    draws: int = 3, batch: int = 8, seed: int = 0,
) -> list[EquivarianceRow]:
    """Cyclic-shift error of each model, exact attention and several random-feature draws."""
    rows = []
    shifts = [(1, 0), (0, 1), (3, -2), (side // 2, side // 3)]
    for name in models or list(MODELS):
        torch.manual_seed(seed)
        model = create_model(model=name, dim=dim, depth=depth, heads=heads, attn_dropout=0.0, ff_dropout=0.0).double()
        make_periodic(model, side, side)
        images = torch.rand(batch, 1, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        rows.append(EquivarianceRow(name, "exact", 0, shift_error(with_exact_attention(model), images, shifts)))
        for draw in range(draws):
            if draw:
                model.redraw_features()
            rows.append(EquivarianceRow(name, "favor+", draw, shift_error(model, images, shifts)))
    return rows
