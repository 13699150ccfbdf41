"""The typed configuration every model is built from.

A checkpoint stores ``asdict(config)`` together with ``CONFIG_VERSION`` so that
loading a run never has to guess how the model was built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from relative_performer.errors import UserError

CONFIG_VERSION = 1

EMBEDDING_TYPES = ("linear", "MLP", "lookup")
KERNELS = ("softmax", "relu")


@dataclass
class ModelConfig:
    """Hyperparameters of an image classifier. Defaults are the original CLI's.

    Common to all models: ``embedding_type`` .. ``kernel``. Model specific
    (see the registry): ``pos_scales``, ``content_rel_attn`` (strategy 1),
    ``clipping_dist`` (strategy 2).
    """

    model: str = "Performer"
    in_channels: int = 1
    num_classes: int = 10
    embedding_type: str = "linear"
    dim: int = 128
    depth: int = 4
    heads: int = 4
    ff_mult: int = 4
    attn_dropout: float = 0.1
    ff_dropout: float = 0.1
    feature_redraw_interval: int = 1000
    no_projection: bool = False
    nb_features: int | None = None  # None: int(d * ln d) with d the attention head dim
    kernel: str = "softmax"
    pos_scales: int = 4
    content_rel_attn: bool = False
    clipping_dist: int = 8

    def __post_init__(self) -> None:
        if self.embedding_type not in EMBEDDING_TYPES:
            raise UserError(f"unknown embedding_type {self.embedding_type!r}; choose one of {', '.join(EMBEDDING_TYPES)}")
        if self.kernel not in KERNELS:
            raise UserError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")
        if self.dim % self.heads:
            raise UserError(f"--dim {self.dim} is not divisible by --heads {self.heads}; pick a dim that is a multiple of heads")
        for name in ("dim", "depth", "heads", "in_channels", "num_classes", "pos_scales"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        if self.feature_redraw_interval < 0:
            raise UserError(f"--feature_redraw_interval must be >= 0, 0 for never (got {self.feature_redraw_interval})")
        if self.clipping_dist < 1:
            raise UserError(f"--clipping_dist must be at least 1 (got {self.clipping_dist})")

    @property
    def dim_head(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Rebuild a config; unknown keys mean another version of the config."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"the checkpoint's model config has unknown fields {unknown}: it was written by another "
                "version of relative-performer; retrain the model or load it with that version"
            )
        return cls(**values)
