"""What a checkpoint carries about its model, and rebuilding the model from it.

Every checkpoint written by ``relative-performer train`` holds, next to
Lightning's own entries, a record under :data:`RECORD_KEY` (plain types only)::

    {"format": 1, "model": "RelativePerformer", "config": {...ModelConfig...},
     "config_version": CONFIG_VERSION, "dataset": "MNIST",
     "data": {"embedding_type": ..., "val_size": ..., "split_seed": ...},
     "training": {...}, "package_version": "..."}

so a model is rebuilt from the checkpoint alone, through the registry, with no
guessing (nanoGPT's ``model_args``). Checkpoints are only ever loaded with
``torch.load(weights_only=True)``: no arbitrary objects are unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from relative_performer import __version__
from relative_performer.errors import UserError
from relative_performer.models import MODELS, ModelConfig, create_model
from relative_performer.models.config import CONFIG_VERSION

RECORD_KEY = "relative_performer"
RECORD_FORMAT = 1
# The LightningModule holds the classifier as ``self.model``: its weights are
# saved under this prefix in the checkpoint's state_dict.
STATE_PREFIX = "model."


def make_record(model: str, config: ModelConfig, dataset: str, data: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """The record stored in every checkpoint (plain, JSON-compatible types)."""
    return {
        "format": RECORD_FORMAT,
        "model": model,
        "config": config.to_dict(),
        "config_version": CONFIG_VERSION,
        "dataset": dataset,
        "data": dict(data),
        "training": dict(training),
        "package_version": __version__,
    }


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``; a missing or unreadable file raises UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip / pickle / EOF errors all mean the same to the user
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def read_record(checkpoint: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The checked model record of a loaded checkpoint."""
    record = checkpoint.get(RECORD_KEY)
    if not isinstance(record, dict) or "model" not in record or "config" not in record:
        raise UserError(f"{path} has no relative-performer model record: it was not written by `relative-performer train`")
    version = record.get("config_version")
    if version != CONFIG_VERSION:
        raise UserError(
            f"{path} was written with model config version {version}, this relative-performer reads version "
            f"{CONFIG_VERSION}: load it with the relative-performer version that wrote it "
            f"({record.get('package_version', 'unknown')})"
        )
    if record["model"] not in MODELS:
        raise UserError(
            f"{path} holds a {record['model']!r} model, which this relative-performer does not know "
            f"(known: {', '.join(MODELS)})"
        )
    if record["config"].get("model") != record["model"]:
        raise UserError(f"{path} is inconsistent: model {record['model']!r} but config of {record['config'].get('model')!r}")
    return record


def checked_checkpoint(
    path: str | os.PathLike, expect_model: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, record)`` of a checkpoint file, its record checked.

    ``expect_model``: the model name the caller expects (e.g. from the run's
    config.json); another name raises UserError.
    """
    checkpoint = load_checkpoint(path, map_location)
    record = read_record(checkpoint, path)
    if expect_model is not None and record["model"] != expect_model:
        raise UserError(f"{path} holds a {record['model']} model, but its run is of {expect_model}: the run folder is inconsistent")
    return checkpoint, record


def load_model_weights(model, checkpoint: dict[str, Any], path: str | os.PathLike, what: str, hint: str) -> None:
    """Load the checkpoint's model weights into ``model``; weights that do not fit raise UserError.

    ``what`` names the model in the message ("a RelativePerformer built from its config"),
    ``hint`` says what to do.
    """
    state = {k[len(STATE_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        missing = sorted(set(model.state_dict()) ^ set(state))[:3]
        raise UserError(f"the weights in {path} do not fit {what} ({first}; e.g. {missing}): {hint}") from None


def model_from_checkpoint(path: str | os.PathLike, expect_model: str | None = None, map_location: str | torch.device = "cpu"):
    """Rebuild the model of a checkpoint: ``(model in eval mode, record, checkpoint)``.

    ``expect_model``: as in :func:`checked_checkpoint`.
    """
    checkpoint, record = checked_checkpoint(path, expect_model, map_location)
    model = create_model(ModelConfig.from_dict(record["config"]))
    load_model_weights(
        model, checkpoint, path, f"a {record['model']} built from its config",
        "the checkpoint is damaged or was written by an incompatible version",
    )
    model.eval()
    return model, record, checkpoint
