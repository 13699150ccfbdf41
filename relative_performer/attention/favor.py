"""FAVOR+ attention (Choromanski et al., "Rethinking Attention with Performers", 2021).

Pure functions for the math, one thin module (:class:`FeatureMap`) for the state.

Shape legend:
    b - batch, h - heads, n - tokens (queries), j - tokens (keys),
    d - head dim, m - random features, e - value dim (+1 for the normaliser)

Softmax attention weights ``exp(q . k / sqrt(d))`` are estimated by positive
random features ``phi(x) = m**-0.5 * exp(W x' - |x'|^2 / 2)`` with
``x' = x * d**-0.25`` and ``W`` of shape (m, d), so that
``E_W[phi(q) . phi(k)] = exp(q . k / sqrt(d))``. Attention then costs O(n m d).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def softmax_features(x: Tensor, projection: Tensor, *, is_query: bool) -> Tensor:
    """Positive random features of the softmax kernel: (..., n, d) -> (..., n, m).

    A stabiliser is subtracted before ``exp`` and detached: the maximum over the
    features of each row for queries (a per-row factor, cancels in the ratio of
    :func:`linear_attention`), and the maximum over all tokens and features of each
    (sample, head) for keys (a per-(sample, head) factor, cancels likewise). Taking
    the key maximum over the whole batch instead would make samples depend on each
    other. Computed in float32 even under autocast: the exponentials overflow in half.
    """
    dim = x.shape[-1]
    nb_features = projection.shape[0]
    x = x.float() * dim**-0.25
    logits = x @ projection.float().T - 0.5 * (x * x).sum(dim=-1, keepdim=True)
    if is_query:
        stabiliser = logits.amax(dim=-1, keepdim=True)
    else:
        stabiliser = logits.amax(dim=(-1, -2), keepdim=True)
    return torch.exp(logits - stabiliser.detach()) * nb_features**-0.5


def relu_features(x: Tensor, projection: Tensor, *, is_query: bool, eps: float = 1e-3) -> Tensor:
    """Generalized-kernel features ``relu(W x') + eps`` (Performer's 'generalized attention')."""
    del is_query  # no stabiliser needed: the features are not exponentials
    dim = x.shape[-1]
    x = x.float() * dim**-0.25
    return F.relu(x @ projection.float().T) + eps


KERNELS: dict[str, Callable[..., Tensor]] = {"softmax": softmax_features, "relu": relu_features}


def linear_attention(q_features: Tensor, k_features: Tensor, v: Tensor) -> Tensor:
    """Non-causal kernelized attention ``phi(Q) (phi(K)^T V) / phi(Q) (phi(K)^T 1)``.

    q_features (..., n, m), k_features (..., j, m), v (..., j, e) -> (..., n, e).
    The normaliser rides along as an extra value column of ones, so numerator and
    denominator come out of the same two matrix products. O(n m e), no n x j tensor.
    """
    ones = torch.ones_like(v[..., :1])
    v1 = torch.cat((v.to(k_features.dtype), ones.to(k_features.dtype)), dim=-1)
    context = k_features.transpose(-1, -2) @ v1  # (..., m, e + 1)
    out = q_features @ context  # (..., n, e + 1)
    numerator, denominator = out[..., :-1], out[..., -1:]
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Exact softmax attention ``softmax(q k^T / sqrt(d)) v`` (the ``--no_projection`` path).

    Quadratic in time; torch's fused kernel keeps the memory linear on CPU and GPU.
    """
    return F.scaled_dot_product_attention(q, k, v.to(q.dtype))


def quadratic_softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Straightforward reference for tests: materialises the (n, j) weights."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


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
        """Count one training step; redraw when the interval is reached."""
        self.steps += 1
        if self.steps % self.redraw_interval == 0:
            self.redraw()

    def get_extra_state(self) -> dict:
        return {"seed": self.seed, "steps": self.steps, "redraws": self.redraws}

    def set_extra_state(self, state: dict) -> None:
        self.seed, self.steps, self.redraws = int(state["seed"]), int(state["steps"]), int(state["redraws"])

    def forward(self, x: Tensor, *, is_query: bool) -> Tensor:
        return self.kernel_fn(x, self.projection, is_query=is_query)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, nb_features={self.nb_features}, kernel={self.kernel}, redraw_interval={self.redraw_interval}"
