"""Strategy 1 (RelativePerformer): rotation-constrained projections see displacements only.

(a) The positional part of the widened ``q . k`` depends on ``p_i - p_j`` only and has
the closed form ``sum alpha cos(w d) + beta sin(w d)``; (b) with exact attention and
periodic position features the whole classifier is invariant under cyclic shifts of
the image, which an absolute encoding (Performer) is not.
"""

from __future__ import annotations

import pytest
import torch

from relative_performer.models import create_model
from relative_performer.positional.constrained import ConstrainedRelativeProjection, rotate
from relative_performer.positional.sinusoid import GridSinusoidFeatures, grid_positions
from reference import relative_positional_logits, sinusoid_position_features

F64 = torch.float64


def max_err(a, b) -> float:
    return (a - b).abs().max().item()


def positional_logits(projection, q, k, x, features):
    """Widened ``q . k`` minus the content ``q . k``: the positional block alone, (b, h, n, n)."""
    q_wide, k_wide = projection(q, k, x, features)
    d = q.shape[-1]
    assert torch.equal(q_wide[..., :d], q) and torch.equal(k_wide[..., :d], k), "content part altered"
    full = q_wide @ k_wide.transpose(-1, -2)
    content = q @ k.transpose(-1, -2)
    block = q_wide[..., d:] @ k_wide[..., d:].transpose(-1, -2)
    assert max_err(full - content, block) < 1e-9, "widened logits are not content + positional block"
    return block


def setup(content_rel_attn: bool, height=5, width=7, heads=3, scales=4, dim=24, seed=0):
    torch.manual_seed(seed)
    projection = ConstrainedRelativeProjection(dim, heads, scales, 2, content_rel_attn).double()
    features = GridSinusoidFeatures(scales).double()
    with torch.no_grad():  # random, not-round frequencies so that nothing is accidentally periodic
        features.frequencies.mul_(torch.empty_like(features.frequencies).uniform_(0.5, 2.0))
    b, n, d = 2, height * width, dim // heads
    q = torch.randn(b, heads, n, d, dtype=F64)
    k = torch.randn(b, heads, n, d, dtype=F64)
    x = torch.randn(b, n, dim, dtype=F64)
    return projection, features, q, k, x


def test_grid_features_match_the_formula():
    features = GridSinusoidFeatures(3).double()
    positions = grid_positions(4, 6, dtype=F64)
    assert positions[:7].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5], [1, 0]]  # (y, x), row-major
    expected = sinusoid_position_features(positions, features.frequencies)
    assert max_err(features(4, 6), expected) < 1e-12


def test_rotation_gives_cos_sin_of_difference():
    torch.manual_seed(1)
    w, pi, pj = torch.rand(5, dtype=F64) * 3, torch.randn(5, dtype=F64) * 10, torch.randn(5, dtype=F64) * 10
    alpha, beta = torch.randn(5, dtype=F64), torch.randn(5, dtype=F64)
    fi = torch.stack(((w * pi).sin(), (w * pi).cos()), -1)
    fj = torch.stack(((w * pj).sin(), (w * pj).cos()), -1)
    dot = (rotate(fi, alpha, beta) * fj).sum(-1)
    expected = alpha * torch.cos(w * (pi - pj)) + beta * torch.sin(w * (pi - pj))
    assert max_err(dot, expected) < 1e-12, f"max error {max_err(dot, expected):.2e}"


