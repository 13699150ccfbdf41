"""The image classifier all registered models share.

Shape legend: b - batch, c - channels, y, x - image rows and columns,
n - tokens (class token first, then the y * x pixels row-major), D - model dim.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from relative_performer.attention.favor import FeatureMap
from relative_performer.errors import UserError
from relative_performer.models.blocks import Block
from relative_performer.models.config import ModelConfig
from relative_performer.positional.components import PositionalComponent


class ContentEmbedding(nn.Module):
    """Embeds each pixel's channel values into D dims: ``linear``, ``MLP`` or ``lookup``.

    ``lookup`` takes integer pixel values 0..255 and sums one learned table row per
    channel (a separate 256-row table for each channel).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.embedding_type
        self.channels = cfg.in_channels
        if self.kind == "linear":
            self.net = nn.Linear(cfg.in_channels, cfg.dim)
        elif self.kind == "MLP":
            self.net = nn.Sequential(nn.Linear(cfg.in_channels, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        else:
            self.net = nn.Embedding(256 * cfg.in_channels, cfg.dim)
            self.register_buffer("offsets", torch.arange(cfg.in_channels) * 256, persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (b, n, c) -> (b, n, D)."""
        if self.kind == "lookup":
            if pixels.is_floating_point():
                raise UserError("the lookup embedding takes uint8 pixel values; load the data with embedding_type='lookup'")
            return self.net(pixels.long() + self.offsets).sum(dim=-2)
        return self.net(pixels.to(self.net[0].weight.dtype if self.kind == "MLP" else self.net.weight.dtype))


class ImageClassifier(nn.Module):
    """Pixels as tokens, a learned class token, pre-norm blocks, a linear head.

    The positional component (chosen by the registry) is the only difference
    between ``Performer``, ``NoposPerformer``, ``RelativePerformer`` and
    ``ClippedRelativePerformer``. Positions are computed from each batch's image
    size, so the model runs on any height and width.
    """

    def __init__(self, cfg: ModelConfig, positional: PositionalComponent):
        super().__init__()
        self.cfg = cfg
        self.content_embedding = ContentEmbedding(cfg)
        self.class_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.positional = positional
        self.blocks = nn.ModuleList(Block(cfg, positional.attention()) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.output_layer = nn.Linear(cfg.dim, cfg.num_classes)

    def feature_maps(self) -> list[FeatureMap]:
        return [module for module in self.modules() if isinstance(module, FeatureMap)]

    def redraw_features(self) -> None:
        """Draw fresh random features in every attention module."""
        for feature_map in self.feature_maps():
            feature_map.redraw()

    def tokens(self, images: Tensor) -> Tensor:
        """images (b, c, y, x) -> final token states (b, 1 + y * x, D)."""
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise UserError(
                f"expected images of shape (batch, {self.cfg.in_channels}, height, width), got {tuple(images.shape)}: "
                "the model was built for another number of channels"
            )
        if self.training and torch.is_grad_enabled():
            for feature_map in self.feature_maps():
                feature_map.step()
        height, width = images.shape[-2:]
        pixels = self.content_embedding(rearrange(images, "b c y x -> b (y x) c"))
        pixels, ctx = self.positional.encode(pixels, height, width)
        x = torch.cat((self.class_token.expand(pixels.shape[0], -1, -1).to(pixels.dtype), pixels), dim=1)
        for block in self.blocks:
            x = block(x, ctx)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """images (b, c, y, x), floats or uint8 for ``lookup`` -> class logits (b, classes)."""
        return self.output_layer(self.norm(self.tokens(images)[:, 0]))
