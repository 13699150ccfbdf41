"""ExactRelativePerformer: exactly relative for every random-feature draw.

Float64, random weights, one fixed feature draw per test. The fast (linear-cost)
paths are checked against a naive quadratic implementation that materialises
``w_ij = phi(q_i) . phi(k_j) * g_i(p_i - p_j)`` with g evaluated from its
definition ``prod_a |sum_k c_k exp(i k 2 pi D_a / side_a)|^2 + eps_a``.
"""

from __future__ import annotations

import math

import pytest
import torch

from relative_performer.attention.favor import softmax_features
from relative_performer.attention.periodic import (
    ABSOLUTE_MARGIN,
    RELATIVE_MARGIN,
    PeriodicRelativeAttention,
    axis_basis,
    outer_axes,
    periodic_basis,
)
from relative_performer.models import create_model
from relative_performer.models.blocks import AttentionContext
from relative_performer.models.config import ModelConfig
from relative_performer.positional.sinusoid import grid_positions

F64 = torch.float64
H, W = 12, 10  # non-square on purpose


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random (not initial) values for the periodic factor's parameters: nothing is accidentally symmetric."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("coefficients", "floor")) or "to_coefficients" in name:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * (0.3 if "to_" in name else 1.0))


def model64(name="ExactRelativePerformer", **overrides):
    torch.manual_seed(0)
    cfg = dict(model=name, dim=32, depth=2, heads=4, attn_dropout=0.0, ff_dropout=0.0, pos_scales=3, **overrides)
    model = create_model(**cfg).double().eval()
    randomise(model)
    return model


