"""Positional components: the one part in which the registered models differ.

A component may add an encoding to the pixel tokens (absolute positions), supply
per-forward context to the attention layers, and build each layer's attention.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from relative_performer.models.blocks import AttentionContext, SelfAttention
from relative_performer.models.config import ModelConfig
from relative_performer.positional.constrained import ConstrainedRelativeProjection
from relative_performer.positional.sinusoid import AXES, GridSinusoidFeatures, LearnableSinusoidEncoding


class PositionalComponent(nn.Module):
    """No positions at all: attention by content only (``NoposPerformer``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def encode(self, pixels: Tensor, height: int, width: int) -> tuple[Tensor, AttentionContext]:
        """pixels (b, height * width, dim) -> (pixels, context for the attention layers)."""
        return pixels, AttentionContext(height, width)

    def attention(self) -> nn.Module:
        """A new attention module for one layer."""
        return SelfAttention(self.cfg)


class AbsolutePositions(PositionalComponent):
    """Learnable sinusoid encoding of (y, x) added to the content (``Performer``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.encoding = LearnableSinusoidEncoding(cfg.dim)

    def encode(self, pixels: Tensor, height: int, width: int) -> tuple[Tensor, AttentionContext]:
        return pixels + self.encoding(height, width).to(pixels.dtype), AttentionContext(height, width)


class ConstrainedRelativePositions(PositionalComponent):
    """Strategy 1 (``RelativePerformer``): shared sinusoid features, per-layer rotation blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.features = GridSinusoidFeatures(cfg.pos_scales)

    def encode(self, pixels: Tensor, height: int, width: int) -> tuple[Tensor, AttentionContext]:
        features = self.features(height, width)
        with_class_token = torch.cat((torch.zeros_like(features[:1]), features))  # class token: no position
        return pixels, AttentionContext(height, width, with_class_token)

    def attention(self) -> nn.Module:
        cfg = self.cfg
        projection = ConstrainedRelativeProjection(cfg.dim, cfg.heads, cfg.pos_scales, AXES, cfg.content_rel_attn)
        return SelfAttention(cfg, projection)


class ClippedRelativePositions(PositionalComponent):
    """Strategy 2 (``ClippedRelativePerformer``): relative heads over clipped distances."""

    def attention(self) -> nn.Module:
        from relative_performer.attention.clipped import ClippedRelativeAttention

        return ClippedRelativeAttention(self.cfg)


class PeriodicRelativePositions(PositionalComponent):
    """Exactly relative for every feature draw (``ExactRelativePerformer``).

    Harmonics of the image's own height and width: positions on a torus, so the
    model is exactly invariant to cyclic shifts. See ``attention/periodic.py``.
    """

    def encode(self, pixels: Tensor, height: int, width: int) -> tuple[Tensor, AttentionContext]:
        from relative_performer.attention.periodic import periodic_basis

        basis = periodic_basis(height, width, self.cfg.pos_scales, device=pixels.device, dtype=pixels.dtype)
        with_class_token = torch.cat((torch.zeros_like(basis[:1]), basis))
        return pixels, AttentionContext(height, width, with_class_token)

    def attention(self) -> nn.Module:
        from relative_performer.attention.periodic import PeriodicRelativeAttention

        return PeriodicRelativeAttention(self.cfg)
