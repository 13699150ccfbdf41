"""FAVOR+ attention compiled by ``torch.compile`` for training on the CPU.

The attention core (features of queries and keys, the two products, the normaliser)
spends most of its time in elementwise passes over (b, h, n, m) feature tensors and
in autograd's bookkeeping between them. Compiled by TorchInductor, the passes of the
forward and of the backward are fused into a few loops (the matrix products stay
oneDNN/MKL calls): one layer's core, forward and backward, 83 ms eager against 62 ms
compiled on split heads (:func:`attend`) and 57 ms compiled from the packed q/k/v
projection (:func:`attend_packed`, whose backward writes the projection's gradient
directly), at batch 16, 32 x 32 images, head dim 32 on a 2-core Xeon (``python
benchmarks/eval_paths.py --training-core``; ``benchmarks/results/cpu-2core/eval_paths.log``).
Only the cores are compiled (these two: the packed one for plain FAVOR+ layers, see
``SelfAttention.attend_qkv``, the split one for ClippedRelativePerformer's content heads;
and ExactRelativePerformer's
:func:`relative_performer.attention.periodic.separable_attention`): compiling the whole
model was slower (its dropout, in particular).

:func:`enable` turns it on for this process after a probe (a tiny compile with a
backward pass) succeeds; the probe fails where ``torch.compile`` cannot work (no C++
compiler, an unsupported Python), and training then stays eager. ``relative-performer
train`` enables it when it trains on the CPU (``--no_compile_attention``, or
``RELATIVE_PERFORMER_COMPILE=0`` in the environment, turns that off). It is used for
CPU tensors with autograd on; evaluation takes the chunked eager path of
:func:`relative_performer.attention.favor.attend_in_chunks`, and CUDA the eager one.
The compiled function gives the eager outputs and gradients up to rounding
(``tests/test_compiled.py``). Each new input shape compiles once (a few seconds), up to
``RECOMPILE_LIMIT`` shapes per function (torch's own limit, 8, is raised to it).
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

ENV = "RELATIVE_PERFORMER_COMPILE"

_enabled = False
_unavailable: str | None = None  # why the probe or a compile failed
_functions: dict[Callable[..., Tensor], Callable[..., Tensor]] = {}


def allowed_by_environment() -> bool:
    """False when ``RELATIVE_PERFORMER_COMPILE`` is 0, off, false or no."""
    return os.environ.get(ENV, "").strip().lower() not in ("0", "off", "false", "no")


def _core(q: Tensor, k: Tensor, v: Tensor, projection: Tensor, kernel: str) -> Tensor:
    """:func:`relative_performer.attention.favor.favor_attention`, (b, h, n, d) x3 -> (b, h, n, e), returned
    as a (b, n, h, e) layout (so merging the heads afterwards is a view: the compiled normaliser writes it directly)."""
    from relative_performer.attention import favor

    return favor.favor_attention(q, k, v, projection, kernel).transpose(1, 2).contiguous().transpose(1, 2)


def _packed_core(
    qkv: Tensor, q_extra: Tensor | None, k_extra: Tensor | None, projection: Tensor, kernel: str, heads: int
) -> Tensor:
    """FAVOR+ attention from the packed projection: qkv (b, n, 3 h d) -> (b, h, n, e), laid out (b, n, h, e)
    as :func:`_core`'s output is.

    Taking the projection whole (not its per-head views) lets the compiled backward write the
    gradient of ``qkv`` directly, instead of autograd stacking three per-head gradients and copying
    them into its layout (two passes); strategy 1's widening of queries and keys by ``q_extra``,
    ``k_extra`` (:func:`relative_performer.positional.constrained.widen`) is compiled with it.
    """
    from relative_performer.positional.constrained import widen

    q, k, v = rearrange(qkv, "b n (t h d) -> t b h n d", t=3, h=heads)
    if q_extra is not None:
        q, k = widen(q, k, q_extra, k_extra)
    return _core(q, k, v, projection, kernel)


def compiled_function(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``torch.compile(fn)``, made once per function (it compiles lazily, per input shape)."""
    if fn not in _functions:
        _functions[fn] = torch.compile(fn, dynamic=False)
    return _functions[fn]


def _reason(error: Exception) -> str:
    """``Type: first line of the message`` (at most 200 characters of it)."""
    message = str(error).strip()
    return f"{type(error).__name__}: {message.splitlines()[0][:200] if message else ''}".rstrip(": ")


RECOMPILE_LIMIT = 64  # compiled shapes kept per function (torch's default, 8, is soon reached by a benchmark or tests)


def _raise_recompile_limit() -> None:
    """Each input shape (and dtype, and autocast state) is a compiled entry of its own; past torch's limit
    of 8 per function, further shapes would silently run eagerly. Raised (never lowered) for the process."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the newer name and the older one
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))


def _probe() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 3, 2, generator=generator).requires_grad_() for _ in range(3))
    out = compiled_function(_core)(q, k, v, torch.randn(3, 2, generator=generator), "softmax")
    out.sum().backward()
    if not all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v)):
        raise RuntimeError("the probe's gradients are missing or not finite")


def enable() -> bool:
    """Turn the compiled attention on for CPU training in this process, if a probe compiles; True if on.

    A failing probe leaves it off and records why (:func:`unavailable_reason`).
    """
    global _enabled, _unavailable
    if _enabled:
        return True
    if _unavailable is not None:
        return False
    # torch's C++ build helper warns that no CUDA runtime is found: irrelevant for these CPU kernels
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    _raise_recompile_limit()
    try:
        _probe()
    except Exception as error:  # torch.compile can fail in many ways (no compiler, unsupported platform)
        _unavailable = _reason(error)
        return False
    _enabled = True
    return True


def disable() -> None:
    """Back to eager attention in training (the compiled functions are kept)."""
    global _enabled
    _enabled = False


def enabled() -> bool:
    return _enabled


def unavailable_reason() -> str | None:
    """Why :func:`enable` or a later compile failed, or None."""
    return _unavailable


def applies(q: Tensor) -> bool:
    """Whether ``FeatureMap.attend`` takes the compiled function for these queries."""
    return _enabled and q.device.type == "cpu" and torch.is_grad_enabled()


def call(fn: Callable[..., Tensor], *args) -> Tensor | None:
    """``fn(*args)`` compiled, or None if compiling failed (compiled attention is then off for the process)."""
    global _enabled, _unavailable
    try:
        return compiled_function(fn)(*args)
    except Exception as error:
        _enabled = False
        _unavailable = _reason(error)
        return None


def attend(kernel: str, q: Tensor, k: Tensor, v: Tensor, projection: Tensor) -> Tensor | None:
    """FAVOR+ attention compiled (see :func:`_core`), or None if compiling failed."""
    return call(_core, q, k, v, projection, kernel)


def attend_packed(
    kernel: str, qkv: Tensor, heads: int, projection: Tensor, q_extra: Tensor | None = None,
    k_extra: Tensor | None = None,
) -> Tensor | None:
    """FAVOR+ attention compiled from the packed projection (see :func:`_packed_core`), or None if compiling failed."""
    return call(_packed_core, qkv, q_extra, k_extra, projection, kernel, heads)