def empty_margin_images(batch=3, margin=3, seed=0):
    """Random content in the middle, exact zeros in a band of ``margin`` rows/columns at every border."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, 1, H, W, dtype=F64)
    x[:, :, margin:-margin, margin:-margin] = torch.rand(batch, 1, H - 2 * margin, W - 2 * margin, generator=generator,
                                                       dtype=F64)
    return x


def zero_filled_shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate the content by (dy, dx) pixels, filling with zeros (nothing wraps around)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        x[..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def pixel_tokens(model, x):
    """(b, H, W, D) final states of the pixel tokens."""
    return model.tokens(x)[:, 1:].reshape(x.shape[0], x.shape[-2], x.shape[-1], -1)


SHIFTS = [(1, 0), (0, 1), (-2, 3), (3, -3), (H // 2, W // 3)]


@pytest.mark.parametrize("content_rel_attn", [False, True])
def test_class_logits_invariant_under_cyclic_shifts(content_rel_attn):
    model = model64(content_rel_attn=content_rel_attn)
    x = torch.rand(4, 1, H, W, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        reference = model(x)
        for dy, dx in SHIFTS:
            moved = model(torch.roll(x, shifts=(dy, dx), dims=(-2, -1)))
            assert torch.allclose(moved, reference, atol=1e-5, rtol=0), (dy, dx)
            assert (moved - reference).abs().max() < 1e-10  # in fact to rounding


@pytest.mark.parametrize("content_rel_attn", [False, True])
def test_zero_filled_shift_of_content_moves_the_token_outputs(content_rel_attn):
    """A zero-filled shift that moves only empty rows/columns across the border is a roll:
    the pixel outputs move with the content (all of them, the empty ones included)."""
    model = model64(content_rel_attn=content_rel_attn)
    x = empty_margin_images()
    with torch.no_grad():
        reference = pixel_tokens(model, x)
        for dy, dx in [(1, 0), (0, -2), (-3, 3), (2, 1)]:  # |shift| <= margin: only zeros cross the border
            shifted = zero_filled_shift(x, dy, dx)
            assert torch.equal(shifted, torch.roll(x, shifts=(dy, dx), dims=(-2, -1)))
            expected = torch.roll(reference, shifts=(dy, dx), dims=(1, 2))
            assert (pixel_tokens(model, shifted) - expected).abs().max() < 1e-10, (dy, dx)


def test_negative_control_relative_performer_with_favor_features_is_not_exact():
    """The same check fails for strategy 1 with FAVOR+ features (its random features multiply
    positions), although its positions are periodic and its exact-attention version passes."""
    from relative_performer.evaluation.equivariance import make_periodic, with_exact_attention

    torch.manual_seed(0)
    model = create_model(model="RelativePerformer", dim=32, depth=2, heads=4, attn_dropout=0.0, ff_dropout=0.0,
                         pos_scales=3).double().eval()
    make_periodic(model, H, W)
    x = empty_margin_images()
    dy, dx = 2, -3
    shifted = zero_filled_shift(x, dy, dx)
    with torch.no_grad():
        exact = with_exact_attention(model)
        exact_error = (pixel_tokens(exact, shifted) - torch.roll(pixel_tokens(exact, x), (dy, dx), (1, 2))).abs().max()
        favor_error = (pixel_tokens(model, shifted) - torch.roll(pixel_tokens(model, x), (dy, dx), (1, 2))).abs().max()
    assert exact_error < 1e-10
    assert favor_error > 1e-4, f"strategy 1 with FAVOR+ features unexpectedly exact ({favor_error:.2e})"


# --------------------------------------------------------------------------- fast path vs naive


def naive_factor(attn: PeriodicRelativeAttention, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """g (b|1, h, n, n) from the definition, class token (index 0) with the constant ``prod_a (r_0a + eps_a)``."""
    c = attn.coefficients[:, None]  # (h, 1, a, k, 2)
    if attn.to_coefficients is not None:
        extra = attn.to_coefficients(x)  # (b, n, h a k 2)
        c = c + extra.reshape(x.shape[0], x.shape[1], *attn.coefficients.shape).transpose(1, 2)
    else:
        c = c.expand(-1, x.shape[1], -1, -1, -1)[None]
    c = torch.complex(c[..., 0], c[..., 1])  # (b|1, h, n, a, k)
    power = c.abs().square().sum(-1)  # r_0 (b|1, h, n, a)
    eps = (torch.nn.functional.softplus(attn.floor)[:, None] + RELATIVE_MARGIN) * power + ABSOLUTE_MARGIN
    positions = grid_positions(height, width, dtype=F64)
    D = positions[:, None, :] - positions[None, :, :]  # (i, j, a)
    sides = torch.tensor([height, width], dtype=F64)
    k = torch.arange(c.shape[-1], dtype=F64)
    phase = torch.exp(1j * 2 * math.pi * D[..., None] / sides[:, None] * k)  # (i, j, a, k)
    P = (c[..., 1:, None, :, :] * phase).sum(-1)  # (b|1, h, i, j, a), pixel queries i
    g_pixels = (P.abs().square() + eps[..., 1:, None, :]).prod(-1)
    constant = (power + eps).prod(-1)  # (b|1, h, n)
    g = constant[..., :, None].expand(*constant.shape, x.shape[1]).clone()  # row i = query i; column 0 = class key
    g[..., 1:, 1:] = g_pixels
    return g


def naive_forward(attn: PeriodicRelativeAttention, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    q, k, v = attn.project(x)
    weights = softmax_features(q, attn.feature_map.projection, is_query=True) @ \
        softmax_features(k, attn.feature_map.projection, is_query=False).transpose(-1, -2)  # (b, h, n, n)
    weights = weights * naive_factor(attn, x, height, width)
    out = (weights @ v) / weights.sum(-1, keepdim=True)
    return attn.merge(out, x)


@pytest.mark.parametrize("content_rel_attn", [False, True], ids=["separable", "content"])
def test_fast_path_matches_naive_quadratic(content_rel_attn):
    torch.manual_seed(0)
    cfg = ModelConfig(model="ExactRelativePerformer", dim=16, heads=2, pos_scales=3, attn_dropout=0.0,
                      content_rel_attn=content_rel_attn)
    attn = PeriodicRelativeAttention(cfg).double()
    randomise(attn, seed=3)
    height, width = 5, 7
    basis = periodic_basis(height, width, cfg.pos_scales, dtype=F64)
    ctx = AttentionContext(height, width, torch.cat((torch.zeros_like(basis[:1]), basis)))
    x = torch.randn(2, 1 + height * width, 16, dtype=F64, requires_grad=True)

    fast = attn(x, ctx)
    naive = naive_forward(attn, x, height, width)
    assert torch.allclose(fast, naive, atol=1e-12, rtol=1e-10)

    upstream = torch.randn_like(fast)
    params = [x] + [p for p in attn.parameters()]
    fast_grads = torch.autograd.grad((fast * upstream).sum(), params, allow_unused=True)
    naive_grads = torch.autograd.grad((naive * upstream).sum(), params, allow_unused=True)
    for p, a, b in zip(params, fast_grads, naive_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-11, rtol=1e-9), p.shape


def test_separable_path_matches_generic_linear_path():
    """The per-axis sums equal the linear attention over the full product features."""
    torch.manual_seed(0)
    cfg = ModelConfig(model="ExactRelativePerformer", dim=16, heads=2, pos_scales=2, attn_dropout=0.0)
    attn = PeriodicRelativeAttention(cfg).double()
    randomise(attn, seed=4)
    height, width = 4, 6
    basis = periodic_basis(height, width, cfg.pos_scales, dtype=F64)
    basis = torch.cat((torch.zeros_like(basis[:1]), basis))
    x = torch.randn(3, 1 + height * width, 16, dtype=F64)
    q, k, v = attn.project(x)
    u = attn.query_coefficients(basis, x)
    psi = axis_basis(basis)
    separable = attn.attend_separable(q, k, v, u[0], psi, height, width)
    generic = attn.attend_relative(q, k, v, outer_axes(u), outer_axes(psi))
    assert torch.allclose(separable, generic, atol=1e-13, rtol=1e-11)


# --------------------------------------------------------------------------- positivity


@pytest.mark.parametrize("seed", range(5))
def test_relative_factor_is_positive_for_random_parameters(seed):
    """min over all displacements of g > 0, even with large coefficients and a very negative floor."""
    torch.manual_seed(seed)
    cfg = ModelConfig(model="ExactRelativePerformer", dim=16, heads=4, pos_scales=4, content_rel_attn=True)
    attn = PeriodicRelativeAttention(cfg).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        attn.coefficients.copy_(torch.randn(attn.coefficients.shape, generator=generator, dtype=F64) * 10)
        attn.floor.fill_(-30.0)
        attn.to_coefficients.weight.copy_(torch.randn(attn.to_coefficients.weight.shape, generator=generator, dtype=F64))
    height, width = 9, 8
    basis = periodic_basis(height, width, cfg.pos_scales, dtype=F64)
    basis = torch.cat((torch.zeros_like(basis[:1]), basis))
    x = torch.randn(2, 1 + height * width, 16, generator=generator, dtype=F64)
    g = outer_axes(attn.query_coefficients(basis, x)) @ outer_axes(axis_basis(basis)).T  # (b, h, n, n)
    assert g.min() > 0
    # and it is the product of the per-axis |P|^2 + eps
    g_naive = naive_factor(attn, x, height, width)
    assert torch.allclose(g, g_naive, rtol=1e-9, atol=0)
    # in float32 too (the margin eps is relative, far above the rounding of the factorised sum)
    g32 = outer_axes(attn.float().query_coefficients(basis.float(), x.float())) @ outer_axes(axis_basis(basis.float())).T
    assert g32.min() > 0
