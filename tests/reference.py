"""Straightforward (quadratic, loop-light, unoptimised) references for tests and benchmarks.

Shape legend: b - batch, h - heads, n - tokens (queries), j - tokens (keys),
d - head dim, m - random features, e - value dim, a - axes (y, x), s - scales,
C - clipping distance.

Everything here materialises the full (n, j) weight matrix on purpose: these are
the definitions that the linear-time code in ``relative_performer`` must match.
Nothing here is imported by the package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


# --------------------------------------------------------------------------- FAVOR+


def positive_random_features(x: Tensor, projection: Tensor) -> Tensor:
    """Unstabilised FAVOR+ features ``m**-0.5 exp(W x' - |x'|^2 / 2)``, ``x' = x d**-0.25``.

    x (..., n, d), projection (m, d) -> (..., n, m). ``E_W[phi(q) . phi(k)] = exp(q . k / sqrt(d))``.
    """
    d, m = x.shape[-1], projection.shape[0]
    x = x * d**-0.25
    return torch.exp(x @ projection.to(x.dtype).T - 0.5 * (x * x).sum(-1, keepdim=True)) * m**-0.5


def favor_kernel_estimate(q: Tensor, k: Tensor, projection: Tensor) -> Tensor:
    """(..., n, d), (..., j, d) -> (..., n, j) estimates of ``exp(q . k / sqrt(d))``."""
    return positive_random_features(q, projection) @ positive_random_features(k, projection).transpose(-1, -2)


def softmax_kernel(q: Tensor, k: Tensor) -> Tensor:
    """(..., n, d), (..., j, d) -> (..., n, j) exact ``exp(q . k / sqrt(d))``."""
    return torch.exp(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]))


def normalised_attention(weights: Tensor, v: Tensor) -> Tensor:
    """Row-normalise an explicit (..., n, j) matrix of positive weights and apply it to v (..., j, e)."""
    return (weights / weights.sum(-1, keepdim=True)) @ v


def quadratic_kernel_attention(q_features: Tensor, k_features: Tensor, v: Tensor) -> Tensor:
    """Kernelised attention via the explicit (n, j) matrix ``phi(Q) phi(K)^T``."""
    return normalised_attention(q_features @ k_features.transpose(-1, -2), v)


def exact_softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` written out as exp / row sum (no fused kernel)."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = torch.exp(logits - logits.amax(-1, keepdim=True))
    return normalised_attention(weights, v)


# --------------------------------------------------------------------------- strategy 1


def sinusoid_position_features(positions: Tensor, frequencies: Tensor) -> Tensor:
    """positions (n, a) real coordinates, frequencies (a, s) -> (n, a, s, 2) ``[sin(w p), cos(w p)]``."""
    angles = positions[:, :, None] * frequencies
    return torch.stack((angles.sin(), angles.cos()), dim=-1)


def relative_positional_logits(positions: Tensor, frequencies: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Closed form of strategy 1's positional logits.

    positions (n, a); frequencies (a, s); alpha, beta (h, a, s) or, per query token,
    (b, h, n, a, s). Returns (h, n, n) or (b, h, n, n):
    ``sum_{a,s} alpha cos(w (p_i - p_j)) + beta sin(w (p_i - p_j))``.
    """
    displacement = positions[:, None, :] - positions[None, :, :]  # (i, j, a)
    angles = displacement[..., None] * frequencies  # (i, j, a, s)
    if alpha.ndim == 3:
        return torch.einsum("has,ijas->hij", alpha, angles.cos()) + torch.einsum("has,ijas->hij", beta, angles.sin())
    return torch.einsum("bhias,ijas->bhij", alpha, angles.cos()) + torch.einsum("bhias,ijas->bhij", beta, angles.sin())


# --------------------------------------------------------------------------- strategy 2


