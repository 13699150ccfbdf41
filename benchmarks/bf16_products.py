#!/usr/bin/env python
"""Would bf16 attention products make bf16 training 1.6x faster than fp32? (a design experiment)

    python benchmarks/bf16_products.py [--repeats 7]

Under bf16 autocast our FAVOR+ core runs its matrix products and its normaliser in float32
(``attention/favor.py``), so on the CPU the attention costs about as much in bf16 as in fp32
and a Performer training step gains ~1.4x where the attention-free floor gains ~1.65x. This
script measures the alternative: a core whose four forward and eight backward products (two of
them recomputing the features) run in bf16 (AMX on Xeons that have it; float32 accumulation,
bf16 outputs), with float32 kept for the exponentials, the key stabiliser, the normaliser and
the division. Autograd through such a mix saves fp32 and bf16 copies of the (b, h, n, m)
features, so the core here is a ``torch.autograd.Function`` with a hand-written backward that
recomputes the features (both halves ``torch.compile``'d, from the packed q/k/v projection as
``SelfAttention.attend_qkv`` passes it). It is not used by the package; it prints

1. errors against a float64 reference of the output and of the projection's gradient, for the
   package's core on bf16 inputs, this core in bf16, and this core in float32 (which checks the
   hand-written backward: it must agree to float32 rounding);
2. one layer's core, forward + backward, at the benchmark's sizes (16 x 4 heads x 1025 tokens,
   head dim 32, 110 features), medians of interleaved rounds;
3. whole Performer training steps (the benchmark's runner): fp32, bf16 as the package runs it,
   bf16 with this core, and the floor in both precisions, interleaved, with the speed-ups.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

from relative_performer.allocator import keep_freed_memory  # noqa: E402
from relative_performer.attention import compiled, favor  # noqa: E402


def _heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(b, n, 3 h d) -> q, k, v (b, h, n, d), contiguous (products of the strided views are slower)."""
    return tuple(t.contiguous() for t in rearrange(qkv, "b n (t h d) -> t b h n d", t=3, h=heads))


