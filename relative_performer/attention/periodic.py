"""Exactly relative FAVOR+ attention: content features times a positive periodic relative factor.

Shape legend: b - batch, h - heads, n - tokens (class token first), a - axes (y, x),
s - harmonics per axis, k - coefficients per axis (s + 1), p - per-axis position
basis (1 + 2 s), m - random features, d - head dim, e - value dim (+1 for the normaliser).

The attention weight between tokens i and j is

    w_ij = phi(q_i) . phi(k_j)  *  g_i(p_i - p_j),        g_i(D) = g_iy(D_y) * g_ix(D_x)

with one factor per axis a (side_a the image's height or width, omega_a = 2 pi / side_a)

    g_ia(t) = |P_ia(t)|^2 + eps_a,    P_ia(t) = sum_{k=0..s} c_iak exp(i k omega_a t),

complex coefficients ``c`` (learned per head and axis; with ``content_rel_attn``
plus a linear function of the query token's content, zero at initialisation),
``s = pos_scales`` and the margin
``eps_a = (softplus(floor_a) + 1e-4) r_0a + 1e-6`` relative to the mean ``r_0a = sum_k |c_iak|^2``
of ``|P_ia|^2`` (the scale of g cancels in the normalised attention; a relative margin
keeps g well above the rounding error of its factorised evaluation in float32). ``phi`` sees contents only
and ``g`` sees the displacement only (and the query's own content), so for every
draw of the random features the weight depends on the two contents and their
displacement alone: no random feature ever multiplies a position.

Positivity, by construction: ``|P|^2 >= 0`` and ``eps >= 1e-6 > 0``, so each factor and
their product are > 0 for every displacement and every parameter value, and the
weights stay positive. By the Fejer-Riesz theorem every nonnegative trigonometric
polynomial of degree s in one variable is some ``|P|^2``, so the per-axis factor
can be any of them plus eps; in particular it can be sharply local. (The former
parametrisation ``a0 + sum rho cos(..)`` with ``a0 >= sum rho`` bounded the peak
of g by twice its mean, i.e. it could hardly prefer nearby pixels, and learned slowly.)
At initialisation all ``c_ak ~ 1`` (plus small noise), so ``|P|^2`` is the Fejer
kernel of order s + 1: a bump at D = 0 of half-width ``side / (s + 1)``, peak
``(s + 1) r_0``, and ``eps ~ 0.7 r_0 / (s + 1)`` far from it.

Factorisation: expanding the square, ``|P(t)|^2 = r_0 + 2 sum_{f=1..s} Re(r_f
exp(i f omega t))`` with the autocorrelation ``r_f = sum_l c_{l+f} conj(c_l)``,
i.e. harmonics f = 1..s of the image's side (periods side/1 .. side/s). Hence
``g_ia(p_ia - p_ja) = u_ia . psi_a(p_ja)`` with ``psi_a(t) = [1, (sin, cos)(f omega_a t)]``
and ``u_ia = [r_0 + eps, rotate(psi_a(p_ia), 2 Re r, -2 Im r)]`` (strategy 1's
``rotate``), and ``g_i(p_i - p_j) = (u_iy (x) u_ix) . (psi_y(p_j) (x) psi_x(p_j))``.
The weights are a linear attention over the product features ``phi(q_i) (x) u_i``
and ``phi(k_j) (x) psi(p_j)`` (m (1 + 2 s)^2 channels), never an n x n tensor.
Without ``content_rel_attn`` u_i depends on the pixel's row and column only, and
the sums over keys and queries are taken one axis at a time (:func:`separable_attention`):
O(n m e (1 + 2 s)) instead of O(n m e (1 + 2 s)^2).

The class token has zero position features (``psi = [1, 0, ..]`` per axis), so it
attends to, and is attended by, every token with the constant ``prod_a (r_0a + eps_a)``,
the mean of g over all displacements.

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

from relative_performer.attention import compiled
from relative_performer.attention.favor import KERNELS_UP_TO_SCALE, autocast_off, normalise, with_ones
from relative_performer.models.blocks import AttentionContext, SelfAttention
from relative_performer.models.config import ModelConfig
from relative_performer.positional.constrained import rotate
from relative_performer.positional.sinusoid import AXES, grid_positions

RELATIVE_MARGIN = 1e-4  # eps_a >= RELATIVE_MARGIN * r_0a + ABSOLUTE_MARGIN
ABSOLUTE_MARGIN = 1e-6


def periodic_basis(height: int, width: int, harmonics: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(n, a, s, 2) ``[sin, cos](2 pi f p_a / side_a)`` for f = 1..harmonics, pixels row-major."""
    positions = grid_positions(height, width, device=device, dtype=torch.float64)
    sides = torch.tensor([height, width], device=device, dtype=torch.float64)
    f = torch.arange(1, harmonics + 1, device=device, dtype=torch.float64)
    angles = 2 * math.pi * (positions / sides)[:, :, None] * f  # (n, a, s)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).to(dtype)


