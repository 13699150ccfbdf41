"""One table of model names: the CLI's choices, the tests and checkpoint loading all read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from relative_performer.errors import UserError
from relative_performer.models.classifier import ImageClassifier
from relative_performer.models.config import ModelConfig
from relative_performer.positional.components import (
    AbsolutePositions,
    ClippedRelativePositions,
    ConstrainedRelativePositions,
    PeriodicRelativePositions,
    PositionalComponent,
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    positional: Callable[[ModelConfig], PositionalComponent]
    options: tuple[str, ...]  # config fields beyond the common ones that this model reads
    summary: str


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, positional, options: tuple[str, ...] = (), summary: str = "") -> None:
    MODELS[name] = ModelSpec(name, positional, options, summary)


register_model("Performer", AbsolutePositions, (), "absolute positions: learnable 2-D sinusoid encoding added to the content")
register_model("NoposPerformer", PositionalComponent, (), "no positional information (attention by content only)")
register_model(
    "RelativePerformer", ConstrainedRelativePositions, ("pos_scales", "content_rel_attn"),
    "strategy 1: rotation-constrained query projections of sinusoid position features (relative positions only)",
)
register_model(
    "ClippedRelativePerformer", ClippedRelativePositions, ("clipping_dist",),
    "strategy 2: learned relative embeddings over clipped Manhattan distances on half of the heads",
)

register_model(
    "ExactRelativePerformer", PeriodicRelativePositions, ("pos_scales", "content_rel_attn"),
    "exactly relative for every feature draw: content random features times a positive periodic relative factor",
)


def model_names() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def create_model(config: ModelConfig | dict[str, Any] | None = None, **overrides: Any) -> ImageClassifier:
    """Build a registered model from a config (or a dict of one, or keyword arguments).

    ``create_model(model="RelativePerformer", dim=64)``.
    """
    if config is None:
        config = ModelConfig(**overrides)
    elif isinstance(config, dict):
        config = ModelConfig.from_dict({**config, **overrides})
    elif overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    spec = get_spec(config.model)
    return ImageClassifier(config, spec.positional(config))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
