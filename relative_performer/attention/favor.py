"""FAVOR+ attention (Choromanski et al., "Rethinking Attention with Performers", 2021).

Pure functions for the math, one thin module (:class:`FeatureMap`) for the state.

Shape legend:
    b - batch, h - heads, n - tokens (queries), j - tokens (keys),
    d - head dim, m - random features, e - value dim (+1 for the normaliser)

Softmax attention weights ``exp(q . k / sqrt(d))`` are estimated by positive
random features ``phi(x) = m**-0.5 * exp(W x' - |x'|^2 / 2)`` with
``x' = x * d**-0.25`` and ``W`` of shape (m, d), so that
``E_W[phi(q) . phi(k)] = exp(q . k / sqrt(d))``. Attention then costs O(n m d).

:func:`softmax_features` computes these features (up to the detached stabilisers);
the attention layers use :func:`softmax_features_up_to_scale`, which leaves out the
factors that cancel in the normalised output (tested against the former in
``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relative_performer.attention import compiled


def default_nb_features(dim_head: int) -> int:
    """Performer's default number of random features, ``int(d * ln d)``."""
    return max(1, int(dim_head * math.log(dim_head))) if dim_head > 1 else 1


def orthogonal_gaussian_matrix(
    nb_features: int, dim: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(m, d) matrix of stacked random orthogonal (d, d) blocks, rows rescaled to chi(d) norms.

    Each block is the Q of a Gaussian matrix's QR decomposition (sign-corrected, so
    Haar distributed); row norms are drawn as the norms of Gaussian vectors, which
    makes each row marginally N(0, I) while rows within a block stay orthogonal
    (Choromanski et al. 2021, section 2.4). Drawn on the CPU in float64.
    """
    blocks = []
    for _ in range(math.ceil(nb_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        blocks.append(q.T)
    directions = torch.cat(blocks)[:nb_features]
    norms = torch.randn(nb_features, dim, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (norms * directions).to(dtype)


def _float_dtype(x: Tensor) -> torch.dtype:
    """float32 for half inputs, else the input's own floating dtype (float64 stays float64 in tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def autocast_off(device: torch.device):
    """A context that turns autocast off on ``device`` (a no-op where it is off or unsupported, e.g. meta)."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # device types that have no autocast
        pass
    return contextlib.nullcontext()


def _projection_logits(x: Tensor, projection: Tensor) -> Tensor:
    """``W x'`` (..., n, m) for ``x' = x d**-0.25``, a fresh tensor in float32 (or float64).

    The scale is folded into the small (m, d) matrix instead of the (..., n, d) input.
    The product runs in float32 under autocast too: the features are exponentials of
    it, and a half-precision product would also cost two conversions of the (..., n, m)
    tensor (forward and backward) that outweigh its speed.
    """
    dtype = _float_dtype(x)
    # contiguous: a (b, h, n, d) view of the qkv projection would make matmul fall back to a slower bmm
    x = x.to(dtype).contiguous()
    with autocast_off(x.device):
        return x @ _scaled_projection(projection, x).T


def _scaled_projection(projection: Tensor, x: Tensor) -> Tensor:
    """``W d**-0.25`` (m, d) in x's dtype: the scale of ``x' = x d**-0.25`` folded into the small matrix."""
    return projection.to(x.dtype) * x.shape[-1] ** -0.25


def _half_sq_norm(x: Tensor) -> Tensor:
    """``|x'|^2 / 2`` (..., n, 1) for ``x' = x d**-0.25``, in float32 or wider."""
    x = x.to(_float_dtype(x))
    return (x * x).sum(dim=-1, keepdim=True) * (0.5 / math.sqrt(x.shape[-1]))


def softmax_features(x: Tensor, projection: Tensor, *, is_query: bool) -> Tensor:
    """Positive random features of the softmax kernel: (..., n, d) -> (..., n, m).

    A stabiliser is subtracted before ``exp`` and detached: the maximum over the
    features of each row for queries (a per-row factor, cancels in the ratio of
    :func:`linear_attention`), and the maximum over all tokens and features of each
    (sample, head) for keys (a per-(sample, head) factor, cancels likewise). Taking
    the key maximum over the whole batch instead would make samples depend on each
    other. Computed in float32 even under autocast: the exponentials overflow in half.

    Equal to ``exp(W x' - |x'|^2/2 - stabiliser) * m**-0.5`` with the stabiliser the
    maximum of the exponent. The row terms (``|x'|^2 / 2``, the row maxima and
    ``log m**-0.5``) are combined on (..., n, 1) tensors so that the (..., n, m) tensor
    sees one in-place addition and one in-place ``exp`` (``max(a - s) == max(a) - s``
    exactly in floating point, rounding being monotone).
    """
    logits, half_sq_norm = _projection_logits(x, projection), _half_sq_norm(x)
    with torch.no_grad():
        stabiliser = logits.amax(dim=-1, keepdim=True) - half_sq_norm  # max over m of the exponent, per row
        if not is_query:
            stabiliser = stabiliser.amax(dim=-2, keepdim=True)  # ... and over the tokens of each (sample, head)
        stabiliser += 0.5 * math.log(projection.shape[0])  # the factor m**-0.5
    # logits is a fresh tensor: in place saves two allocations; adding the negated (..., n, 1) shift
    # (not subtracting it) spares the backward a negation of the (..., n, m) gradient
    return logits.add_(-(half_sq_norm + stabiliser)).exp_()


def softmax_features_up_to_scale(x: Tensor, projection: Tensor, *, is_query: bool) -> Tensor:
    """:func:`softmax_features` without the factors that cancel in a normalised attention.

    Queries: ``softmax_m(W x')``, i.e. :func:`softmax_features` times a positive factor
    per row (``m**0.5 exp(|x'|^2 / 2)``, the stabiliser and the softmax's sum), computed
    by one fused softmax instead of max, subtract and exp. Keys: :func:`softmax_features`
    times one detached factor per (sample, head) (``m**0.5`` and the stabiliser). Any
    attention that divides by ``phi(q) . sum_j phi(k_j)`` (:func:`linear_attention`, the
    clipped relative heads) gives the same output and, the factors cancelling, the same
    gradients with either; this one skips the query norms and two passes over the
    (..., n, m) tensor.
    """
    if is_query:
        return torch.softmax(_projection_logits(x, projection), dim=-1)
    exponent = _key_exponent(x, projection)
    with torch.no_grad():
        stabiliser = exponent.amax(dim=(-2, -1), keepdim=True)
    return exponent.sub_(stabiliser).exp_()


def _key_exponent(x: Tensor, projection: Tensor) -> Tensor:
    """``W x' - |x'|^2 / 2`` (..., n, m) as one matrix product, a fresh tensor in float32 (or float64).

    The input is widened by its own ``|x'|^2 / 2`` and the (m, d) matrix by a column of -1:
    ``[x, |x'|^2 / 2] . [W d**-0.25, -1] = W x' - |x'|^2 / 2``. The product then subtracts the
    norms, and in the backward pass it also sums the exponent's gradient over the features
    (the norms' gradient, its last column), which would otherwise take a pass of its own
    over the (..., n, m) gradient. Under autocast it runs in float32, like
    :func:`_projection_logits`.
    """
    dtype = _float_dtype(x)
    x = x.to(dtype)
    with autocast_off(x.device):
        widened = torch.cat((x, _half_sq_norm(x)), dim=-1)
        weights = _scaled_projection(projection, x)
        weights = torch.cat((weights, weights.new_full((weights.shape[0], 1), -1.0)), dim=-1)
        return widened @ weights.T


def relu_features(x: Tensor, projection: Tensor, *, is_query: bool, eps: float = 1e-3) -> Tensor:
    """Generalized-kernel features ``relu(W x') + eps`` (Performer's 'generalized attention')."""
    del is_query  # no stabiliser needed: the features are not exponentials
    return F.relu(_projection_logits(x, projection)) + eps


KERNELS: dict[str, Callable[..., Tensor]] = {"softmax": softmax_features, "relu": relu_features}
# Features up to factors that cancel in normalised attention (see softmax_features_up_to_scale).
KERNELS_UP_TO_SCALE: dict[str, Callable[..., Tensor]] = {"softmax": softmax_features_up_to_scale, "relu": relu_features}


def with_ones(v: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``[v, 1]`` (..., e + 1) in ``dtype``: the column of ones carries the normaliser through the sums."""
    dtype = dtype or v.dtype
    return torch.cat((v.to(dtype), v.new_ones(v.shape[:-1] + (1,), dtype=dtype)), dim=-1)


def normalise(out: Tensor) -> Tensor:
    """(..., e + 1) numerator and normaliser (the sums of ``[v, 1]``) -> (..., e)."""
    numerator, denominator = out[..., :-1], out[..., -1:]
    # multiply by the (..., n, 1) reciprocal: cheaper than dividing, forward and backward
    return numerator * denominator.clamp_min(torch.finfo(denominator.dtype).tiny).reciprocal()


def linear_attention(q_features: Tensor, k_features: Tensor, v: Tensor) -> Tensor:
    """Non-causal kernelized attention ``phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1)``.

    q_features (..., n, m), k_features (..., j, m), v (..., j, e) -> (..., n, e).
    The normaliser rides along as an extra value column of ones, so numerator and
    denominator come out of the same two matrix products. O(n m e), no n x j tensor.
    Both products run in the features' float dtype even under autocast: the
    normaliser sums n positive terms and is divided by.
    """
    dtype = torch.promote_types(torch.promote_types(q_features.dtype, k_features.dtype), torch.float32)
    with autocast_off(q_features.device):
        v1 = with_ones(v, dtype)
        # context as (..., e + 1, m), used transposed: the gradients of both feature tensors then
        # come out of the matmuls contiguous (else autograd copies them before the projection's backward)
        context = v1.transpose(-1, -2) @ k_features.to(dtype)  # (..., e + 1, m)
        out = q_features.to(dtype) @ context.transpose(-1, -2)  # (..., n, e + 1)
    return normalise(out)


def favor_attention(q: Tensor, k: Tensor, v: Tensor, projection: Tensor, kernel: str = "softmax") -> Tensor:
    """FAVOR+ attention (b, h, n, d) x3 -> (b, h, n, e): :func:`linear_attention` of the features of
    ``projection`` up to the factors that cancel (``KERNELS_UP_TO_SCALE[kernel]``)."""
    features = KERNELS_UP_TO_SCALE[kernel]
    return linear_attention(features(q, projection, is_query=True), features(k, projection, is_query=False), v)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Exact softmax attention ``softmax(q k^T / sqrt(d)) v`` (the ``--no_projection`` path).

    Quadratic in time; torch's fused kernel keeps the memory linear on CPU and GPU.
    """
    return F.scaled_dot_product_attention(q, k, v.to(q.dtype))


def quadratic_softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Straightforward reference for tests: materialises the (n, j) weights."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


CHUNK_FEATURES = 2**21  # feature entries (tokens x features x pairs) per chunk of attend_in_chunks: 8 MB in float32


def attend_in_chunks(
    attend: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor, nb_features: int
) -> Tensor:
    """``attend(q, k, v)`` (b, h, n, d) x3 -> (b, h, n, e), a few (sample, head) pairs at a time.

    For evaluation on the CPU. FAVOR+ treats every (sample, head) pair on its own (the key
    stabiliser is per pair too), so the result is that of one call on everything, up to
    rounding. Each chunk's feature tensors (about ``CHUNK_FEATURES`` entries) are used while
    the cache still holds them instead of being written out for the whole batch and read
    back (about 15% of the attention's time at 32 x 32 images, batch 16, on a 2-core Xeon;
    with autograd, which keeps every chunk's tensors for the backward pass, it is slower, so
    training takes the whole batch at once). The output is written into a (b, n, h, e) buffer
    and returned as its (b, h, n, e) view, so merging the heads afterwards needs no copy.
    """
    b, h, n = q.shape[:3]
    pairs = max(1, CHUNK_FEATURES // max(1, n * nb_features))
    if pairs >= h:  # whole samples
        samples = pairs // h
        chunks = [(slice(i, i + samples), slice(None)) for i in range(0, b, samples)]
    else:  # a few heads of one sample
        chunks = [(slice(i, i + 1), slice(j, j + pairs)) for i in range(b) for j in range(0, h, pairs)]
    if len(chunks) == 1:
        return attend(q, k, v)
    out = None
    for rows, heads in chunks:
        part = attend(q[rows, heads], k[rows, heads], v[rows, heads])  # (c, hh, n, e)
        if out is None:
            out = part.new_empty(b, n, h, part.shape[-1])
        out[rows, :, heads].copy_(part.transpose(1, 2))
    return out.transpose(1, 2)


class FeatureMap(nn.Module):
    """Random features of one attention module, with their redraw schedule.

    In training mode the owner calls :meth:`step` once per training step, and the
    projection is redrawn every ``redraw_interval`` steps; in eval mode it is fixed.
    The projection is a buffer; the seed, step and redraw counts are kept as Python
    ints (no device sync per step) and saved as the module's extra state, so they
    all survive a checkpoint. Redraws are seeded by ``(seed, redraws)``, so every DDP
    process draws the same matrix.
    """

    def __init__(self, dim: int, nb_features: int | None = None, kernel: str = "softmax", redraw_interval: int = 1000):
        super().__init__()
        self.dim = dim
        self.nb_features = nb_features or default_nb_features(dim)
        self.kernel = kernel
        self.kernel_fn = KERNELS[kernel]
        self.redraw_interval = redraw_interval
        self.seed = int(torch.randint(0, 2**62, ()))
        self.steps = 0
        self.redraws = 0
        self.register_buffer("projection", self._draw(0))

    def _draw(self, index: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * index)
        return orthogonal_gaussian_matrix(self.nb_features, self.dim, generator=generator)

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw a fresh projection (deterministic in the seed and the redraw count)."""
        self.redraws += 1
        self.projection.copy_(self._draw(self.redraws))

    def step(self) -> None:
        """Count one training step; redraw when the interval is reached (never for an interval of 0)."""
        self.steps += 1
        if self.redraw_interval and self.steps % self.redraw_interval == 0:
            self.redraw()

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "steps": self.steps, "redraws": self.redraws}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.steps, self.redraws = int(state["seed"]), int(state["steps"]), int(state["redraws"])

    def forward(self, x: Tensor, *, is_query: bool) -> Tensor:
        return self.kernel_fn(x, self.projection, is_query=is_query)

    def up_to_scale(self, x: Tensor, *, is_query: bool) -> Tensor:
        """The features up to factors that cancel in normalised attention (cheaper; see
        :func:`softmax_features_up_to_scale`): for the attention layers, not for estimates."""
        return KERNELS_UP_TO_SCALE[self.kernel](x, self.projection, is_query=is_query)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """FAVOR+ attention (b, h, n, d) x3 -> (b, h, n, e): ``linear_attention`` of this map's features.

        Without autograd on the CPU (evaluation, ``torch.no_grad``, ``torch.inference_mode``)
        the (sample, head) pairs are taken a few at a time (:func:`attend_in_chunks`); with
        autograd on the CPU, once :func:`relative_performer.attention.compiled.enable` has
        been called (the command line does for CPU training), a ``torch.compile``'d copy of
        the same computation runs.
        """
        if not torch.is_grad_enabled() and q.device.type == "cpu":
            return attend_in_chunks(self._attend_all, q, k, v, self.nb_features)
        if compiled.applies(q):
            out = compiled.attend(self.kernel, q, k, v, self.projection)
            if out is not None:
                return out
        return self._attend_all(q, k, v)

    def _attend_all(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return favor_attention(q, k, v, self.projection, self.kernel)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, nb_features={self.nb_features}, kernel={self.kernel}, redraw_interval={self.redraw_interval}"
