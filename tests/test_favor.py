"""FAVOR+ random features and attention (relative_performer.attention.favor).

Statistical checks of the estimator against ``exp(q . k / sqrt(d))``, exact checks of
the stabilisers, and the fast (linear / fused) attention against explicit quadratic
references, outputs and gradients, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from relative_performer.attention.favor import (
    FeatureMap,
    default_nb_features,
    linear_attention,
    orthogonal_gaussian_matrix,
    quadratic_softmax_attention,
    relu_features,
    softmax_attention,
    softmax_features,
)
from relative_performer.models.blocks import AttentionContext, SelfAttention
from relative_performer.models.config import ModelConfig
from reference import (
    exact_softmax_attention,
    favor_kernel_estimate,
    positive_random_features,
    quadratic_kernel_attention,
    softmax_kernel,
)

F64 = torch.float64


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def assert_close(actual, expected, atol, what=""):
    err = max_err(actual, expected)
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.1e}"


# --------------------------------------------------------------------------- random matrix


def test_orthogonal_gaussian_matrix_blocks_are_orthogonal():
    d, m = 16, 3 * 16 + 5  # three full blocks and a partial one
    g = torch.Generator().manual_seed(0)
    w = orthogonal_gaussian_matrix(m, d, generator=g, dtype=F64)
    assert w.shape == (m, d) and w.dtype == F64
    directions = w / w.norm(dim=1, keepdim=True)
    for start in range(0, m, d):
        block = directions[start : start + d]
        gram = block @ block.T
        assert_close(gram, torch.eye(len(block), dtype=F64), 1e-12, f"Gram matrix of block at row {start}")
    # different blocks are independent draws, not copies of one another
    cross = directions[:d] @ directions[d : 2 * d].T
    assert cross.abs().max() > 0.3, "blocks look identical or mutually orthogonal"


def test_orthogonal_gaussian_matrix_rows_have_chi_norms_and_gaussian_marginals():
    d, m = 16, 16 * 256
    w = orthogonal_gaussian_matrix(m, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    norms = w.norm(dim=1)
    chi_mean = math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))  # E chi(d) ~ sqrt(d - 1/2)
    chi_var = d - chi_mean**2  # ~ 0.5
    assert abs(norms.mean().item() - chi_mean) < 0.05, f"mean row norm {norms.mean():.4f}, chi({d}) mean {chi_mean:.4f}"
    assert abs(norms.var().item() - chi_var) < 0.1, f"row norm variance {norms.var():.4f}, chi({d}) variance {chi_var:.4f}"
    # each row marginally N(0, I): E[w] = 0 and E[w w^T] = I
    second_moment = w.T @ w / m
    assert_close(second_moment, torch.eye(d, dtype=F64), 0.1, "E[w w^T] vs identity")
    assert w.mean(0).abs().max() < 0.1, f"row mean {w.mean(0).abs().max():.3f} far from 0"


def test_orthogonal_gaussian_matrix_is_seeded():
    a = orthogonal_gaussian_matrix(40, 8, generator=torch.Generator().manual_seed(5))
    b = orthogonal_gaussian_matrix(40, 8, generator=torch.Generator().manual_seed(5))
    c = orthogonal_gaussian_matrix(40, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_default_nb_features():
    assert default_nb_features(32) == int(32 * math.log(32)) == 110
    assert default_nb_features(1) == 1


# --------------------------------------------------------------------------- estimator statistics


def test_softmax_features_are_the_reference_features_up_to_the_stabilisers():
    """Package features = m**-0.5 exp(W x' - |x'|^2/2) times a detached factor: per query row, per key (sample, head)."""
    torch.manual_seed(0)
    b, h, n, d, m = 2, 3, 7, 8, 24
    w = orthogonal_gaussian_matrix(m, d, dtype=F64)
    x = torch.randn(b, h, n, d, dtype=F64) * 2
    ref = positive_random_features(x, w)
    q_ratio = softmax_features(x, w, is_query=True) / ref  # (b, h, n, m)
    k_ratio = softmax_features(x, w, is_query=False) / ref
    # a queries' factor is constant along features, and differs between rows
    assert_close(q_ratio, q_ratio[..., :1].expand_as(q_ratio), 1e-9 * q_ratio.max().item(), "query factor varies along m")
    assert q_ratio[..., 0].std() > 0, "query stabiliser is not per row"
    # a key factor is constant over tokens and features of one (sample, head), and differs across them
    k_flat = k_ratio.flatten(-2)
    assert_close(k_flat, k_flat[..., :1].expand_as(k_flat), 1e-9 * k_flat.max().item(), "key factor varies in a (sample, head)")
    assert k_flat[..., 0].std() > 0, "key stabiliser is not per (sample, head)"
    # the stabiliser is the max of the exponent: the largest feature is exactly m**-0.5
    assert_close(softmax_features(x, w, is_query=True).amax(-1), torch.full((b, h, n), m**-0.5, dtype=F64), 1e-12, "query max")
    assert_close(softmax_features(x, w, is_query=False).amax((-1, -2)), torch.full((b, h), m**-0.5, dtype=F64), 1e-12, "key max")


def _relative_errors(nb_features: int, draws: int, q, k, seed: int = 0) -> torch.Tensor:
    """(draws, n, n) relative errors of independent FAVOR+ estimates of exp(q . k / sqrt(d))."""
    truth = softmax_kernel(q, k)  # (n, n)
    estimates = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(seed + draw)
        w = orthogonal_gaussian_matrix(nb_features, q.shape[-1], generator=generator, dtype=F64)
        estimates.append(favor_kernel_estimate(q, k, w))
    return torch.stack(estimates) / truth - 1


def test_favor_estimate_error_falls_like_inverse_sqrt_m():
    torch.manual_seed(0)
    d, n = 16, 24
    q = torch.randn(n, d, dtype=F64) * 0.5
    k = torch.randn(n, d, dtype=F64) * 0.5
    ms = (16, 64, 256, 1024)
    errors = [_relative_errors(m, 12, q, k).pow(2).mean().sqrt().item() for m in ms]  # rms over pairs and draws
    report = ", ".join(f"m={m}: {e:.4f}" for m, e in zip(ms, errors))
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < 0.8 * coarse, f"relative error does not fall with m ({report})"
    # 1/sqrt(m): 64x more features -> 8x smaller error; allow a wide band around it
    ratio = errors[0] / errors[-1]
    assert 4 < ratio < 16, f"error ratio m=16 / m=1024 is {ratio:.2f}, expected ~8 ({report})"
    for m, e in zip(ms, errors):
        assert e * math.sqrt(m) < 4, f"error at m={m} is {e:.4f}: not O(1/sqrt(m)) ({report})"


def test_favor_estimate_is_unbiased():
    """Mean of 64 independent draws at m = 1024: within 2% rms (5% max) of exp(q.k/sqrt d), no pair biased."""
    torch.manual_seed(1)
    d, n, draws = 16, 24, 64
    q = torch.randn(n, d, dtype=F64) * 0.5
    k = torch.randn(n, d, dtype=F64) * 0.5
    errors = _relative_errors(1024, draws, q, k, seed=100)  # (draws, n, n)
    bias = errors.mean(0)
    z = bias / (errors.std(0) / math.sqrt(draws))  # per pair, ~N(0, 1) if unbiased
    msg = (f"per-draw rms {errors.pow(2).mean().sqrt():.4f}; bias of the mean: rms {bias.pow(2).mean().sqrt():.4f}, "
           f"max {bias.abs().max():.4f}, overall {bias.mean():+.5f}; max |z| {z.abs().max():.2f}")
    assert bias.pow(2).mean().sqrt() < 0.02 and bias.abs().max() < 0.15, msg
    assert bias.mean().abs() < 0.005, msg
    assert z.abs().max() < 5, msg


def test_favor_attention_approaches_softmax_attention():
    """Normalised attention with the package's features converges to exact softmax attention as m grows."""
    torch.manual_seed(2)
    b, h, n, d = 1, 2, 20, 16
    q, k, v = (torch.randn(b, h, n, d, dtype=F64) * 0.7 for _ in range(3))
    exact = exact_softmax_attention(q, k, v)
    errors = []
    for m in (16, 256, 4096):
        err = 0.0
        for draw in range(4):
            w = orthogonal_gaussian_matrix(m, d, generator=torch.Generator().manual_seed(draw), dtype=F64)
            out = linear_attention(softmax_features(q, w, is_query=True), softmax_features(k, w, is_query=False), v)
            err += (out - exact).pow(2).mean().item() / 4
        errors.append(math.sqrt(err))
    assert errors[0] > errors[1] > errors[2], f"rms errors {errors}"
    assert errors[2] < 0.02, f"rms error at m=4096: {errors[2]:.4f}"


