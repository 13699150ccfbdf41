"""The fast paths of issue 5 against the straightforward code they replaced.

Each rewritten computation is compared, outputs and gradients, in float64 on seeded
random inputs, with the maximum absolute error in the failure message:

* ``softmax_features`` (row terms folded into one subtraction) vs the textbook formula;
* ``softmax_features_up_to_scale`` / ``FeatureMap.attend`` (factors that cancel left out)
  vs ``linear_attention`` of the full features;
* ``ring_sums`` (rotated-grid prefix sums) vs the ring-kernel convolution;
* ``clipped_relative_attention`` (summed by parts, hand-written backward) vs the
  ring-sum formulation it replaced;
* whole models with their fast paths vs the same weights with the straightforward ones;
* the evaluation paths (autograd off, CPU): ``attend_in_chunks`` vs one call on the whole
  batch, oneDNN's fused linear layers (``models/fused.py``) vs ``nn.Linear`` and ``GELU``,
  and whole models evaluated with both vs without.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relative_performer.attention import clipped as clipped_module
from relative_performer.attention import favor
from relative_performer.attention.clipped import (
    _prefix_sums_,
    clipped_relative_attention,
    manhattan_ring_kernels,
    ring_sums,
)
from relative_performer.attention.favor import (
    FeatureMap,
    linear_attention,
    orthogonal_gaussian_matrix,
    relu_features,
    softmax_features,
    softmax_features_up_to_scale,
)
from relative_performer.models import create_model, fused
from relative_performer.models.blocks import FeedForward

F64 = torch.float64
RING_SHAPES = [(5, 7, 3), (6, 3, 3), (5, 7, 12), (6, 3, 1), (4, 9, 2), (1, 6, 3), (8, 8, 8)]  # (height, width, C)


def assert_close(actual, expected, atol, what):
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.1e}"


def assert_grads_close(fast, slow, inputs, atol, what):
    grad_out = torch.randn_like(fast)
    for i, (a, r) in enumerate(zip(torch.autograd.grad(fast, inputs, grad_out), torch.autograd.grad(slow, inputs, grad_out))):
        assert_close(a, r, atol, f"{what}: grad of input {i}")
        assert r.abs().max() > 0, f"{what}: grad of input {i} vanishes (vacuous)"


# --------------------------------------------------------------------------- straightforward versions


def straightforward_softmax_features(x, projection, *, is_query):
    """The formula as written before the rewrite: scale x, subtract |x'|^2 / 2, stabilise, exp, scale."""
    dim, m = x.shape[-1], projection.shape[0]
    x = x * dim**-0.25
    logits = x @ projection.to(x.dtype).T - 0.5 * (x * x).sum(dim=-1, keepdim=True)
    stabiliser = logits.amax(dim=-1, keepdim=True) if is_query else logits.amax(dim=(-1, -2), keepdim=True)
    return torch.exp(logits - stabiliser.detach()) * m**-0.5


def conv_ring_sums(values, height, width, kernels):
    """Ring sums as a 2-D convolution with the diamond-ring kernels (the original implementation)."""
    b, h, n, e = values.shape
    grid = values.permute(0, 1, 3, 2).reshape(b * h * e, 1, height, width)
    sums = F.conv2d(grid, kernels.to(grid.dtype), padding=kernels.shape[-1] // 2)  # ((b h e), C, y, x)
    return sums.reshape(b, h, e, -1, height * width).permute(0, 1, 4, 3, 2)


def ring_sum_attention(scores, v, height, width, kernels):
    """Clipped relative attention from ring sums (the original formulation): global term plus window."""
    far = scores[..., -1:]
    near = scores[..., :-1] - far
    v1 = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)
    out = far * v1.sum(dim=-2, keepdim=True)
    window = torch.einsum("bhnc,bhnce->bhne", near[:, :, 1:], conv_ring_sums(v1[:, :, 1:], height, width, kernels))
    out = torch.cat((out[:, :, :1], out[:, :, 1:] + window), dim=2)
    return out[..., :-1] / out[..., -1:]