def autocorrelation(c: Tensor) -> tuple[Tensor, Tensor]:
    """c (..., k, 2) complex coefficients (real, imag) -> ``r_0`` (...) and ``r_f`` (..., k - 1, 2), f = 1..k-1.

    ``r_f = sum_l c_{l+f} conj(c_l)``, so that ``|sum_k c_k e^{ikx}|^2 = r_0 + 2 sum_f Re(r_f e^{ifx})``.
    """
    cr, ci = c.unbind(-1)
    count = c.shape[-2]
    r0 = (cr * cr + ci * ci).sum(-1)
    re, im = [], []
    for f in range(1, count):
        ar, ai, br, bi = cr[..., f:], ci[..., f:], cr[..., : count - f], ci[..., : count - f]
        re.append((ar * br + ai * bi).sum(-1))
        im.append((ai * br - ar * bi).sum(-1))
    if not re:
        return r0, c.new_zeros(c.shape[:-2] + (0, 2))
    return r0, torch.stack((torch.stack(re, -1), torch.stack(im, -1)), -1)


def axis_basis(basis: Tensor) -> Tensor:
    """(n, a, s, 2) position features -> (n, a, p) per-axis key basis ``psi_a = [1, (sin, cos) ...]``."""
    return torch.cat((torch.ones_like(basis[:, :, :1, 0]), rearrange(basis, "n a s t -> n a (s t)")), dim=-1)


def outer_axes(per_axis: Tensor) -> Tensor:
    """(..., a=2, p) -> (..., p * p): the product over the two axes, y major."""
    return rearrange(per_axis[..., 0, :, None] * per_axis[..., 1, None, :], "... p q -> ... (p q)")