# --------------------------------------------------------------------------- stabilisers


def _favor_functional(q, k, v, projection):
    return linear_attention(softmax_features(q, projection, is_query=True), softmax_features(k, projection, is_query=False), v)


def _favor_module(q, k, v, projection):
    """The path the models take: ``SelfAttention.attend`` with its FeatureMap."""
    attention = SelfAttention(ModelConfig(dim=4 * q.shape[-1], heads=4, nb_features=projection.shape[0]))
    attention.feature_map.projection = projection
    return attention.attend(q, k, v, AttentionContext(1, q.shape[-2] - 1))


@pytest.mark.parametrize("attend", [_favor_functional, _favor_module], ids=["functions", "SelfAttention"])
def test_stabilisers_prevent_overflow_and_underflow(attend):
    """Large inputs: the unstabilised float32 estimate breaks down; the package output stays finite and correct.

    Compared with the unstabilised float64 reference wherever that is finite. In float32
    the comparison stops at scale 5: beyond it keys of one (sample, head) span more than
    float32's exponent range, so the smallest ones underflow even after the (correct,
    per-(sample, head)) stabiliser; that is float32's limit, not the stabiliser's.
    """
    torch.manual_seed(3)
    b, h, n, d, m = 2, 2, 16, 32, 128
    w64 = orthogonal_gaussian_matrix(m, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    q0, k0, v0 = (torch.randn(b, h, n, d, dtype=F64) for _ in range(3))
    k0 = k0 + q0  # aligned queries and keys: exp(q.k / sqrt(d)) grows fast with the scale
    lo, hi = v0.amin(-2, keepdim=True), v0.amax(-2, keepdim=True)
    broke_unstabilised32 = compared64_when_broken = False
    for scale in (1, 3, 5, 10, 30, 100):
        q, k = q0 * scale, k0 * scale
        reference = quadratic_kernel_attention(positive_random_features(q, w64), positive_random_features(k, w64), v0)
        unstabilised32 = quadratic_kernel_attention(
            positive_random_features(q.float(), w64.float()), positive_random_features(k.float(), w64.float()), v0.float()
        )
        broken32 = not torch.isfinite(unstabilised32).all().item()
        broke_unstabilised32 |= broken32
        for dtype, tol, max_scale in ((F64, 1e-9, 100), (torch.float32, 1e-4, 5)):
            out = attend(q.to(dtype), k.to(dtype), v0.to(dtype), w64.to(dtype))
            assert torch.isfinite(out).all(), f"scale {scale}, {dtype}: non-finite output"
            # an attention output is a convex combination of the values
            assert (out >= lo - 1e-4).all() and (out <= hi + 1e-4).all(), f"scale {scale}, {dtype}: output outside hull of v"
            if torch.isfinite(reference).all() and scale <= max_scale:
                assert_close(out.double(), reference, tol, f"scale {scale}, {dtype}: vs unstabilised float64 reference")
                compared64_when_broken |= broken32
    assert broke_unstabilised32 and compared64_when_broken, "inputs never broke the unstabilised float32 estimate: vacuous"


@pytest.mark.parametrize("attend", [_favor_functional, _favor_module], ids=["functions", "SelfAttention"])
@pytest.mark.parametrize("dtype,half_sq_norm", [(F64, 1500.0), (torch.float32, 200.0)], ids=["float64", "float32"])
def test_key_stabiliser_is_per_sample_and_head(attend, dtype, half_sq_norm):
    """One sample's keys far larger than another's: each sample's output equals its output alone.

    Sample 0's keys have ``|k'|^2 / 2`` = half_sq_norm, so the exponents of its features
    sit ~half_sq_norm below sample 1's: a stabiliser shared across the batch underflows
    them all (beyond exp's range in that dtype), a per-(sample, head) one does not.
    """
    torch.manual_seed(4)
    b, h, n, d, m = 2, 4, 12, 16, 64
    w = orthogonal_gaussian_matrix(m, d, dtype=dtype)
    q, k, v = (torch.randn(b, h, n, d, dtype=dtype) for _ in range(3))
    big = k[0] / k[0].norm(dim=-1, keepdim=True) * (2 * half_sq_norm * d**0.5) ** 0.5  # |k'|^2/2 = half_sq_norm
    k = torch.cat((big[None], k[1:]))
    out = attend(q, k, v, w)
    assert torch.isfinite(out).all()
    for i in range(b):
        alone = attend(q[i : i + 1], k[i : i + 1], v[i : i + 1], w)[0]
        assert alone.std() > 0.05, "vacuous: the output alone is trivial"
        assert_close(out[i], alone, 1e-12 if dtype == F64 else 1e-6, f"sample {i} in the batch vs alone")
    # heads: make head 1's keys of sample 1 huge as well; the other heads of sample 1 must not move
    k2 = k.clone()
    k2[1, 1] = big[1]
    out2 = attend(q, k2, v, w)
    keep = [0, 2, 3]
    assert_close(out2[1, keep], out[1, keep], 1e-12 if dtype == F64 else 1e-6, "other heads moved when one head's keys grew")


def test_relu_features_positive_and_finite():
    torch.manual_seed(5)
    d, m = 16, 64
    w = orthogonal_gaussian_matrix(m, d)
    for scale in (1e-3, 1.0, 1e3, 1e6):
        x = torch.randn(2, 3, 10, d) * scale
        phi = relu_features(x, w, is_query=True)
        assert phi.shape == (2, 3, 10, m)
        assert torch.isfinite(phi).all() and (phi > 0).all(), f"scale {scale}: relu features not positive and finite"
        out = linear_attention(phi, relu_features(x.flip(-2), w, is_query=False), torch.randn(2, 3, 10, 5))
        assert torch.isfinite(out).all()
    x = torch.randn(4, d, dtype=F64)
    expected = torch.relu(x * d**-0.25 @ w.double().T) + 1e-3
    assert_close(relu_features(x, w.double(), is_query=True), expected, 1e-12, "relu features vs formula")


# --------------------------------------------------------------------------- fast paths vs quadratic references


@pytest.mark.parametrize("kernel", ["softmax", "relu", "arbitrary"])
def test_linear_attention_matches_quadratic_reference(kernel):
    torch.manual_seed(6)
    b, h, n, j, d, m, e = 2, 3, 9, 11, 8, 20, 5
    w = orthogonal_gaussian_matrix(m, d, dtype=F64)
    q = torch.randn(b, h, n, d, dtype=F64, requires_grad=True)
    k = torch.randn(b, h, j, d, dtype=F64, requires_grad=True)
    v = torch.randn(b, h, j, e, dtype=F64, requires_grad=True)

    def features(x, is_query):
        if kernel == "softmax":
            return softmax_features(x, w, is_query=is_query)
        if kernel == "relu":
            return relu_features(x, w, is_query=is_query)
        return torch.nn.functional.softplus(x @ w.T)  # any positive features

    def reference_features(x, is_query):
        return positive_random_features(x, w) if kernel == "softmax" else features(x, is_query)

    fast = linear_attention(features(q, True), features(k, False), v)
    slow = quadratic_kernel_attention(reference_features(q, True), reference_features(k, False), v)
    assert fast.shape == (b, h, n, e) and fast.dtype == F64
    assert_close(fast, slow, 1e-12, f"{kernel}: output")
    grad_out = torch.randn_like(fast)
    g_fast = torch.autograd.grad(fast, (q, k, v), grad_out)
    g_slow = torch.autograd.grad(slow, (q, k, v), grad_out)
    for name, a, r in zip("qkv", g_fast, g_slow):
        assert_close(a, r, 1e-10, f"{kernel}: grad {name}")
        assert r.abs().max() > 0


def test_softmax_attention_matches_quadratic_reference():
    torch.manual_seed(7)
    b, h, n, d, dv = 2, 3, 13, 12, 8  # widened q, k (strategy 1) have d != dv
    q = torch.randn(b, h, n, d, dtype=F64, requires_grad=True)
    k = torch.randn(b, h, n, d, dtype=F64, requires_grad=True)
    v = torch.randn(b, h, n, dv, dtype=F64, requires_grad=True)
    fast = softmax_attention(q, k, v)
    for name, slow in (("quadratic_softmax_attention", quadratic_softmax_attention(q, k, v)),
                       ("reference", exact_softmax_attention(q, k, v))):
        assert_close(fast, slow, 1e-12, f"output vs {name}")
        grad_out = torch.randn_like(fast, generator=None)
        for gname, a, r in zip("qkv", torch.autograd.grad(fast, (q, k, v), grad_out, retain_graph=True),
                               torch.autograd.grad(slow, (q, k, v), grad_out, retain_graph=True)):
            assert_close(a, r, 1e-10, f"grad {gname} vs {name}")


# --------------------------------------------------------------------------- FeatureMap module


def test_feature_map_redraw_schedule_and_extra_state():
    torch.manual_seed(8)
    fm = FeatureMap(8, 20, redraw_interval=3)
    seen = [fm.projection.clone()]
    for _ in range(7):
        fm.step()
        seen.append(fm.projection.clone())
    changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]
    assert changed == [False, False, True, False, False, True, False], changed
    assert (fm.steps, fm.redraws) == (7, 2)
    fresh = FeatureMap(8, 20, redraw_interval=3)
    assert not torch.equal(fresh.projection, fm.projection)
    fresh.load_state_dict(fm.state_dict())
    assert torch.equal(fresh.projection, fm.projection)
    assert (fresh.seed, fresh.steps, fresh.redraws) == (fm.seed, fm.steps, fm.redraws)
    fm.redraw(), fresh.redraw()
    assert torch.equal(fresh.projection, fm.projection), "redraws after a reload differ from the original's"


