"""Strategy 2 (ClippedRelativePerformer): the linear-time ring-sum formulation equals the
naive one that materialises the full n x n weight matrix ``s_{c(i, j)}(i)``, with
``c = min(|dy| + |dx|, C)`` and the class token far from everything.

Non-square images, C smaller and larger than the image, exact and FAVOR+ weights,
outputs and gradients (q, k, v, relative keys) in float64.
"""

from __future__ import annotations

import pytest
import torch

from relative_performer.attention.clipped import (
    ClippedRelativeAttention,
    clipped_relative_attention,
    manhattan_ring_kernels,
    ring_sums,
)
from relative_performer.models import ModelConfig
from relative_performer.models.blocks import AttentionContext
from reference import (
    clipped_attend_naive,
    clipped_attention_from_scores,
    clipped_distances,
    clipped_module_forward_naive,
    ring_sums_conv,
)

F64 = torch.float64
SHAPES = [(5, 7, 3), (6, 3, 3), (5, 7, 12), (6, 3, 1), (4, 9, 2)]  # (height, width, clipping_dist)


def assert_close(actual, expected, atol, what):
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.1e}"


def test_clipped_distances_reference():
    d = clipped_distances(2, 3, 2)  # tokens: class, (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    assert d[0].tolist() == [2] * 7 and d[:, 0].tolist() == [2] * 7
    assert d[1].tolist() == [2, 0, 1, 2, 1, 2, 2]
    assert torch.equal(d, d.T)


def test_ring_kernels():
    kernels = manhattan_ring_kernels(3)  # (3, 1, 5, 5)
    assert kernels.shape == (3, 1, 5, 5)
    assert [int(k.sum()) for k in kernels] == [1, 4, 8]
    assert kernels[:, 0, 2, 2].tolist() == [1, 0, 0]


@pytest.mark.parametrize("height,width,clipping_dist", SHAPES)
def test_ring_sums_match_convolution(height, width, clipping_dist):
    """``ring_sums`` vs the diamond-ring convolution, outputs and gradients."""
    torch.manual_seed(height * 100 + width * 10 + clipping_dist + 1)
    values = torch.randn(2, 3, height * width, 4, dtype=F64, requires_grad=True)
    fast = ring_sums(values, height, width, manhattan_ring_kernels(clipping_dist))
    slow = ring_sums_conv(values, height, width, clipping_dist)
    assert fast.shape == slow.shape == (2, 3, height * width, clipping_dist, 4)
    assert_close(fast, slow, 1e-12, "ring sums")
    grad_out = torch.randn_like(fast)
    assert_close(torch.autograd.grad(fast, values, grad_out)[0], torch.autograd.grad(slow, values, grad_out)[0], 1e-12,
                 "grad values")


@pytest.mark.parametrize("height,width,clipping_dist", SHAPES)
def test_ring_sum_formulation_matches_full_matrix(height, width, clipping_dist):
    """The pure function with arbitrary positive per-distance scores (outputs and gradients)."""
    torch.manual_seed(height * 100 + width * 10 + clipping_dist)
    b, h, n, e = 2, 3, 1 + height * width, 5
    scores = torch.rand(b, h, n, clipping_dist + 1, dtype=F64).add(0.05).requires_grad_()
    v = torch.randn(b, h, n, e, dtype=F64, requires_grad=True)
    fast = clipped_relative_attention(scores, v, height, width, manhattan_ring_kernels(clipping_dist))
    slow = clipped_attention_from_scores(scores, v, height, width)
    assert fast.shape == (b, h, n, e) and fast.dtype == F64
    assert_close(fast, slow, 1e-12, "output")
    grad_out = torch.randn_like(fast)
    for name, a, r in zip(("scores", "v"), torch.autograd.grad(fast, (scores, v), grad_out),
                          torch.autograd.grad(slow, (scores, v), grad_out)):
        assert_close(a, r, 1e-12, f"grad {name}")


