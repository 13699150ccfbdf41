"""Strategy 2 (paper section 3.2): learned relative embeddings over clipped 2-D displacements.

Shape legend: b - batch, h - heads, n - tokens (class token first, then pixels),
c - clipped distances 0..C, e - value dim (+1 for the normaliser), m - random features.

Half of the heads are ordinary content heads. In the other half, the key of pixel j
seen from pixel i is a learned vector ``r[c(i, j)]`` with
``c(i, j) = min(|dy| + |dx|, C)`` (Manhattan distance clipped at ``C =
clipping_dist``), and the weight is ``s_c(i) = phi(q_i) . phi(r[c])`` (FAVOR+) or
``exp(q_i . r[c] / sqrt(d))`` (exact). All far pairs share ``r[C]``, so

    out_i = [s_C(i) sum_j v_j + sum_{c<C} (s_c(i) - s_C(i)) R_c(v)_i] / (same with v = 1)

where ``R_c(v)_i`` sums v over the pixels at distance exactly c from pixel i: a
global term plus a local window. ``R_c`` is a fixed 2-D convolution with a
diamond-ring kernel (the weights ``s`` depend on the query only, so they factor
out of the window sum), linear in n. The class token is far from every pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from relative_performer.models.blocks import AttentionContext, SelfAttention
from relative_performer.models.config import ModelConfig


def manhattan_ring_kernels(clipping_dist: int) -> Tensor:
    """(C, 1, K, K) kernels, K = 2C - 1: kernel c is 1 where |dy| + |dx| == c."""
    radius = clipping_dist - 1
    offsets = torch.arange(-radius, radius + 1)
    distance = offsets[:, None].abs() + offsets[None, :].abs()
    rings = torch.stack([(distance == c) for c in range(clipping_dist)]).float()
    return rings[:, None]


def ring_sums(values: Tensor, height: int, width: int, kernels: Tensor) -> Tensor:
    """Sum of values over the pixels at each Manhattan distance c < C, zero outside the image.

    values (b, h, n, e) over the n = height * width pixels -> (b, h, n, c, e).
    """
    b, h, _, e = values.shape
    grid = rearrange(values, "b h (y x) e -> (b h e) 1 y x", y=height, x=width)
    radius = kernels.shape[-1] // 2
    sums = F.conv2d(grid, kernels.to(grid.dtype), padding=radius)  # ((b h e), c, y, x)
    return rearrange(sums, "(b h e) c y x -> b h (y x) c e", b=b, h=h, e=e)


def clipped_relative_attention(scores: Tensor, v: Tensor, height: int, width: int, kernels: Tensor) -> Tensor:
    """Linear-time clipped relative attention from per-query distance scores.

    scores (b, h, n, C + 1) positive weights ``s_c(i)`` of each query for each
    clipped distance; v (b, h, n, e) values, token 0 the class token. -> (b, h, n, e).
    """
    far = scores[..., -1:]  # (b, h, n, 1)
    near = scores[..., :-1] - far  # (b, h, n, C): the window's correction to the global term
    v1 = torch.cat((v.float(), torch.ones_like(v[..., :1], dtype=torch.float32)), dim=-1)
    out = far * v1.sum(dim=-2, keepdim=True)  # every token at the far weight, class token included
    window = torch.einsum("bhnc,bhnce->bhne", near[:, :, 1:], ring_sums(v1[:, :, 1:], height, width, kernels))
    out = torch.cat((out[:, :, :1], out[:, :, 1:] + window), dim=2)
    return out[..., :-1] / out[..., -1:].clamp_min(torch.finfo(out.dtype).tiny)


class ClippedRelativeAttention(SelfAttention):
    """Content heads (FAVOR+ over q, k) plus relative heads over clipped distances."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.content_heads = cfg.heads // 2
        relative_heads = cfg.heads - self.content_heads
        self.relative_keys = nn.Parameter(torch.randn(relative_heads, cfg.clipping_dist + 1, cfg.dim_head))
        self.register_buffer("ring_kernels", manhattan_ring_kernels(cfg.clipping_dist), persistent=False)

    def relative_scores(self, q: Tensor) -> Tensor:
        """(b, h, n, d) relative-head queries -> (b, h, n, C + 1) positive weights per distance."""
        if self.feature_map is None:
            logits = q.float() @ self.relative_keys.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
            return torch.exp(logits - logits.amax(dim=-1, keepdim=True).detach())
        q_features = self.feature_map(q, is_query=True)  # (b, h, n, m)
        r_features = self.feature_map(self.relative_keys, is_query=False)  # (h, c, m)
        return q_features @ r_features.transpose(-1, -2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        hc = self.content_heads
        relative = clipped_relative_attention(
            self.relative_scores(q[:, hc:]), v[:, hc:], ctx.height, ctx.width, self.ring_kernels
        )
        if hc == 0:
            return relative
        content = super().attend(q[:, :hc], k[:, :hc], v[:, :hc], ctx)
        return torch.cat((content.to(relative.dtype), relative), dim=1)
