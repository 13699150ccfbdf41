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

Computed without the convolution: summed by parts, the window is
``sum_{c<C} (s_c(i) - s_{c+1}(i)) D_c(v)_i`` over the diamond sums
``D_c = R_0 + ... + R_c``, and every diamond is a square in coordinates rotated by
45 degrees, so four lookups in one table of 2-D prefix sums give it (O(C) work per
pixel instead of O(C^3) convolution taps; see "diamond sums" below). The
convolution stays the reference in the tests.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from relative_performer.attention.favor import autocast_off, normalise, with_ones
from relative_performer.models.blocks import AttentionContext, SelfAttention
from relative_performer.models.config import ModelConfig


def manhattan_ring_kernels(clipping_dist: int) -> Tensor:
    """(C, 1, K, K) kernels, K = 2C - 1: kernel c is 1 where |dy| + |dx| == c.

    The straightforward definition of the ring sums (a 2-D convolution, kept as the
    reference in the tests); :func:`ring_sums` computes the same sums faster.
    """
    radius = clipping_dist - 1
    offsets = torch.arange(-radius, radius + 1)
    distance = offsets[:, None].abs() + offsets[None, :].abs()
    rings = torch.stack([(distance == c) for c in range(clipping_dist)]).float()
    return rings[:, None]


# --------------------------------------------------------------------------- diamond sums
#
# The diamond |dy| + |dx| <= c around a pixel is the square max(|du|, |dw|) <= c in the
# rotated coordinates u = y + x, w = y - x. With the 2-D prefix sums S of the values
# scattered onto the rotated grid (zero where no pixel), every diamond sum is
# S[u+c+1, w+c+1] - S[u-c, w+c+1] - S[u+c+1, w-c] + S[u-c, w-c]: O(1) per pixel and
# distance instead of a (2C - 1)^2 convolution. As c grows, the four corners move in
# straight lines (along y for the first two, along x for the last two), so each corner
# is read once into an array that every c then slices with a shift.
#
# Layout: channels last, (B, rows, cols, e): gathers and shifted slices then move whole
# rows of e values.


@functools.lru_cache(maxsize=64)
def _diamond_layout(height: int, width: int, clipping_dist: int, device: torch.device) -> tuple[int, Tensor, Tensor]:
    """Flat positions in the (side x side) prefix-sum grid, side = height + width.

    Returns ``(side, pixels, corners)``: ``pixels`` (n,) where pixel (y, x) is scattered
    (at ``(u + 1, w + 1)``, u = y + x, w = y - x + width - 1, leaving row and column 0 of
    the prefix sums zero); ``corners`` the four corner arrays, concatenated:
    ``top[Y, x]`` = S[Y + x + 1, Y - x + width] for Y = y + c in [0, height + C - 1),
    ``bottom[Y, x]`` = S[Y + x, Y - x + width - 1] for Y = y - c in (-C, height),
    ``left[y, X]`` = S[y + X, y - X + width] for X = x - c in (-C, width),
    ``right[y, X]`` = S[y + X + 1, y - X + width - 1] for X = x + c in [0, width + C - 1).
    Indices past the grid are clamped: S is constant beyond the last row and column.
    """
    last = height + width - 1
    side = last + 1
    C = clipping_dist
    y, x = torch.arange(height)[:, None], torch.arange(width)[None, :]

    def at(i: Tensor, j: Tensor) -> Tensor:
        return (i.clamp(0, last) * side + j.clamp(0, last)).reshape(-1)

    pixels = at(y + x + 1, y - x + width)
    rows_down, rows_up = torch.arange(height + C - 1)[:, None], torch.arange(-(C - 1), height)[:, None]
    cols_left, cols_right = torch.arange(-(C - 1), width)[None, :], torch.arange(width + C - 1)[None, :]
    corners = torch.cat((
        at(rows_down + x + 1, rows_down - x + width),  # top
        at(rows_up + x, rows_up - x + width - 1),  # bottom
        at(y + cols_left, y - cols_left + width),  # left
        at(y + cols_right + 1, y - cols_right + width - 1),  # right
    ))
    return side, pixels.to(device), corners.to(device)