def _module(height, width, clipping_dist, no_projection, heads=4, dim=32, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(model="ClippedRelativePerformer", dim=dim, heads=heads, clipping_dist=clipping_dist,
                      no_projection=no_projection, nb_features=48)
    module = ClippedRelativeAttention(cfg).double().eval()
    with torch.no_grad():
        module.relative_keys.mul_(0.5)  # keep FAVOR+ (unstabilised reference) in a comfortable range
    return module, AttentionContext(height, width)


@pytest.mark.parametrize("no_projection", [True, False], ids=["exact", "favor"])
@pytest.mark.parametrize("height,width,clipping_dist", SHAPES)
def test_attend_matches_naive(height, width, clipping_dist, no_projection):
    """``ClippedRelativeAttention.attend``: content heads and relative heads vs full-matrix references."""
    module, ctx = _module(height, width, clipping_dist, no_projection)
    hc, d = module.content_heads, module.to_qkv.in_features // module.heads
    b, n = 2, 1 + height * width
    q, k, v = (torch.randn(b, module.heads, n, d, dtype=F64, requires_grad=True) for _ in range(3))
    fast = module.attend(q, k, v, ctx)

    slow = clipped_attend_naive(module, q, k, v, height, width)
    relative = slow[:, hc:]
    assert fast.shape == slow.shape and fast.dtype == F64
    assert_close(fast[:, hc:], relative, 1e-10, "relative heads output")
    assert_close(fast, slow, 1e-10, "all heads output")

    grad_out = torch.randn_like(fast)
    inputs = (q, k, v, module.relative_keys)
    for name, a, r in zip(("q", "k", "v", "relative_keys"), torch.autograd.grad(fast, inputs, grad_out),
                          torch.autograd.grad(slow, inputs, grad_out)):
        assert_close(a, r, 1e-9, f"grad {name}")
        assert r.abs().max() > 0, f"grad {name} vanishes: vacuous"


@pytest.mark.parametrize("no_projection", [True, False], ids=["exact", "favor"])
@pytest.mark.parametrize("height,width,clipping_dist,heads", [(5, 7, 3, 4), (6, 3, 8, 2), (3, 4, 2, 1)])
def test_module_forward_matches_naive(height, width, clipping_dist, heads, no_projection):
    module, ctx = _module(height, width, clipping_dist, no_projection, heads=heads)
    x = torch.randn(3, 1 + height * width, 32, dtype=F64)
    fast = module(x, ctx)
    slow = clipped_module_forward_naive(module, x, height, width)
    assert_close(fast, slow, 1e-10, "module forward")
    params = [p for p in module.parameters()]
    grad_out = torch.randn_like(fast)
    for p, a, r in zip([n for n, _ in module.named_parameters()], torch.autograd.grad(fast, params, grad_out),
                       torch.autograd.grad(slow, params, grad_out)):
        assert_close(a, r, 1e-9, f"grad {p}")


def test_class_token_is_far_from_everything():
    """Exact mode: the class token's weights are all s_C; pixels weight it with their s_C."""
    module, ctx = _module(4, 5, 3, True, heads=2)
    b, n, d = 1, 21, 16
    q, k = torch.randn(2, b, 2, n, d, dtype=F64).unbind(0)
    v = torch.eye(n, dtype=F64).expand(b, 2, n, n)  # one-hot values: the output is the weight row
    weights = module.attend(q, k, v, ctx)[:, 1]  # relative head: (b, n, n) normalised weights
    logits = q[:, 1] @ module.relative_keys[0].T.to(F64) / d**0.5  # (b, n, C + 1)
    far = logits[..., -1].exp()
    total = (torch.gather(logits.exp(), -1, clipped_distances(4, 5, 3).expand(b, n, n))).sum(-1)
    assert_close(weights[..., 0], far / total, 1e-12, "weight of the class token")
    assert_close(weights[:, 0], torch.full((b, n), 1 / n, dtype=F64), 1e-12, "class token's row (uniform)")