# --------------------------------------------------------------------------- FAVOR+ features


@pytest.mark.parametrize("is_query", [True, False], ids=["query", "key"])
def test_softmax_features_match_the_straightforward_formula(is_query):
    torch.manual_seed(0)
    w = orthogonal_gaussian_matrix(40, 12, dtype=F64)
    x = (torch.randn(2, 3, 17, 12, dtype=F64) * 1.5).requires_grad_()
    fast = softmax_features(x, w, is_query=is_query)
    slow = straightforward_softmax_features(x, w, is_query=is_query)
    assert fast.dtype == F64
    assert_close(fast, slow, 1e-14, "features")
    assert_grads_close(fast, slow, (x,), 1e-12, "features")


def test_softmax_features_stay_float32_from_half_inputs():
    w = orthogonal_gaussian_matrix(20, 8)
    x = torch.randn(2, 5, 8)
    for dtype in (torch.bfloat16, torch.float16):
        phi = softmax_features(x.to(dtype), w, is_query=False)
        assert phi.dtype == torch.float32
        assert_close(phi, softmax_features(x.to(dtype).float(), w, is_query=False), 1e-6, f"{dtype} input")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for fn in (softmax_features, softmax_features_up_to_scale):
            assert fn(x, w, is_query=True).dtype == torch.float32, f"{fn.__name__} under autocast"
        out = linear_attention(softmax_features(x, w, is_query=True), softmax_features(x, w, is_query=False), x)
    assert out.dtype == torch.float32, "linear attention (normaliser) must stay float32 under autocast"


def test_up_to_scale_features_differ_by_cancelling_factors_only():
    """Ratio to the full features: one factor per query row, one per key (sample, head)."""
    torch.manual_seed(1)
    w = orthogonal_gaussian_matrix(24, 8, dtype=F64)
    x = torch.randn(2, 3, 7, 8, dtype=F64) * 2
    q_ratio = softmax_features_up_to_scale(x, w, is_query=True) / softmax_features(x, w, is_query=True)
    assert_close(q_ratio, q_ratio[..., :1].expand_as(q_ratio), 1e-9 * q_ratio.max().item(), "query factor varies along m")
    k_ratio = (softmax_features_up_to_scale(x, w, is_query=False) / softmax_features(x, w, is_query=False)).flatten(-2)
    assert_close(k_ratio, k_ratio[..., :1].expand_as(k_ratio), 1e-9 * k_ratio.max().item(), "key factor varies in a (sample, head)")
    # stabilised: query rows sum to 1 (a softmax), the largest key of a (sample, head) is 1
    assert_close(softmax_features_up_to_scale(x, w, is_query=True).sum(-1), torch.ones(2, 3, 7, dtype=F64), 1e-12, "query sum")
    assert_close(softmax_features_up_to_scale(x, w, is_query=False).amax((-1, -2)), torch.ones(2, 3, dtype=F64), 1e-12, "key max")


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_feature_map_attend_matches_linear_attention_of_full_features(kernel, scale):
    torch.manual_seed(2)
    fm = FeatureMap(16, 48, kernel=kernel).double()
    q, k = (torch.randn(2, 3, 21, 16, dtype=F64) * scale for _ in range(2))
    v = torch.randn(2, 3, 21, 16, dtype=F64)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    features = softmax_features if kernel == "softmax" else relu_features
    fast = fm.attend(q, k, v)
    slow = linear_attention(straightforward_softmax_features(q, fm.projection, is_query=True) if kernel == "softmax"
                            else features(q, fm.projection, is_query=True),
                            straightforward_softmax_features(k, fm.projection, is_query=False) if kernel == "softmax"
                            else features(k, fm.projection, is_query=False), v)
    assert_close(fast, slow, 1e-12, f"{kernel} attention")
    assert_grads_close(fast, slow, (q, k, v), 1e-10, f"{kernel} attention")


# --------------------------------------------------------------------------- strategy 2


