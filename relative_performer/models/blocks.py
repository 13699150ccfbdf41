"""Transformer blocks over pixel tokens.

Shape legend: b - batch, n - tokens (class token first, then pixels row-major),
h - heads, d - head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

from einops import rearrange
from torch import Tensor, nn

from relative_performer.attention import compiled
from relative_performer.attention.favor import FeatureMap, softmax_attention
from relative_performer.models import fused
from relative_performer.models.config import ModelConfig
from relative_performer.models.dropout import Dropout
from relative_performer.positional.constrained import widen


@dataclass
class AttentionContext:
    """What every attention layer of one forward pass may need about positions.

    ``position_features`` is (n, a, s, 2) for strategy 1 (zeros for the class
    token), else None. Token 0 is the class token; tokens 1.. are the
    ``height x width`` pixels in row-major order.
    """

    height: int
    width: int
    position_features: Tensor | None = None


class SelfAttention(nn.Module):
    """Multi-head FAVOR+ self-attention (exact softmax with ``no_projection``).

    ``qk_extension`` (strategy 1) widens queries and keys by position features
    (its ``extras(x, positions)``, see :func:`relative_performer.positional.constrained.widen`)
    before the kernel is applied; the random features are drawn for the widened
    head dim. Attention dropout acts on the attention output, as in
    performer-pytorch (FAVOR+ never forms the attention matrix to drop from).
    """

    def __init__(self, cfg: ModelConfig, qk_extension: nn.Module | None = None):
        super().__init__()
        self.heads = cfg.heads
        self.to_qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.to_out = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = Dropout(cfg.attn_dropout)
        self.qk_extension = qk_extension
        attn_dim = cfg.dim_head + (qk_extension.extra_dim if qk_extension is not None else 0)
        self.feature_map = (
            None
            if cfg.no_projection
            else FeatureMap(attn_dim, cfg.nb_features, cfg.kernel, cfg.feature_redraw_interval)
        )

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        return self.merge(self.attend_qkv(fused.linear(x, self.to_qkv), x, ctx), x)

    def attend_qkv(self, qkv: Tensor, x: Tensor, ctx: AttentionContext) -> Tensor:
        """(b, n, 3 dim) projected queries, keys and values -> (b, h, n, d) head outputs.

        x (b, n, dim) is the layer input (strategy 1's content-dependent positions read it).
        Training on the CPU with the compiled attention on, FAVOR+ heads (this class's own
        :meth:`attend`) take the packed projection whole
        (:func:`relative_performer.attention.compiled.attend_packed`); otherwise the heads are
        split, widened by ``qk_extension``, and passed to :meth:`attend`.
        """
        extras = (None, None)
        if self.qk_extension is not None:
            extras = self.qk_extension.extras(x, ctx.position_features)
        if self.packed_attention() and compiled.applies(qkv):
            out = compiled.attend_packed(self.feature_map.kernel, qkv, self.heads, self.feature_map.projection, *extras)
            if out is not None:
                return out
        q, k, v = self.split(qkv)
        if self.qk_extension is not None:
            q, k = widen(q, k, *extras)
        return self.attend(q, k, v, ctx)

    def packed_attention(self) -> bool:
        """Whether :meth:`attend` is plain FAVOR+ (not softmax, not overridden by a subclass or on the
        instance), which :meth:`attend_qkv` may then compute from the packed projection."""
        return self.feature_map is not None and getattr(self.attend, "__func__", None) is SelfAttention.attend

    def split(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(b, n, 3 dim) -> queries, keys, values, each (b, h, n, d) (views)."""
        return rearrange(qkv, "b n (t h d) -> t b h n d", t=3, h=self.heads)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(b, n, dim) -> queries, keys, values, each (b, h, n, d)."""
        return self.split(fused.linear(x, self.to_qkv))

    def merge(self, out: Tensor, x: Tensor) -> Tensor:
        """(b, h, n, d) head outputs -> (b, n, dim) layer output."""
        return self.dropout(fused.linear(rearrange(out.to(x.dtype), "b h n d -> b n (h d)"), self.to_out))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """(b, h, n, d) queries, keys, values -> (b, h, n, d) outputs."""
        if self.feature_map is None:
            return softmax_attention(q, k, v)
        return self.feature_map.attend(q, k, v)


class FeedForward(nn.Sequential):
    """``Linear, GELU, Dropout, Linear``; in evaluation on the CPU with bias and GELU fused
    into the products (:mod:`relative_performer.models.fused`)."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__(nn.Linear(dim, dim * mult), nn.GELU(), Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        up, activation, dropout, down = self
        if activation.approximate != "none" or not fused.usable(x, up):
            return super().forward(x)
        return fused.linear(dropout(fused.linear(x, up, "gelu")), down)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + ff(norm(x))``."""

    def __init__(self, cfg: ModelConfig, attention: nn.Module):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.dim)
        self.attn = attention
        self.ff_norm = nn.LayerNorm(cfg.dim)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult, cfg.ff_dropout)
        self.ff_dropout = Dropout(cfg.ff_dropout)

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.ff_dropout(self.ff(self.ff_norm(x)))
