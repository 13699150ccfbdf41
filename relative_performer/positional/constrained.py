"""Strategy 1 (paper section 3.1): rotation-constrained query projections.

Shape legend: b - batch, h - heads, n - tokens, a - axes, s - scales, d - head dim.

Keys get the position features ``[sin(w p_j), cos(w p_j)]`` unchanged; queries get
them multiplied, per head, axis and scale, by ``[[alpha, -beta], [beta, alpha]]``.
The positional part of ``q_i . k_j`` is then

    sum_{a,s} alpha cos(w (p_i - p_j)) + beta sin(w (p_i - p_j))

which depends on the displacement ``p_i - p_j`` only. The class token's position
features are zero, so it attends (and is attended to) by content only.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


def rotate(features: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Apply ``[[alpha, -beta], [beta, alpha]]`` to the (sin, cos) pairs of ``features``.

    features (..., a, s, 2); alpha, beta broadcastable to (..., a, s). Returns the
    query-side features ``q_pos`` with ``q_pos . [sin(w p_j), cos(w p_j)] =
    alpha cos(w (p_i - p_j)) + beta sin(w (p_i - p_j))``.
    """
    sin, cos = features.unbind(dim=-1)
    return torch.stack((alpha * sin - beta * cos, alpha * cos + beta * sin), dim=-1)


class ConstrainedRelativeProjection(nn.Module):
    """Widens one layer's queries and keys by the (rotated) position features.

    ``content_rel_attn`` adds a second block whose alpha, beta are predicted from
    the query token's content by a linear layer.
    """

    def __init__(self, dim: int, heads: int, scales: int, axes: int = 2, content_rel_attn: bool = False):
        super().__init__()
        self.alpha = nn.Parameter(torch.randn(heads, axes, scales))
        self.beta = nn.Parameter(torch.randn(heads, axes, scales))
        self.heads = heads
        self.block = axes * scales * 2
        self.to_alpha_beta = nn.Linear(dim, heads * axes * scales * 2) if content_rel_attn else None

    @property
    def extra_dim(self) -> int:
        """How many channels each head's queries and keys grow by."""
        return self.block * (2 if self.to_alpha_beta is not None else 1)

    def extras(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The channels that widen queries and keys: (b or 1, h, n, extra_dim) and (1, 1, n, extra_dim).

        x (b, n, dim) the layer input; positions (n, a, s, 2), zero for the class token. Without
        ``content_rel_attn`` both are shared by the batch (and the key block by the heads): broadcast
        them with :func:`widen`, which reads them without materialising copies.
        """
        n = positions.shape[0]
        q_extra = rearrange(rotate(positions, self.alpha[:, None], self.beta[:, None]), "h n a s t -> 1 h n (a s t)")
        k_extra = positions.reshape(1, 1, n, -1)
        if self.to_alpha_beta is not None:
            alpha, beta = rearrange(self.to_alpha_beta(x), "b n (h a s t) -> t b h n a s", h=self.heads, t=2,
                                    a=positions.shape[1])
            content = rearrange(rotate(positions, alpha, beta), "b h n a s t -> b h n (a s t)")
            q_extra = torch.cat((q_extra.expand(content.shape[0], -1, -1, -1).to(content.dtype), content), dim=-1)
            k_extra = torch.cat((k_extra, k_extra), dim=-1)
        return q_extra, k_extra

    def forward(self, q: Tensor, k: Tensor, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """q, k (b, h, n, d) widened to (b, h, n, d + extra_dim); x, positions as in :meth:`extras`."""
        return widen(q, k, *self.extras(x, positions))


def widen(q: Tensor, k: Tensor, q_extra: Tensor, k_extra: Tensor) -> tuple[Tensor, Tensor]:
    """q, k (b, h, n, d) and extras broadcastable to (b, h, n, e) -> (b, h, n, d + e) each, in q's and k's dtypes."""
    q = torch.cat((q, q_extra.to(q.dtype).expand(*q.shape[:-1], -1)), dim=-1)
    k = torch.cat((k, k_extra.to(k.dtype).expand(*k.shape[:-1], -1)), dim=-1)
    return q, k