def test_feature_map_kernel_is_pluggable():
    fm = FeatureMap(8, 16, kernel="relu")
    x = torch.randn(2, 5, 8)
    assert torch.equal(fm(x, is_query=True), relu_features(x, fm.projection, is_query=True))


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_self_attention_attend_matches_quadratic_reference(kernel):
    """The FAVOR+ path the models take (``SelfAttention.attend``), outputs and gradients in float64."""
    torch.manual_seed(9)
    b, h, n, d, m = 2, 4, 10, 8, 32
    attention = SelfAttention(ModelConfig(dim=h * d, heads=h, nb_features=m, kernel=kernel)).double()
    w = attention.feature_map.projection
    q, k, v = (torch.randn(b, h, n, d, dtype=F64, requires_grad=True) for _ in range(3))
    fast = attention.attend(q, k, v, AttentionContext(1, n - 1))
    if kernel == "softmax":
        slow = quadratic_kernel_attention(positive_random_features(q, w), positive_random_features(k, w), v)
    else:
        slow = quadratic_kernel_attention(relu_features(q, w, is_query=True), relu_features(k, w, is_query=False), v)
    assert fast.dtype == F64
    assert_close(fast, slow, 1e-12, f"{kernel}: output")
    grad_out = torch.randn_like(fast)
    for name, a, r in zip("qkv", torch.autograd.grad(fast, (q, k, v), grad_out), torch.autograd.grad(slow, (q, k, v), grad_out)):
        assert_close(a, r, 1e-10, f"{kernel}: grad {name}")
