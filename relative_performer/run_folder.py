"""The layout of a training run's folder; training writes it, evaluation reads it.

::

    <log_path>/<exp_name>/<version>/
        config.json         model name, full ModelConfig, config version, dataset,
                            training hyperparameters, seed, command lines, package version
        checkpoints/
            best.ckpt       best by val/acc (the one evaluation loads)
            last.ckpt       latest state, for --resume (every N steps, each epoch, on Ctrl-C)
        metrics.csv         train/val/test metrics (Lightning CSVLogger)
        events.out.tfevents.*   the same for TensorBoard (when installed)
        results.json        written when the run completes: best val, test, parameters, epochs, time

A folder is a run when it holds ``config.json`` and a ``checkpoints`` folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from relative_performer.errors import UserError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best"  # ModelCheckpoint filename (without .ckpt)
LAST_NAME = "last"
VERSION_PREFIX = "version_"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # as an ordinary file, not mkstemp's 0600
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def best(self) -> Path:
        return self.checkpoints / f"{BEST_NAME}.ckpt"

    @property
    def last(self) -> Path:
        return self.checkpoints / f"{LAST_NAME}.ckpt"

    def is_run(self) -> bool:
        return self.config_path.is_file() and self.checkpoints.is_dir()

    def is_finished(self) -> bool:
        return self.results_path.is_file()

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise UserError(f"run folder {self.path} does not exist")
        if not self.config_path.is_file():
            raise UserError(f"{self.path} is not a run folder: it has no {CONFIG_FILE}")
        return read_json(self.config_path)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_path, config)

    def read_results(self) -> dict[str, Any] | None:
        return read_json(self.results_path) if self.results_path.is_file() else None

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results_path, results)

    def best_checkpoint(self) -> Path:
        """The checkpoint that evaluation loads: best by val/acc."""
        if self.best.is_file():
            return self.best
        hint = " (only last.ckpt: the run stopped before its first validation)" if self.last.is_file() else ""
        raise UserError(f"{self.path} has no checkpoint {CHECKPOINT_DIR}/{self.best.name}{hint}")


def version_name(version: str | int) -> str:
    """``3`` -> ``version_3`` (as Lightning names integer versions); other names stay as given."""
    text = str(version)
    if re.fullmatch(r"\d+", text):
        return f"{VERSION_PREFIX}{int(text)}"
    if not text or "/" in text or text in (".", ".."):
        raise UserError(f"--version {text!r} is not a valid folder name")
    return text


def next_version(parent: Path) -> str:
    """``version_X`` with X one more than the highest existing ``version_<int>`` (0 if none)."""
    numbers = [
        int(p.name[len(VERSION_PREFIX):])
        for p in (parent.iterdir() if parent.is_dir() else ())
        if p.name.startswith(VERSION_PREFIX) and p.name[len(VERSION_PREFIX):].isdigit()
    ]
    return f"{VERSION_PREFIX}{max(numbers) + 1 if numbers else 0}"


def find_runs(roots: Iterable[str | os.PathLike]) -> list[RunFolder]:
    """Every run folder at or below the given folders, sorted by path, without duplicates."""
    found: dict[Path, RunFolder] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root} is not a folder")
        candidates = [root] + [p.parent for p in root.rglob(CONFIG_FILE)]
        for folder in candidates:
            run = RunFolder(folder)
            if run.is_run():
                found.setdefault(folder.resolve(), run)
    return sorted(found.values(), key=lambda r: str(r.path))