@pytest.mark.parametrize("shape", [(3, 9, 9, 4), (50, 20, 20, 100)], ids=["one chunk", "batch chunks"])
def test_prefix_sums_match_cumsum(shape):
    torch.manual_seed(3)
    grid = torch.randn(shape, dtype=F64)
    assert_close(_prefix_sums_(grid.clone()), grid.cumsum(1).cumsum(2), 1e-10, "in-place prefix sums")


@pytest.mark.parametrize("height,width,clipping_dist", RING_SHAPES)
def test_ring_sums_match_the_convolution(height, width, clipping_dist):
    torch.manual_seed(height * 100 + width * 10 + clipping_dist)
    kernels = manhattan_ring_kernels(clipping_dist).double()
    values = torch.randn(2, 3, height * width, 5, dtype=F64, requires_grad=True)
    fast = ring_sums(values, height, width, kernels)
    slow = conv_ring_sums(values, height, width, kernels)
    assert fast.shape == (2, 3, height * width, clipping_dist, 5)
    assert_close(fast, slow, 1e-12, "ring sums")
    assert_grads_close(fast, slow, (values,), 1e-12, "ring sums")


@pytest.mark.parametrize("height,width,clipping_dist", RING_SHAPES)
def test_clipped_attention_matches_the_ring_sum_formulation(height, width, clipping_dist):
    torch.manual_seed(height * 100 + width * 10 + clipping_dist + 1)
    kernels = manhattan_ring_kernels(clipping_dist).double()
    n = 1 + height * width
    scores = torch.rand(2, 3, n, clipping_dist + 1, dtype=F64).add(0.05).requires_grad_()
    v = torch.randn(2, 3, n, 6, dtype=F64, requires_grad=True)
    fast = clipped_relative_attention(scores, v, height, width, kernels)
    slow = ring_sum_attention(scores, v, height, width, kernels)
    assert_close(fast, slow, 1e-12, "output")
    assert_grads_close(fast, slow, (scores, v), 1e-11, "clipped attention")


def test_clipped_attention_float32_error_is_no_worse_than_the_convolution():
    """Diamond sums subtract large prefix sums: in float32 (32 x 32 and 64 x 64, values with an offset that
    makes the partial sums large) the output and gradients stay as close to float64 as the convolution's."""
    torch.manual_seed(4)
    kernels = manhattan_ring_kernels(8)
    for side in (32, 64):
        n = 1 + side * side
        scores0, v0, grad0 = torch.rand(2, 2, n, 9).add(0.05), torch.randn(2, 2, n, 32) + 3.0, torch.randn(2, 2, n, 32)
        results = {}
        for name, fn in (("fast", clipped_relative_attention), ("conv", ring_sum_attention)):
            for dtype in (torch.float32, F64):
                scores, v = (t.to(dtype).requires_grad_() for t in (scores0, v0))
                out = fn(scores, v, side, side, kernels.to(dtype))
                results[name, dtype] = (out, *torch.autograd.grad(out, (scores, v), grad0.to(dtype)))
        for what, fast, conv, exact in zip(("output", "grad scores", "grad v"), results["fast", torch.float32],
                                           results["conv", torch.float32], results["conv", F64]):
            fast_err, conv_err = ((t.double() - exact).abs().max().item() / exact.abs().max().item() for t in (fast, conv))
            assert fast_err <= 2 * conv_err + 1e-7, f"{side}x{side} {what}: float32 relative error {fast_err:.1e}, conv {conv_err:.1e}"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert clipped_relative_attention(scores0, v0.bfloat16(), side, side, kernels).dtype == torch.float32


# --------------------------------------------------------------------------- whole models


def _straightforward_attend(self, q, k, v):
    return linear_attention(straightforward_softmax_features(q, self.projection, is_query=True),
                            straightforward_softmax_features(k, self.projection, is_query=False), v)