@pytest.mark.parametrize("content_rel_attn", [False, True])
def test_positional_logits_depend_on_displacement_only(content_rel_attn):
    height, width = 5, 7
    projection, features, q, k, x = setup(content_rel_attn, height, width)
    positions = grid_positions(height, width, dtype=F64)
    logits = positional_logits(projection, q, k, x, sinusoid_position_features(positions, features.frequencies))
    assert logits.abs().max() > 0.1, "positional logits vanish: the test would be vacuous"
    # module features == formula features on the grid
    assert max_err(features(height, width), sinusoid_position_features(positions, features.frequencies)) < 1e-12

    # closed form sum alpha cos(w d) + beta sin(w d), with the per-token alpha, beta of content_rel_attn
    expected = relative_positional_logits(positions, features.frequencies, projection.alpha, projection.beta).expand_as(logits)
    if content_rel_attn:
        b, n = x.shape[:2]
        # the linear layer's output is laid out "(h a s t)" with t = (alpha, beta) innermost
        per_token = projection.to_alpha_beta(x).reshape(b, n, projection.heads, 2, -1, 2).permute(0, 2, 1, 3, 4, 5)
        alpha, beta = per_token.unbind(-1)  # (b, h, n, a, s)
        expected = expected + relative_positional_logits(positions, features.frequencies, alpha, beta)
    err = max_err(logits, expected)
    assert err < 1e-10, f"positional logits vs closed form: max error {err:.2e}"

    # shifting every position by one constant (integer and real) leaves the logits unchanged
    generator = torch.Generator().manual_seed(2)
    for offset in (torch.randint(-50, 50, (2,), generator=generator).double(), torch.randn(2, generator=generator, dtype=F64) * 20):
        shifted = positional_logits(projection, q, k, x, sinusoid_position_features(positions + offset, features.frequencies))
        err = max_err(shifted, logits)
        assert err < 1e-9, f"offset {offset.tolist()}: positional logits changed by {err:.2e}"
    # a non-rigid change of positions does change them (the check is sensitive)
    stretched = positional_logits(projection, q, k, x, sinusoid_position_features(positions * 1.5, features.frequencies))
    assert max_err(stretched, logits) > 1e-2


def test_class_token_has_zero_position_features():
    model = create_model(model="RelativePerformer", dim=32, depth=1, heads=4)
    pixels = torch.randn(2, 12 * 10, 32)
    _, ctx = model.positional.encode(pixels, 12, 10)
    assert ctx.position_features.shape == (1 + 12 * 10, 2, model.cfg.pos_scales, 2)
    assert torch.equal(ctx.position_features[0], torch.zeros_like(ctx.position_features[0]))
    assert ctx.position_features[1:].abs().sum(dim=(1, 2, 3)).min() > 0
    # so its widened query and key carry no position (class token attends, and is attended to, by content only)
    attention = model.blocks[0].attn
    q, k = torch.randn(2, 2, 4, 1 + 120, 8).unbind(0)
    q_wide, k_wide = attention.qk_extension(q, k, torch.randn(2, 121, 32), ctx.position_features)
    assert q_wide[:, :, 0, 8:].abs().max() == 0 and k_wide[:, :, 0, 8:].abs().max() == 0


def _roll_invariance(name: str, height: int, width: int, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    model = create_model(model=name, dim=32, depth=2, heads=4, no_projection=True, **cfg).double().eval()
    if name == "RelativePerformer":
        model.positional.features.make_periodic(height, width)
    with torch.no_grad():  # random weights everywhere, including the rotation blocks and biases
        for p in model.parameters():
            if p is not getattr(getattr(model.positional, "features", None), "frequencies", None):
                p.add_(torch.randn_like(p) * 0.1)
    images = torch.randn(3, 1, height, width, dtype=F64)
    with torch.no_grad():
        reference = model(images)
        diffs = []
        for shift in ((1, 0), (0, 1), (2, 3), (-3, 5), (height - 1, width - 2)):
            diffs.append(max_err(model(torch.roll(images, shift, dims=(-2, -1))), reference))
    return diffs, reference


@pytest.mark.parametrize("content_rel_attn", [False, True])
def test_relative_performer_is_invariant_to_cyclic_shifts(content_rel_attn):
    diffs, reference = _roll_invariance("RelativePerformer", 6, 8, content_rel_attn=content_rel_attn)
    assert reference.abs().max() > 0.1
    assert max(diffs) < 1e-5, f"logit change under cyclic shifts: {['%.2e' % d for d in diffs]}"


def test_performer_is_not_invariant_to_cyclic_shifts():
    diffs, _ = _roll_invariance("Performer", 6, 8)
    assert min(diffs) > 1e-3, f"absolute-position model looks shift invariant: {['%.2e' % d for d in diffs]}"


def test_make_periodic_frequencies():
    features = GridSinusoidFeatures(4)
    features.make_periodic(6, 9)
    f = features(6, 9)
    # periodic: the features of row y + 6 (column x + 9) equal those of row y (column x)
    g = features(12, 18).reshape(12, 18, 2, 4, 2)
    assert max_err(g[6:, :9], g[:6, :9]) < 1e-4 and max_err(g[:6, 9:], g[:6, :9]) < 1e-4
    assert f.shape == (54, 2, 4, 2)
