"""Accuracy on shifted test images (the original ``test_shifted.py`` protocol).

For each run and each shift ``s`` in ``-min_shift .. min_shift``: the test
images of the chosen labels that have at least ``min_shift`` empty columns
(rows, for ``axis='y'``) on both sides are shifted by ``s`` pixels
(:mod:`relative_performer.data.shift`), and the mean and standard deviation
over images (population std, ``ddof=0``) of the accuracy (0 or 1 per image,
reported as a fraction) and of the cross-entropy loss are reported.

``feature_seed``: evaluate with freshly drawn random features (every
attention module gets a new projection, determined by the seed) instead of the
checkpoint's own, to measure how much a result depends on the feature draw.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from torch import nn

from relative_performer.errors import UserError
from relative_performer.evaluation.runs import LoadedRun, load_run, per_image_metrics, resolve_device, runs_below

SHIFTABLE_DATASETS = ("MNIST", "FashionMNIST")
COLUMNS = (
    "run_dir", "model", "dataset", "axis", "shift", "n_images",
    "accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "labels", "min_shift", "feature_seed",
)


def draw_features(model: nn.Module, seed: int) -> int:
    """Give every random-feature module of ``model`` a new projection determined by ``seed``.

    Returns the number of modules redrawn (0 for exact attention).
    """
    generator = torch.Generator().manual_seed(int(seed))
    maps = model.feature_maps() if hasattr(model, "feature_maps") else []
    for feature_map in maps:
        feature_map.seed = int(torch.randint(0, 2**62, (), generator=generator))
        feature_map.redraws = 0
        feature_map.redraw()
    return len(maps)


def shifted_rows(
    loaded: LoadedRun,
    labels: Sequence[int] | None = (1,),
    min_shift: int = 10,
    axis: str = "x",
    data_dir: str | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    feature_seed: int | None = None,
    cache: dict | None = None,
    max_images: int | None = None,
) -> list[dict[str, Any]]:
    """One row per shift for one run (``max_images``: only the first that many qualifying images)."""
    from relative_performer.data.shift import load_shift_test_set, shift_images, shift_range

    if loaded.dataset not in SHIFTABLE_DATASETS:
        raise UserError(
            f"test-shifted supports {' and '.join(SHIFTABLE_DATASETS)} only; {loaded.run.path} was trained on {loaded.dataset}"
        )
    root = loaded.data_dir(data_dir)
    key = (loaded.dataset, root, loaded.embedding_type, tuple(labels) if labels is not None else None, min_shift, axis)
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = load_shift_test_set(loaded.dataset, root, loaded.embedding_type, labels, min_shift, axis)
    images, targets = cache[key]
    if max_images is not None:
        images, targets = images[:max_images], targets[:max_images]
    if feature_seed is not None:
        draw_features(loaded.model, feature_seed)
    label_text = "all" if labels is None else " ".join(str(label) for label in labels)
    rows = []
    for shift in shift_range(min_shift):
        loss, correct = per_image_metrics(loaded.model, shift_images(images, shift, axis), targets, batch_size, device)
        accuracy = correct.double()
        loss = loss.double()
        rows.append({
            "run_dir": str(loaded.run.path),
            "model": loaded.record["model"],
            "dataset": loaded.dataset,
            "axis": axis,
            "shift": shift,
            "n_images": int(targets.shape[0]),
            "accuracy_mean": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(unbiased=False)),
            "loss_mean": float(loss.mean()),
            "loss_std": float(loss.std(unbiased=False)),
            "labels": label_text,
            "min_shift": min_shift,
            "feature_seed": feature_seed,
        })
    return rows


def test_shifted(
    run_dirs: Sequence[str],
    labels: Sequence[int] | None = (1,),
    min_shift: int = 10,
    axis: str = "x",
    data_dir: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    feature_seeds: Sequence[int | None] = (None,),
    max_images: int | None = None,
) -> list[dict[str, Any]]:
    """Rows for every run at or below ``run_dirs`` and every feature seed (``None``: the checkpoint's features)."""
    dev = resolve_device(device)
    cache: dict = {}
    rows = []
    for run in runs_below(run_dirs):
        for seed in feature_seeds:
            loaded = load_run(run.path, dev)  # fresh for every seed: draws must not accumulate
            run_rows = shifted_rows(loaded, labels, min_shift, axis, data_dir, batch_size, dev, seed, cache, max_images)
            by_shift = {r["shift"]: r["accuracy_mean"] for r in run_rows}
            features = "" if seed is None else f" (features drawn with seed {seed})"
            print(
                f"{run.path}{features}: {run_rows[0]['n_images']} images, accuracy at shift "
                f"{-min_shift} / 0 / {min_shift}: {by_shift[-min_shift]:.3f} / {by_shift[0]:.3f} / {by_shift[min_shift]:.3f}",
                file=sys.stdout, flush=True,
            )
            rows.extend(run_rows)
    return rows