def _features(q: Tensor, k: Tensor, projection: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Query features (softmax over m, float32), the keys' exponent ``W k' - |k'|^2/2`` (float32), the
    scaled projection in q's dtype and the keys in float32; the two projections are products in q's
    dtype (bf16 under test)."""
    d = q.shape[-1]
    weights = (projection * d**-0.25).to(q.dtype)
    q_features = torch.softmax((q @ weights.T).float(), dim=-1)
    k32 = k.float()
    exponent = (k @ weights.T).float() - (k32 * k32).sum(-1, keepdim=True) * (0.5 / math.sqrt(d))
    return q_features, exponent, weights, k32


def core_forward(qkv: Tensor, projection: Tensor, heads: int):
    """(b, n, 3 h d) -> output (b, h, n, e) laid out (b, n, h, e), plus what the backward keeps."""
    q, k, v = _heads(qkv, heads)
    low = qkv.dtype
    q_features, exponent, _, _ = _features(q, k, projection)
    stabiliser = exponent.amax(dim=(-2, -1), keepdim=True)
    k_features = (exponent - stabiliser).exp()
    k_sum = k_features.sum(-2, keepdim=True)  # (b, h, 1, m) float32
    context = v.transpose(-1, -2) @ k_features.to(low)  # (b, h, e, m)
    numerator = q_features.to(low) @ context.transpose(-1, -2)  # (b, h, n, e)
    normaliser = (q_features * k_sum).sum(-1, keepdim=True)  # (b, h, n, 1) float32
    out = numerator.float() / normaliser
    return out.to(low).transpose(1, 2).contiguous().transpose(1, 2), out, normaliser, stabiliser, context, k_sum


def core_backward(qkv, projection, heads: int, grad, out, normaliser, stabiliser, context, k_sum) -> Tensor:
    """The gradient of the packed projection, the features recomputed."""
    q, k, v = _heads(qkv, heads)
    low, d = qkv.dtype, q.shape[-1]
    q_features, exponent, weights, k32 = _features(q, k, projection)
    k_features = (exponent - stabiliser).exp()
    grad = grad.float()
    grad_numerator = grad / normaliser
    grad_normaliser = -(grad * out).sum(-1, keepdim=True) / normaliser
    grad_qf = (grad_numerator.to(low) @ context).float() + grad_normaliser * k_sum
    grad_context = grad_numerator.to(low).transpose(-1, -2) @ q_features.to(low)  # (b, h, e, m)
    grad_k_sum = (grad_normaliser * q_features).sum(-2, keepdim=True)
    grad_q_logits = q_features * (grad_qf - (grad_qf * q_features).sum(-1, keepdim=True))  # softmax backward
    grad_q = grad_q_logits.to(low) @ weights
    grad_exponent = ((v @ grad_context).float() + grad_k_sum) * k_features
    grad_v = k_features.to(low) @ grad_context.transpose(-1, -2)
    grad_k = (grad_exponent.to(low) @ weights).float() - grad_exponent.sum(-1, keepdim=True) * k32 / math.sqrt(d)
    return rearrange(torch.stack((grad_q.float(), grad_k, grad_v.float())), "t b h n d -> b n (t h d)").to(low)


class LowPrecisionProducts(torch.autograd.Function):
    forward_fn = backward_fn = None

    @staticmethod
    def forward(ctx, qkv: Tensor, projection: Tensor, heads: int) -> Tensor:
        result, *kept = LowPrecisionProducts.forward_fn(qkv, projection, heads)
        ctx.save_for_backward(qkv, projection, *kept)
        ctx.heads = heads
        return result

    @staticmethod
    def backward(ctx, grad: Tensor):
        qkv, projection, *kept = ctx.saved_tensors
        return LowPrecisionProducts.backward_fn(qkv, projection, ctx.heads, grad, *kept), None, None


def timed(step: Callable[[], None]) -> Callable[[], float]:
    """``step`` as a job of :func:`bench.interleaved`: runs it once, returns its seconds."""
    def job() -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    return job


def medians(jobs: dict, repeats: int) -> dict:
    """Median seconds of each step, interleaved (:func:`bench.interleaved`, 2 warm-up rounds)."""
    times = bench.interleaved({name: timed(step) for name, step in jobs.items()}, 2, repeats)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    keep_freed_memory()
    if not compiled.enable():
        sys.exit(f"torch.compile does not work here: {compiled.unavailable_reason()}")
    LowPrecisionProducts.forward_fn = compiled.compiled_function(core_forward)
    LowPrecisionProducts.backward_fn = compiled.compiled_function(core_backward)

    torch.manual_seed(0)
    b, h, n, d = bench.BATCH, bench.HEADS, bench.SIDE**2 + 1, bench.DIM // bench.HEADS
    projection = favor.orthogonal_gaussian_matrix(favor.default_nb_features(d), d)
    qkv0, grad0 = torch.randn(b, n, 3 * h * d), torch.randn(b, h, n, d)

    def package_core(qkv):
        return compiled.attend_packed("softmax", qkv, h, projection)

    def this_core(qkv):
        return LowPrecisionProducts.apply(qkv, projection, h)

    reference = qkv0.double().requires_grad_()
    expected = compiled._packed_core(reference, None, None, projection.double(), "softmax", h)
    expected.backward(grad0.double())
    print(f"1. errors against float64 (relative Frobenius norms), {b} x {h} heads x {n} tokens, head dim {d}:")
    for name, core, dtype in (("package core, bf16 inputs", package_core, torch.bfloat16),
                              ("bf16 products", this_core, torch.bfloat16),
                              ("same core in float32", this_core, torch.float32)):
        qkv = qkv0.to(dtype).requires_grad_()
        out = core(qkv)
        out.backward(grad0.to(out.dtype))
        error_out = (out.double() - expected).norm() / expected.norm()
        error_grad = (qkv.grad.double() - reference.grad).norm() / reference.grad.norm()
        print(f"   {name:28s} output {error_out:.1e}  gradient {error_grad:.1e}")

    def core_step(core, dtype):
        inputs = qkv0.to(dtype)  # cast once, outside the timed step

        def step():
            qkv = inputs.detach().requires_grad_()
            out = core(qkv)
            out.backward(grad0.to(out.dtype))
        return step

    seconds = medians({"package core, fp32": core_step(package_core, torch.float32),
                           "package core, bf16 inputs": core_step(package_core, torch.bfloat16),
                           "bf16 products": core_step(this_core, torch.bfloat16)}, args.repeats)
    print(f"\n2. one layer's core, forward + backward, medians of {args.repeats}:")
    for name, median in seconds.items():
        print(f"   {name:28s} {median * 1e3:6.1f} ms")

    package_attend_packed = compiled.attend_packed
    use_this_core = [False]

    def attend_packed(kernel, qkv, heads, projection, q_extra=None, k_extra=None):
        if use_this_core[0] and qkv.dtype == torch.bfloat16 and q_extra is None and kernel == "softmax":
            return LowPrecisionProducts.apply(qkv, projection, heads)
        return package_attend_packed(kernel, qkv, heads, projection, q_extra, k_extra)

    compiled.attend_packed = attend_packed
    cpu = torch.device("cpu")
    performer, floor = bench.Runner(bench.REFERENCE, bench.SIDE, b, cpu), bench.Runner(bench.FLOOR, bench.SIDE, b, cpu)

    def train(runner, precision, this):
        def step():
            use_this_core[0] = this
            runner.train_step(precision)
        return step

    seconds = medians({"Performer fp32": train(performer, "fp32", False),
                           "Performer bf16 (package)": train(performer, "bf16", False),
                           "Performer bf16 products": train(performer, "bf16", True),
                           "floor fp32": train(floor, "fp32", False),
                           "floor bf16": train(floor, "bf16", False)}, args.repeats)
    print(f"\n3. training steps (batch {b}, {bench.SIDE}x{bench.SIDE}), medians of {args.repeats} interleaved rounds:")
    for name, median in seconds.items():
        print(f"   {name:28s} {median * 1e3:6.0f} ms")
    fp32 = seconds["Performer fp32"]
    print(f"   speed-up over fp32: package bf16 {fp32 / seconds['Performer bf16 (package)']:.2f}x, "
          f"bf16 products {fp32 / seconds['Performer bf16 products']:.2f}x, "
          f"floor {seconds['floor fp32'] / seconds['floor bf16']:.2f}x")


if __name__ == "__main__":
    main()