def separable_attention(
    q: Tensor, k: Tensor, v: Tensor, u: Tensor, psi: Tensor, projection: Tensor, kernel: str, height: int, width: int
) -> Tensor:
    """Exactly relative FAVOR+ attention for u shared by the batch, summing one axis at a time.

    q, k, v (b, h, n, d); the random features are ``KERNELS_UP_TO_SCALE[kernel]`` of ``projection``;
    u (h, n, a, p), psi (n, a, p); token 0 the class token, then the pixels row-major,
    so u and psi of a pixel are those of its row (axis y) and its column (axis x).
    Keys: ``S[p, q] = sum_yx psi_y[y, p] psi_x[x, q] phi(k_yx) (x) v1_yx`` (m x e each),
    summed over x by a matmul of ``psi_x (x) phi(k)`` (n x q m) with v1, then over y.
    Queries: ``R[p, x] = sum_q u_x[x, q] S[p, q]``, then ``out_yx = sum_{p, m}
    (u_y[y, p] phi(q_yx)_m) R[p, x, m, :]``, a matmul per column. No tensor has more
    than n * max(p, q) * m entries per head: the per-token outer product phi(k) (x) v1
    (n * m * e, e = head dim + 1) is never formed.
    """
    features = KERNELS_UP_TO_SCALE[kernel]
    q_features = features(q, projection, is_query=True)  # (b, h, n, m)
    k_features = features(k, projection, is_query=False)
    dtype = torch.promote_types(q_features.dtype, u.dtype)
    u, psi = u.to(dtype), psi.to(dtype)
    rows = slice(1, None, width)  # the first pixel of every row
    psi_y, psi_x = psi[rows, 0], psi[1 : 1 + width, 1]  # (y, p), (x, q)
    u_y, u_x = u[:, rows, 0], u[:, 1 : 1 + width, 1]  # (h, y, p), (h, x, q)
    with autocast_off(q.device):
        q_features, k_features, v = q_features.to(dtype), k_features.to(dtype), v.to(dtype)
        b, h, _, m = k_features.shape
        v1 = with_ones(v)  # (b, h, n, e)
        e = v1.shape[-1]
        p_count, q_count = psi_y.shape[1], psi_x.shape[1]
        keys = k_features[:, :, 1:].reshape(b, h, height, width, 1, m) * psi_x[:, :, None]  # (b, h, y, x, q, m)
        keys = keys.reshape(b, h, height, width, q_count * m).transpose(-1, -2)
        rows_summed = torch.matmul(keys, v1[:, :, 1:].reshape(b, h, height, width, e))  # (b, h, y, q m, e)
        context = torch.matmul(psi_y.T, rows_summed.reshape(b, h, height, q_count * m * e))
        context = context.view(b, h, p_count, q_count, m * e)
        # the class token's psi is e_0 (x) e_0: its key-value adds to the constant-constant entry
        corner = torch.zeros(p_count, q_count, 1, dtype=dtype, device=context.device)
        corner[0, 0] = 1.0
        class_kv = (k_features[:, :, 0, :, None] * v1[:, :, 0, None, :]).reshape(b, h, 1, 1, m * e)
        context = context + corner * class_kv
        per_column = torch.matmul(u_x[None, :, None], context)  # (b, h, p, x, m e)
        per_column = rearrange(per_column, "b h p x (m e) -> b h x (p m) e", m=m)
        queries = rearrange(q_features[:, :, 1:], "b h (y x) m -> b h x y m", y=height)
        queries = rearrange(queries[..., None, :] * u_y[None, :, None, :, :, None], "b h x y p m -> b h x y (p m)")
        pixels_out = rearrange(torch.matmul(queries, per_column), "b h x y e -> b h (y x) e")
        class_context = (u[:, 0, 0, 0] * u[:, 0, 1, 0])[:, None] * context[:, :, 0, 0]  # (b, h, m e)
        class_out = (q_features[:, :, :1, :, None] * class_context.view(b, h, 1, m, e)).sum(-2)
        return normalise(torch.cat((class_out, pixels_out), dim=2))