def _straightforward_relative_scores(self, q):
    q_features = straightforward_softmax_features(q, self.feature_map.projection, is_query=True)
    r_features = straightforward_softmax_features(self.relative_keys, self.feature_map.projection, is_query=False)
    return q_features @ r_features.transpose(-1, -2)


def _loss_and_grads(model, images):
    model.zero_grad(set_to_none=True)
    logits = model(images)
    logits.pow(2).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["Performer", "RelativePerformer", "ClippedRelativePerformer"])
def test_models_match_their_straightforward_versions(name, monkeypatch):
    """Same weights, eval mode, float64: fast paths vs the straightforward functions, logits and every gradient."""
    torch.manual_seed(5)
    model = create_model(model=name, dim=32, depth=2, heads=4, nb_features=24, clipping_dist=3).double().eval()
    images = torch.rand(2, 1, 6, 7, dtype=F64)
    fast_logits, fast_grads = _loss_and_grads(model, images)
    monkeypatch.setattr(FeatureMap, "attend", _straightforward_attend)
    monkeypatch.setattr(clipped_module, "clipped_relative_attention", ring_sum_attention)
    monkeypatch.setattr(clipped_module.ClippedRelativeAttention, "relative_scores", _straightforward_relative_scores)
    slow_logits, slow_grads = _loss_and_grads(model, images)
    assert_close(fast_logits, slow_logits, 1e-10, f"{name} logits")
    assert fast_grads.keys() == slow_grads.keys()
    for key in fast_grads:
        assert_close(fast_grads[key], slow_grads[key], 1e-9 * max(1.0, slow_grads[key].abs().max().item()), f"{name} grad {key}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["Performer", "RelativePerformer", "ClippedRelativePerformer"])
def test_models_on_cuda_match_the_cpu(name):
    torch.manual_seed(6)
    model = create_model(model=name, dim=32, depth=2, heads=4, nb_features=24, clipping_dist=4).double().eval()
    images = torch.rand(2, 1, 9, 8, dtype=F64)
    cpu_logits, cpu_grads = _loss_and_grads(model, images)
    cuda_logits, cuda_grads = _loss_and_grads(model.cuda(), images.cuda())
    assert_close(cuda_logits.cpu(), cpu_logits, 1e-10, f"{name} logits")
    for key in cpu_grads:
        assert_close(cuda_grads[key].cpu(), cpu_grads[key], 1e-9 * max(1.0, cpu_grads[key].abs().max().item()), f"grad {key}")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(model.float()(images.cuda().float())).all()


# --------------------------------------------------------------------------- evaluation (autograd off, CPU)


@pytest.mark.parametrize("pairs, calls", [(6, 3), (3, 5), (2, 10), (1, 15), (15, 1)], ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_attend_in_chunks_matches_one_call(pairs, calls, dtype, monkeypatch):
    """5 samples x 3 heads taken ``pairs`` (sample, head) pairs at a time: whole samples (uneven last
    chunk), a few heads of a sample, one head, or everything at once; same output as one call."""
    torch.manual_seed(11)
    fm = FeatureMap(16, 48).to(dtype)
    qkv = torch.randn(5, 21, 3, 3, 16, dtype=dtype) * 2  # (b, n, t, h, d), permuted views as the models make them
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    whole = fm._attend_all(q, k, v)
    monkeypatch.setattr(favor, "CHUNK_FEATURES", pairs * 21 * 48)
    seen = []
    original = fm._attend_all
    monkeypatch.setattr(fm, "_attend_all", lambda *t: seen.append(t[0].shape[:2]) or original(*t))
    with torch.no_grad():
        chunked = fm.attend(q, k, v)
    assert len(seen) == calls, seen
    assert sum(s[0] * s[1] for s in seen) == 15
    assert chunked.shape == whole.shape
    if calls > 1:  # written into a (b, n, h, e) buffer: merging the heads is a view
        assert chunked.transpose(1, 2).is_contiguous()
    assert_close(chunked, whole, 1e-12 if dtype == F64 else 1e-5, f"{pairs} pairs per chunk")
    assert whole.abs().max() > 0.1


def test_attend_takes_the_whole_batch_with_autograd(monkeypatch):
    monkeypatch.setattr(favor, "CHUNK_FEATURES", 1)
    called = []
    monkeypatch.setattr(favor, "attend_in_chunks", lambda *a: called.append(1))
    fm = FeatureMap(8, 16)
    q, k, v = (torch.randn(2, 2, 5, 8, requires_grad=True) for _ in range(3))
    fm.attend(q, k, v).sum().backward()
    assert not called and q.grad is not None
    with torch.no_grad():
        fm.attend(q, k, v)
    assert called


needs_onednn = pytest.mark.skipif(
    fused._linear_pointwise is None or not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"
)


@needs_onednn
@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("shape", [(3, 17, 24), (40, 24)], ids=["3d", "2d"])
def test_fused_linear_matches_linear_and_gelu(activation, shape):
    torch.manual_seed(12)
    layer = torch.nn.Linear(24, 40)
    x = torch.randn(*shape)
    reference = layer(x) if activation == "none" else F.gelu(layer(x))
    with torch.no_grad():
        assert fused.usable(x, layer)
        out = fused.linear(x, layer, activation)
    assert_close(out, reference, 1e-5, f"fused linear ({activation})")
    assert reference.abs().max() > 0.5


@needs_onednn
def test_fused_linear_only_without_autograd_float32_and_autocast():
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    assert not fused.usable(x, layer)  # autograd on
    with torch.no_grad():
        assert fused.usable(x, layer)
        assert not fused.usable(x.double(), torch.nn.Linear(4, 4).double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused.usable(x, layer)
    out = fused.linear(x, layer, "gelu")  # with autograd: the ordinary layers, differentiable
    out.sum().backward()
    assert layer.weight.grad is not None
    with pytest.raises(ValueError, match="activation"):
        fused.linear(x, layer, "relu")


def test_fused_linear_falls_back_for_good_when_the_kernel_fails(monkeypatch):
    def failing(*args):
        calls.append(1)
        raise RuntimeError("unsupported on this CPU")

    calls = []
    monkeypatch.setattr(fused, "_linear_pointwise", failing)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    layer, x = torch.nn.Linear(4, 3), torch.randn(2, 4)
    with torch.no_grad():
        assert_close(fused.linear(x, layer, "gelu"), F.gelu(layer(x)), 1e-6, "fallback")
        assert fused._linear_pointwise is None and not fused.usable(x, layer)
        fused.linear(x, layer)
    assert calls == [1]


@needs_onednn
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-mode dropout"])
def test_feed_forward_fused_matches_unfused(train, monkeypatch):
    torch.manual_seed(13)
    ff = FeedForward(16, 4, dropout=0.3).train(train)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        torch.manual_seed(0)
        fast = ff(x)
        monkeypatch.setattr(fused, "ENABLED", False)
        torch.manual_seed(0)
        slow = ff(x)
    assert_close(fast, slow, 1e-5, "feed-forward")


@pytest.mark.parametrize("name", ["Performer", "NoposPerformer", "RelativePerformer", "ClippedRelativePerformer",
                                  "ExactRelativePerformer"])
def test_models_evaluate_alike_with_and_without_the_evaluation_paths(name, monkeypatch):
    """Eval-mode float32 logits under ``torch.inference_mode`` (chunked attention, fused layers, with a chunk
    size small enough to split this batch) against the same forward with autograd on (neither path)."""
    torch.manual_seed(14)
    model = create_model(model=name, dim=32, depth=2, heads=4, nb_features=24, clipping_dist=3).eval()
    images = torch.rand(3, 1, 6, 7)
    with_autograd = model(images)
    monkeypatch.setattr(favor, "CHUNK_FEATURES", 43 * 24 * 4)  # one sample per chunk
    with torch.inference_mode():
        evaluated = model(images)
    assert_close(evaluated, with_autograd.detach(), 1e-5, f"{name} logits")