def _corner_views(flat: Tensor, height: int, width: int, clipping_dist: int) -> tuple[Tensor, ...]:
    """Split (B, corners, e) into top, bottom (B, height + C - 1, width, e), left, right (B, height, width + C - 1, e)."""
    B, _, e = flat.shape
    C = clipping_dist
    vertical, horizontal = (height + C - 1) * width, height * (width + C - 1)
    top, bottom, left, right = flat.split((vertical, vertical, horizontal, horizontal), dim=1)
    return (top.view(B, height + C - 1, width, e), bottom.view(B, height + C - 1, width, e),
            left.view(B, height, width + C - 1, e), right.view(B, height, width + C - 1, e))


# torch runs a CPU elementwise op on the calling thread below this many elements (its grain size)
_SERIAL_ELEMENTS = 32768


def _prefix_sums_(grid: Tensor) -> Tensor:
    """2-D prefix sums over dims 1 and 2 of (B, side, side, e); in place on the CPU.

    On the CPU, row-by-row in-place additions are ~5x faster than ``torch.cumsum`` over
    a dim that is not the innermost. They are run on batch chunks small enough for each
    addition to stay on the calling thread: a few hundred tiny parallel regions would
    each wait for the slowest thread, which on a busy machine costs far more than the
    second core gains. Elsewhere, ``cumsum``.
    """
    if grid.device.type != "cpu":
        return grid.cumsum(1).cumsum(2)
    B, side, _, e = grid.shape
    chunk = max(1, _SERIAL_ELEMENTS // (side * e))
    for part in grid.split(chunk):
        for i in range(1, side):
            part[:, i] += part[:, i - 1]
        for j in range(1, side):
            part[:, :, j] += part[:, :, j - 1]
    return grid


def _corner_sums(values: Tensor, height: int, width: int, clipping_dist: int) -> Tensor:
    """values (B, height * width, e) -> (B, corners, e) prefix sums at the corners (no autograd)."""
    B, _, e = values.shape
    side, pixels, corners = _diamond_layout(height, width, clipping_dist, values.device)
    grid = values.new_zeros(B, side * side, e).index_copy_(1, pixels, values)
    prefix = _prefix_sums_(grid.view(B, side, side, e)).reshape(B, side * side, e)
    return prefix.index_select(1, corners)


def _corner_sums_adjoint(grad_corners: Tensor, height: int, width: int, clipping_dist: int) -> Tensor:
    """Adjoint of :func:`_corner_sums`: (B, corners, e) gradients -> (B, height * width, e).

    Scatter-add, suffix sums, gather. The suffix sums are prefix sums of the grid read
    backwards, so scatter and gather use the mirrored positions ``side**2 - 1 - p``.
    """
    B, _, e = grad_corners.shape
    side, pixels, corners = _diamond_layout(height, width, clipping_dist, grad_corners.device)
    last = side * side - 1
    grid = grad_corners.new_zeros(B, side * side, e).index_add_(1, last - corners, grad_corners)
    suffix = _prefix_sums_(grid.view(B, side, side, e)).reshape(B, side * side, e)
    return suffix.index_select(1, last - pixels)


class _CornerSums(torch.autograd.Function):
    """:func:`_corner_sums` with its adjoint as the backward."""

    @staticmethod
    def forward(ctx, values: Tensor, height: int, width: int, clipping_dist: int) -> Tensor:
        ctx.sizes = (height, width, clipping_dist)
        return _corner_sums(values, height, width, clipping_dist)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _corner_sums_adjoint(grad.contiguous(), *ctx.sizes), None, None, None


def _corner_windows(c: int, height: int, width: int, clipping_dist: int) -> tuple[tuple[slice, ...], ...]:
    """Index of the slices of top, bottom, left, right that :func:`_diamond` reads for distance c."""
    shift = clipping_dist - 1 - c
    every = slice(None)
    return ((every, slice(c, c + height)), (every, slice(shift, shift + height)),
            (every, every, slice(shift, shift + width)), (every, every, slice(c, c + width)))


def _diamond(corners: tuple[Tensor, ...], c: int, height: int, width: int, clipping_dist: int) -> Tensor:
    """(B, height, width, e) sums over |dy| + |dx| <= c from the corner arrays."""
    top, bottom, left, right = (corner[window] for corner, window in
                                zip(corners, _corner_windows(c, height, width, clipping_dist)))
    return top + bottom - left - right


@functools.lru_cache(maxsize=64)
def _diamond_counts(height: int, width: int, clipping_dist: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(height, width, C) number of pixels of the image within distance c of each pixel (exact integers)."""
    ones = torch.ones(1, height * width, 1, dtype=torch.float64, device=device)
    corners = _corner_views(_corner_sums(ones, height, width, clipping_dist), height, width, clipping_dist)
    counts = [_diamond(corners, c, height, width, clipping_dist)[0, ..., 0] for c in range(clipping_dist)]
    return torch.stack(counts, dim=-1).to(dtype)


class _WindowSums(torch.autograd.Function):
    """``sum_c weights[..., c] * D_c(values)`` over the diamond sums D_c, c < C, with a hand-written backward.

    values (B, height * width, e), weights (B, height, width, C) -> (B, height, width, e).
    Each diamond sum is a difference of large prefix sums; to keep float32 cancellation
    down to what the convolution had, the prefix sums are taken of the values minus their
    mean over the image, and the mean comes back exactly as ``mean * count_c`` with the
    (integer) pixel counts of the diamonds. The backward accumulates one gradient per
    corner array (autograd through 4 C slices would allocate a full-size zero gradient
    for each), recomputes the diamonds instead of storing C of them, and runs the prefix
    sums' adjoint without flips.
    """

    @staticmethod
    def forward(ctx, values: Tensor, weights: Tensor, height: int, width: int) -> Tensor:
        C = weights.shape[-1]
        mean = values.mean(dim=1, keepdim=True)  # (B, 1, e)
        corners = _corner_views(_corner_sums(values - mean, height, width, C), height, width, C)
        counts = _diamond_counts(height, width, C, values.device, values.dtype)  # (height, width, C)
        out = mean[:, :, None] * (weights * counts).sum(dim=-1, keepdim=True)  # (B, height, width, e)
        for c in range(C):
            weight = weights[..., c : c + 1]
            for corner, window, sign in zip(corners, _corner_windows(c, height, width, C), (1, 1, -1, -1)):
                out.addcmul_(corner[window], weight, value=sign)
        ctx.save_for_backward(weights, mean, *corners)
        ctx.sizes = (height, width)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        weights, mean, *corners = ctx.saved_tensors
        height, width = ctx.sizes
        C = weights.shape[-1]
        grad_values = grad_weights = None
        if ctx.needs_input_grad[1]:
            counts = _diamond_counts(height, width, C, grad.device, grad.dtype)
            grad_weights = torch.linalg.vecdot(grad, mean[:, :, None]).unsqueeze(-1) * counts  # the mean's part
            for c in range(C):
                grad_weights[..., c] += torch.linalg.vecdot(_diamond(corners, c, height, width, C), grad)
        if ctx.needs_input_grad[0]:
            B, e = grad.shape[0], grad.shape[-1]
            flat = grad.new_zeros(B, sum(t.shape[1] * t.shape[2] for t in corners), e)
            grad_corners = _corner_views(flat, height, width, C)
            for c in range(C):
                weighted = grad * weights[..., c : c + 1]
                for g, window, sign in zip(grad_corners, _corner_windows(c, height, width, C), (1, 1, -1, -1)):
                    g[window].add_(weighted, alpha=sign)
            grad_values = _corner_sums_adjoint(flat, height, width, C)  # the map is linear: centring drops out
        return grad_values, grad_weights, None, None


def ring_sums(values: Tensor, height: int, width: int, kernels: Tensor) -> Tensor:
    """Sum of values over the pixels at each Manhattan distance c < C, zero outside the image.

    values (b, h, n, e) over the n = height * width pixels -> (b, h, n, c, e); C is
    ``kernels.shape[0]`` (:func:`manhattan_ring_kernels`, whose convolution is the
    reference). Computed as differences of diamond sums (see :func:`_diamond_layout`).
    """
    b, h, n, e = values.shape
    C = kernels.shape[0]
    corners = _corner_views(_CornerSums.apply(values.reshape(b * h, n, e), height, width, C), height, width, C)
    diamonds = [_diamond(corners, c, height, width, C) for c in range(C)]
    rings = [diamonds[0]] + [outer - inner for inner, outer in zip(diamonds, diamonds[1:])]
    return torch.stack(rings, dim=-2).reshape(b, h, n, C, e)


def clipped_relative_attention(scores: Tensor, v: Tensor, height: int, width: int, kernels: Tensor) -> Tensor:
    """Linear-time clipped relative attention from per-query distance scores.

    scores (b, h, n, C + 1) positive weights ``s_c(i)`` of each query for each
    clipped distance; v (b, h, n, e) values, token 0 the class token. -> (b, h, n, e).

    The window term ``sum_{c<C} (s_c - s_C) R_c`` over ring sums R_c is summed by parts
    into ``sum_{c<C} (s_c - s_{c+1}) D_c`` over diamond sums ``D_c = R_0 + ... + R_c``,
    which cost O(1) per pixel each. ``kernels`` is kept for the signature (C is
    ``scores.shape[-1] - 1``).
    """
    del kernels
    b, h, n, _ = v.shape
    dtype = torch.promote_types(scores.dtype, torch.float32)  # half -> float32; float64 stays
    scores = scores.to(dtype)
    with autocast_off(v.device):
        v1 = with_ones(v, dtype)  # (b, h, n, e + 1)
        e1 = v1.shape[-1]
        out = scores[..., -1:] * v1.sum(dim=-2, keepdim=True)  # every token at the far weight, class token included
        steps = (scores[:, :, 1:, :-1] - scores[:, :, 1:, 1:]).reshape(b * h, height, width, -1)  # s_c - s_{c+1}
        window = _WindowSums.apply(v1[:, :, 1:].reshape(b * h, n - 1, e1), steps, height, width)
        out = torch.cat((out[:, :, :1], out[:, :, 1:] + window.reshape(b, h, n - 1, e1)), dim=2)
    return normalise(out)


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
            q = q.to(torch.promote_types(q.dtype, torch.float32))
            logits = q @ self.relative_keys.to(q.dtype).transpose(-1, -2) / math.sqrt(q.shape[-1])
            return torch.exp(logits - logits.amax(dim=-1, keepdim=True).detach())
        # features up to a factor per query row and one per head: both cancel in the normalised output
        q_features = self.feature_map.up_to_scale(q, is_query=True)  # (b, h, n, m)
        r_features = self.feature_map.up_to_scale(self.relative_keys, is_query=False)  # (h, c, m)
        with autocast_off(q.device):
            return q_features @ r_features.to(q_features.dtype).transpose(-1, -2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        hc = self.content_heads
        relative = clipped_relative_attention(
            self.relative_scores(q[:, hc:]), v[:, hc:], ctx.height, ctx.width, self.ring_kernels
        )
        if hc == 0:
            return relative
        content = super().attend(q[:, :hc], k[:, :hc], v[:, :hc], ctx)
        return torch.cat((content.to(relative.dtype), relative), dim=1)