class PeriodicRelativeAttention(SelfAttention):
    """FAVOR+ over contents, multiplied by an exact positive periodic relative factor.

    ``nb_features`` defaults to the head dim here (not ``d ln d``): the product
    features have ``m * (1 + 2 s)^2`` channels.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(replace(cfg, nb_features=cfg.nb_features or cfg.dim_head))
        coefficients = torch.zeros(cfg.heads, AXES, cfg.pos_scales + 1, 2)
        coefficients[..., 0] = 1.0  # all c_k = 1: the Fejer kernel, a bump at D = 0
        self.coefficients = nn.Parameter(coefficients + 0.1 * torch.randn_like(coefficients))
        # softplus(floor) r_0 + .. = eps_a, the margin of g_a above zero; starts at 0.7 r_0 / (s + 1)
        self.floor = nn.Parameter(torch.full((cfg.heads, AXES), math.log(math.expm1(0.7 / (cfg.pos_scales + 1)))))
        self.to_coefficients = (
            nn.Linear(cfg.dim, cfg.heads * AXES * (cfg.pos_scales + 1) * 2) if cfg.content_rel_attn else None
        )
        if self.to_coefficients is not None:  # start from the content-free kernel
            nn.init.zeros_(self.to_coefficients.weight)
            nn.init.zeros_(self.to_coefficients.bias)

    def attend_qkv(self, qkv: Tensor, x: Tensor, ctx: AttentionContext) -> Tensor:
        """(b, n, 3 dim) projected queries, keys and values -> (b, h, n, d); x (b, n, dim) the layer input."""
        q, k, v = self.split(qkv)
        basis = ctx.position_features  # (n, a, s, 2), zeros for the class token
        u = self.query_coefficients(basis, x)  # (b|1, h, n, a, p)
        psi = axis_basis(basis)  # (n, a, p)
        if self.feature_map is not None and self.to_coefficients is None:
            return self.attend_separable(q, k, v, u[0], psi, ctx.height, ctx.width)
        return self.attend_relative(q, k, v, outer_axes(u), outer_axes(psi))

    def query_coefficients(self, basis: Tensor, x: Tensor) -> Tensor:
        """u (b|1, h, n, a, p) with ``u_ia . psi_a(p_j) = g_ia(p_ia - p_ja)``; x (b, n, dim) the layer input."""
        dtype = torch.promote_types(basis.dtype, torch.float32)
        c = self.coefficients[:, None].to(dtype)  # (h, 1, a, k, 2)
        if self.to_coefficients is not None:
            extra = self.to_coefficients(x).to(dtype)
            c = c + rearrange(extra, "b n (h a k t) -> b h n a k t", h=c.shape[0], a=AXES, t=2)
        r0, r = autocorrelation(c)  # (..., h, n|1, a), (..., h, n|1, a, s, 2)
        rotated = rotate(basis.to(dtype), 2 * r[..., 0], -2 * r[..., 1])  # (..., h, n, a, s, 2)
        rotated = rearrange(rotated, "... a s t -> ... a (s t)")
        eps = (F.softplus(self.floor.to(dtype))[:, None] + RELATIVE_MARGIN) * r0 + ABSOLUTE_MARGIN
        a0 = r0 + eps  # (..., h, n|1, a): the mean of g_ia over displacements
        u = torch.cat((a0[..., None].expand(*rotated.shape[:-1], 1), rotated), dim=-1)
        return u if u.ndim == 5 else u[None]

    def attend_relative(self, q: Tensor, k: Tensor, v: Tensor, u: Tensor, psi: Tensor) -> Tensor:
        """q, k, v (b, h, n, d); u (b|1, h, n, P); psi (n, P) with ``g_i(p_i - p_j) = u_i . psi_j`` -> (b, h, n, d)."""
        if self.feature_map is None:
            # exact: softmax kernel times g, normalised (quadratic in n; the reference path)
            log_factor = (u @ psi.T.to(u.dtype)).log()  # (b|1, h, n, n), g > 0
            return F.scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=log_factor.to(q.dtype))
        q_features = self.feature_map.up_to_scale(q, is_query=True)  # (b, h, n, m)
        k_features = self.feature_map.up_to_scale(k, is_query=False)
        dtype = torch.promote_types(q_features.dtype, u.dtype)
        with autocast_off(q.device):
            kv = self.key_values(k_features.to(dtype), v.to(dtype))  # (b, h, n, m, e)
            context = torch.einsum("jP,bhjme->bhPme", psi.to(dtype), kv)  # (b, h, P, m, e)
            y = torch.einsum("bhiP,bhPme->bhime", u.to(dtype), context)  # (b, h, n, m, e)
            return self.read_out(q_features.to(dtype), y)

    def attend_separable(
        self, q: Tensor, k: Tensor, v: Tensor, u: Tensor, psi: Tensor, height: int, width: int
    ) -> Tensor:
        """As :meth:`attend_relative` for u shared by the batch: :func:`separable_attention` of this
        layer's random features (``torch.compile``'d where :mod:`relative_performer.attention.compiled`
        applies: CPU training)."""
        args = (q, k, v, u, psi, self.feature_map.projection, self.feature_map.kernel, height, width)
        if compiled.applies(q):
            out = compiled.call(separable_attention, *args)
            if out is not None:
                return out
        return separable_attention(*args)

    @staticmethod
    def key_values(k_features: Tensor, v: Tensor) -> Tensor:
        """(b, h, n, m), (b, h, n, d) -> (b, h, n, m, d + 1): ``phi(k_j) (x) [v_j, 1]``."""
        return k_features[..., :, None] * with_ones(v)[..., None, :]

    @staticmethod
    def read_out(q_features: Tensor, y: Tensor) -> Tensor:
        """q_features (b, h, n, m), y (b, h, n, m, d + 1) -> normalised output (b, h, n, d)."""
        return normalise((q_features[..., None] * y).sum(-2))  # m and e are too small for a fast matmul
