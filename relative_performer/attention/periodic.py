"""Exactly relative FAVOR+ attention: content features times a periodic relative factor.

Shape legend: b - batch, h - heads, n - tokens (class token first), a - axes (y, x),
s - harmonics per axis, p - position basis (1 + 4 s), m - random features,
d - head dim, e - value dim.

The attention weight between tokens i and j is

    w_ij = phi(q_i) . phi(k_j)  *  g_i(p_i - p_j)
    g_i(D) = a0 + sum_{a,s} rho_as cos(2 pi s D_a / side_a - theta_as)

``phi`` sees contents only and ``g`` sees the displacement only (and, with
``content_rel_attn``, the query's own content through rho and theta), so for
every draw of the random features the weight depends on the two contents and
their displacement alone. Unlike strategy 1, no random feature ever multiplies a
position. ``a0 = sum rho + softplus(c) > sum rho``, so ``g > 0`` and the weights
stay positive. Because ``g`` is a sum of sinusoids it factorises,
``g_i(p_i - p_j) = u_i . psi(p_j)`` with ``psi(p) = [1, sin, cos of the harmonics]``
and ``u_i`` its rotation by (rho, theta) (strategy 1's ``rotate``), so the weights
are a linear attention over the product features ``phi(q_i) (x) u_i`` and
``phi(k_j) (x) psi(p_j)``: O(n m p e), no n x n tensor.

The harmonics are integer multiples of 2 pi / side: positions live on a torus of
the image's size, and the model is exactly invariant to cyclic shifts (torch.roll),
hence to every shift that moves only empty rows or columns across the border.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from relative_performer.attention.favor import linear_attention
from relative_performer.models.blocks import AttentionContext, SelfAttention
from relative_performer.models.config import ModelConfig
from relative_performer.positional.constrained import rotate
from relative_performer.positional.sinusoid import AXES, grid_positions


def periodic_basis(height: int, width: int, harmonics: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(n, a, s, 2) ``[sin, cos](2 pi k p_a / side_a)`` for k = 1..harmonics, pixels row-major."""
    positions = grid_positions(height, width, device=device, dtype=torch.float64)
    sides = torch.tensor([height, width], device=device, dtype=torch.float64)
    k = torch.arange(1, harmonics + 1, device=device, dtype=torch.float64)
    angles = 2 * math.pi * (positions / sides)[:, :, None] * k  # (n, a, s)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).to(dtype)


class PeriodicRelativeAttention(SelfAttention):
    """FAVOR+ over contents, multiplied by an exact positive periodic relative factor.

    ``nb_features`` defaults to the head dim here (not ``d ln d``): the product
    features have ``m * (1 + 4 s)`` channels.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(replace(cfg, nb_features=cfg.nb_features or cfg.dim_head))
        shape = (cfg.heads, AXES, cfg.pos_scales)
        self.rho = nn.Parameter(torch.randn(shape) * 0.5)  # softplus -> amplitude of each harmonic
        self.theta = nn.Parameter(torch.rand(shape) * 2 * math.pi)  # phase of each harmonic
        self.floor = nn.Parameter(torch.zeros(cfg.heads))  # softplus -> margin of g above zero
        self.to_rho_theta = nn.Linear(cfg.dim, cfg.heads * AXES * cfg.pos_scales * 2) if cfg.content_rel_attn else None

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        q, k, v = self.project(x)
        basis = ctx.position_features  # (n, a, s, 2), zeros for the class token
        u = self.query_coefficients(basis, x)
        psi = torch.cat((torch.ones_like(basis[:, :1, 0, 0]), rearrange(basis, "n a s t -> n (a s t)")), dim=-1)
        return self.merge(self.attend_relative(q, k, v, u, psi), x)

    def query_coefficients(self, basis: Tensor, x: Tensor) -> Tensor:
        """u (b|1, h, n, p) with ``u_i . psi(p_j) = g_i(p_i - p_j)``; x (b, n, dim) the layer input."""
        rho, theta = self.rho[:, None], self.theta[:, None]  # (h, 1, a, s)
        if self.to_rho_theta is not None:
            extra = rearrange(self.to_rho_theta(x).float(), "b n (h a s t) -> t b h n a s", h=rho.shape[0], a=AXES, t=2)
            rho, theta = rho + extra[0], theta + extra[1]
        rho = F.softplus(rho)
        a0 = rho.sum(dim=(-1, -2)) + F.softplus(self.floor)[:, None]  # (..., h, n)
        rotated = rotate(basis, rho * torch.cos(theta), rho * torch.sin(theta))  # (..., h, n, a, s, 2)
        rotated = rearrange(rotated, "... a s t -> ... (a s t)")
        u = torch.cat((a0[..., None].expand(*rotated.shape[:-1], 1), rotated), dim=-1)
        return u if u.ndim == 4 else u[None]

    def attend_relative(self, q: Tensor, k: Tensor, v: Tensor, u: Tensor, psi: Tensor) -> Tensor:
        """q, k, v (b, h, n, d); u (b|1, h, n, p); psi (n, p) -> (b, h, n, d)."""
        if self.feature_map is None:
            # exact: softmax kernel times g, normalised (quadratic in n; the reference path)
            log_factor = (u @ psi.T).log()  # (b|1, h, n, n), g > 0
            return F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=log_factor.to(q.dtype))
        q_features = self.feature_map(q, is_query=True)  # (b, h, n, m)
        k_features = self.feature_map(k, is_query=False)
        q_product = rearrange(q_features[..., :, None] * u[..., None, :], "b h n m p -> b h n (m p)")
        k_product = rearrange(k_features[..., :, None] * psi[:, None, :], "b h n m p -> b h n (m p)")
        return linear_attention(q_product, k_product, v)
