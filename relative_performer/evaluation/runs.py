"""Find trained runs, rebuild their models, and test them on the val and test splits.

A run's model is rebuilt from its best checkpoint alone (model name and config
from the checkpoint's record, through the registry). Evaluation is a plain
PyTorch loop in fp32, in eval mode (fixed random features), without Lightning.
Accuracy is a fraction in [0, 1]; loss is the mean cross-entropy.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relative_performer.checkpoint import model_from_checkpoint
from relative_performer.errors import UserError
from relative_performer.models import count_parameters
from relative_performer.run_folder import RunFolder, find_runs

HYPERPARAMETERS = ("learning_rate", "warmup", "schedule", "batch_size", "seed")


@dataclass
class LoadedRun:
    run: RunFolder
    model: nn.Module
    record: dict[str, Any]  # the checkpoint's model record
    config: dict[str, Any]  # the run's config.json
    checkpoint: Path

    @property
    def dataset(self) -> str:
        return self.record["dataset"]

    @property
    def embedding_type(self) -> str:
        return self.record["config"]["embedding_type"]

    def data_dir(self, override: str | os.PathLike | None) -> str | None:
        """``override``, else the folder the run was trained on if it still exists, else the default."""
        if override is not None:
            return str(override)
        recorded = (self.record.get("data") or {}).get("data_dir")
        return recorded if recorded and Path(recorded).is_dir() else None

    def row(self) -> dict[str, Any]:
        """Identification and hyperparameters of the run: the first columns of every CSV row."""
        training = {**self.config.get("training", {}), **(self.record.get("training") or {})}
        results = self.run.read_results() or {}
        row: dict[str, Any] = {"run_dir": str(self.run.path), "model": self.record["model"], "dataset": self.dataset}
        row.update({k: v for k, v in self.record["config"].items() if k not in ("model", "in_channels", "num_classes")})
        row.update({k: training.get(k) for k in HYPERPARAMETERS})
        row["parameters"] = count_parameters(self.model)
        row["epochs"] = results.get("epochs")
        return row


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available")
    return resolved


def load_run(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedRun:
    """The run's model from its best checkpoint, checked against its config.json, in eval mode."""
    run = RunFolder(Path(run_dir))
    config = run.read_config()
    checkpoint = run.best_checkpoint()
    model, record, _ = model_from_checkpoint(checkpoint, expect_model=config.get("model"))
    if config.get("dataset") not in (None, record["dataset"]):
        raise UserError(f"{checkpoint} was trained on {record['dataset']}, but {run.config_path} says {config['dataset']}")
    return LoadedRun(run, model.to(device), record, config, checkpoint)


@torch.inference_mode()
def per_image_metrics(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256, device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Cross-entropy loss (N,) float and correctness (N,) bool of every image, in eval mode, on the CPU."""
    model.eval()
    losses, correct = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device, non_blocking=True)
        logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
        correct.append((logits.argmax(-1) == y).cpu())
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(correct)


class SplitCache:
    """Each (dataset, split, data folder, embedding, val split) loaded once per command."""

    def __init__(self) -> None:
        self._store: dict[tuple, tuple[Tensor, Tensor]] = {}

    def get(self, loaded: LoadedRun, split: str, data_dir: str | None) -> tuple[Tensor, Tensor]:
        from relative_performer.data.datasets import make_dataset

        data = loaded.record.get("data") or {}
        key = (loaded.dataset, split, data_dir, loaded.embedding_type, data.get("val_size", 5000), data.get("split_seed", 42))
        if key not in self._store:
            dataset = make_dataset(
                loaded.dataset, split, data_dir, loaded.embedding_type,
                val_size=key[4], split_seed=key[5],
            )
            self._store[key] = dataset.tensors()
        return self._store[key]


def test_run(
    loaded: LoadedRun,
    splits: Sequence[str] = ("val", "test"),
    data_dir: str | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    cache: SplitCache | None = None,
) -> dict[str, Any]:
    """One CSV row: the run's hyperparameters and ``<split>_loss``, ``<split>_acc``, ``<split>_n``."""
    cache = cache or SplitCache()
    row = loaded.row()
    root = loaded.data_dir(data_dir)
    for split in splits:
        images, labels = cache.get(loaded, split, root)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        loss, correct = per_image_metrics(loaded.model, images, labels, batch_size, device)
        row[f"{split}_loss"] = float(loss.mean()) if loss.numel() else float("nan")
        row[f"{split}_acc"] = float(correct.float().mean()) if correct.numel() else float("nan")
        row[f"{split}_n"] = int(labels.shape[0])
    row["checkpoint"] = str(loaded.checkpoint)
    return row


def runs_below(folders: Iterable[str | os.PathLike]) -> list[RunFolder]:
    runs = find_runs(folders)
    if not runs:
        raise UserError(f"no run folders (with config.json and checkpoints/) found in {', '.join(map(str, folders))}")
    return runs


def test_many(
    run_dirs: Sequence[str | os.PathLike],
    recursive: bool,
    data_dir: str | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Rows for the given run folders (``recursive``: every run below them; unusable runs are skipped)."""
    dev = resolve_device(device)
    cache = SplitCache()
    rows = []
    runs = runs_below(run_dirs) if recursive else [RunFolder(Path(d)) for d in run_dirs]
    for run in runs:
        try:
            loaded = load_run(run.path, dev)
        except UserError as exc:
            if not recursive:
                raise
            print(f"warning: skipping {run.path}: {exc}", file=sys.stderr, flush=True)
            continue
        row = test_run(loaded, data_dir=data_dir, batch_size=batch_size, limit=limit, device=dev, cache=cache)
        print(f"{run.path}: val/acc {row['val_acc']:.4f}, test/acc {row['test_acc']:.4f}", flush=True)
        rows.append(row)
    if not rows:
        raise UserError("no run could be tested")
    return rows


def write_csv(rows: list[dict[str, Any]], output: str | os.PathLike) -> Path:
    """Write rows (columns in first-seen order) to ``output``, creating its folder."""
    import pandas as pd

    output = Path(output)
    if output.exists() and output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name such as {output / 'results.csv'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output, index=False)
    return output
