"""Lightning callbacks of a training run: the resumable ``last.ckpt``, the training clock, the progress bar."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    """Keeps ``path`` (``checkpoints/last.ckpt``) at most a few steps behind training.

    Saved every ``every_n_steps`` optimizer steps, after every validation (end of
    epoch: with the updated early-stopping and best-checkpoint state), when
    training ends, and on an exception such as Ctrl-C (single process only: with
    several processes a save needs all of them, and they may not all be there).
    A killed run so loses at most ``every_n_steps`` steps.

    Lightning's ``ModelCheckpoint(save_last=True)`` is not used for this: with a
    monitored metric it rewrites ``last.ckpt`` only when the best score improves.
    Subclassing ``Checkpoint`` makes Lightning run this after the other callbacks.
    """

    def __init__(self, path: Path, every_n_steps: int = 500):
        super().__init__()
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def _save(self, trainer: L.Trainer, force: bool = False) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if not force and trainer.global_step == self._saved_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, force=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, force=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.world_size > 1:
            return
        try:
            self._save(trainer)
        except Exception as exc:  # never hide the original exception
            log.warning("could not save %s after %s: %s", self.path, type(exception).__name__, exc)


class TrainingClock(L.Callback):
    """Seconds spent in ``fit``, summed over the sessions of a resumed run (saved in checkpoints)."""

    def __init__(self) -> None:
        self.previous = 0.0
        self._start: float | None = None

    @property
    def seconds(self) -> float:
        running = time.monotonic() - self._start if self._start is not None else 0.0
        return self.previous + running

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.previous, self._start = self.seconds, None

    def state_dict(self) -> dict[str, float]:
        return {"seconds": float(self.seconds)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous = float(state_dict.get("seconds", 0.0))


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar without ``v_num`` (it shows the last 4 characters of the version folder)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
