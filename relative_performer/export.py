"""Export a finished run as a small run folder to share (what ``pretrained/`` holds).

The exported folder is a run folder that ``test``, ``test-recursive``,
``test-shifted`` and ``plot-shifted`` read like any other::

    DEST/
        config.json          the run's config (its train command and seed), plus "exported_from"
        results.json         the run's results, plus "check": accuracy on a fixed test subset
        metrics.csv          the training curve
        checkpoints/best.ckpt  weights and model record only (no optimizer state: ~1/3 the size)

``check`` records the loss and accuracy of the exported checkpoint on the
first ``check_images`` test images, so that anyone can verify later that the
checkpoint still loads and scores the same (``tests/test_pretrained.py``).
An exported run cannot be resumed (it has no ``last.ckpt``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from relative_performer.checkpoint import RECORD_KEY, load_checkpoint, read_record
from relative_performer.errors import UserError
from relative_performer.run_folder import RunFolder, write_json

# Entries of a Lightning checkpoint that an exported one keeps: everything evaluation needs.
KEPT_ENTRIES = ("state_dict", RECORD_KEY, "epoch", "global_step", "pytorch-lightning_version")
CHECK_SPLIT = "test"


def export_run(
    run_dir: str | os.PathLike,
    dest: str | os.PathLike,
    check_images: int = 1000,
    data_dir: str | None = None,
    device: str = "cpu",
    command: str | None = None,
) -> dict[str, Any]:
    """Write the exported copy of the finished run ``run_dir`` to the new folder ``dest``; returns its check."""
    from relative_performer.evaluation.runs import load_run, resolve_device, test_run

    run, dest = RunFolder(Path(run_dir)), Path(dest)
    config = run.read_config()
    results = run.read_results()
    if results is None:
        raise UserError(f"{run.path} has not finished (no results.json): finish it with "
                        f"`relative-performer train --resume {run.path}` before exporting it")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} already exists and is not empty: export into a new folder")
    if check_images < 1:
        raise UserError(f"--check_images must be at least 1 (got {check_images})")

    checkpoint = load_checkpoint(run.best_checkpoint())
    read_record(checkpoint, run.best)
    slim = {key: checkpoint[key] for key in KEPT_ENTRIES if key in checkpoint}

    staging = dest.with_name(f".{dest.name}.export")
    if staging.exists():
        shutil.rmtree(staging)
    out = RunFolder(staging)
    out.checkpoints.mkdir(parents=True)
    torch.save(slim, out.best)
    if run.metrics_path.is_file():
        shutil.copy2(run.metrics_path, out.metrics_path)
    out.write_config({**config, "exported_from": str(run.path), **({"export_command": command} if command else {})})

    try:
        dev = resolve_device(device)
        row = test_run(load_run(staging, dev), splits=(CHECK_SPLIT,), data_dir=data_dir, limit=check_images, device=dev)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    check = {
        "split": CHECK_SPLIT,
        "n_images": row[f"{CHECK_SPLIT}_n"],
        "accuracy": row[f"{CHECK_SPLIT}_acc"],
        "loss": row[f"{CHECK_SPLIT}_loss"],
        "note": f"the first {row[f'{CHECK_SPLIT}_n']} {CHECK_SPLIT} images, in file order, fp32, the checkpoint's own features",
    }
    out.write_results({**results, "run_dir": str(dest), "check": check})
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.rmdir()  # empty (checked above)
    os.replace(staging, dest)
    return check