def clipped_distances(height: int, width: int, clipping_dist: int) -> Tensor:
    """(n, n) long matrix ``c(i, j) = min(|dy| + |dx|, C)`` over 1 + height * width tokens.

    Token 0 is the class token, "far" (distance C) from every token, itself included.
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    manhattan = (ys[:, None] - ys[None, :]).abs() + (xs[:, None] - xs[None, :]).abs()
    n = 1 + height * width
    distances = torch.full((n, n), clipping_dist, dtype=torch.long)
    distances[1:, 1:] = manhattan.clamp(max=clipping_dist)
    return distances


def clipped_attention_from_scores(scores: Tensor, v: Tensor, height: int, width: int) -> Tensor:
    """Naive strategy 2 from per-query distance scores.

    scores (b, h, n, C + 1) positive ``s_c(i)``; v (b, h, n, e). Builds the full
    (b, h, n, n) weights ``W[i, j] = s_{c(i, j)}(i)`` and row-normalises.
    """
    clipping_dist = scores.shape[-1] - 1
    distances = clipped_distances(height, width, clipping_dist).to(scores.device)  # (n, n)
    n = distances.shape[0]
    index = distances.expand(*scores.shape[:-2], n, n)
    weights = torch.gather(scores, -1, index)  # (b, h, n, n)
    return normalised_attention(weights, v.to(weights.dtype))


def clipped_relative_attention_naive(
    q: Tensor, v: Tensor, relative_keys: Tensor, height: int, width: int, projection: Tensor | None = None
) -> Tensor:
    """Naive strategy 2 relative heads from queries and the relative key table.

    q (b, h, n, d), v (b, h, n, e), relative_keys (h, C + 1, d). With ``projection``
    (m, d) the weights are the FAVOR+ estimates ``phi(q_i) . phi(r[c(i, j)])``, else
    exactly ``exp(q_i . r[c(i, j)] / sqrt(d))``. The key of token j seen from i is
    gathered into a full (b, h, n, n, d) tensor first: the most literal reading.
    """
    distances = clipped_distances(height, width, relative_keys.shape[1] - 1).to(q.device)  # (n, n)
    keys = relative_keys[:, distances]  # (h, n, n, d): the key of j as seen from i
    if projection is None:
        weights = torch.exp(torch.einsum("bhid,hijd->bhij", q, keys.to(q.dtype)) / math.sqrt(q.shape[-1]))
    else:
        weights = torch.einsum(
            "bhim,hijm->bhij", positive_random_features(q, projection), positive_random_features(keys.to(q.dtype), projection)
        )
    return normalised_attention(weights, v.to(weights.dtype))


def clipped_module_forward_naive(module, x: Tensor, height: int, width: int) -> Tensor:
    """Naive forward of a ``ClippedRelativeAttention`` with its own weights (eval semantics).

    x (b, n, D) -> (b, n, D). Content heads: explicit kernel matrix; relative heads:
    :func:`clipped_relative_attention_naive`; same projection matrix in FAVOR+ mode.
    """
    b, n, _ = x.shape
    heads, hc = module.heads, module.content_heads
    qkv = module.to_qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (3, b, h, n, d)
    q, k, v = qkv[0], qkv[1], qkv[2]
    out = clipped_attend_naive(module, q, k, v, height, width)  # (b, h, n, d)
    return module.to_out(out.permute(0, 2, 1, 3).reshape(b, n, -1).to(x.dtype))


def clipped_attend_naive(module, q: Tensor, k: Tensor, v: Tensor, height: int, width: int) -> Tensor:
    """Naive ``ClippedRelativeAttention.attend``: content heads by the explicit kernel matrix,
    relative heads by :func:`clipped_relative_attention_naive`, with the module's own projection."""
    hc = module.content_heads
    projection = None if module.feature_map is None else module.feature_map.projection
    if projection is None:
        content = exact_softmax_attention(q[:, :hc], k[:, :hc], v[:, :hc])
    else:
        content = quadratic_kernel_attention(
            positive_random_features(q[:, :hc], projection), positive_random_features(k[:, :hc], projection), v[:, :hc]
        )
    relative = clipped_relative_attention_naive(q[:, hc:], v[:, hc:], module.relative_keys, height, width, projection)
    return torch.cat((content.to(relative.dtype), relative), dim=1)


def ring_sums_conv(values: Tensor, height: int, width: int, clipping_dist: int) -> Tensor:
    """Ring sums by a 2-D convolution with diamond-ring kernels (zero padding outside the image).

    values (b, h, n, e) over the n = height * width pixels -> (b, h, n, C, e): entry c sums
    the values of the pixels at Manhattan distance exactly c < C.
    """
    b, h, n, e = values.shape
    radius = clipping_dist - 1
    offsets = torch.arange(-radius, radius + 1)
    distance = offsets[:, None].abs() + offsets[None, :].abs()
    kernels = torch.stack([(distance == c) for c in range(clipping_dist)]).to(values.dtype)[:, None]  # (C, 1, K, K)
    grid = values.permute(0, 1, 3, 2).reshape(b * h * e, 1, height, width)
    sums = torch.nn.functional.conv2d(grid, kernels, padding=radius)  # (b h e, C, y, x)
    return sums.reshape(b, h, e, clipping_dist, n).permute(0, 1, 4, 3, 2)
