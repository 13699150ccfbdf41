"""Lightning callbacks of a training run: the resumable ``last.ckpt``, the training clock, the
exponential moving average of the weights, the progress bar."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from relative_performer.errors import UserError

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    """Keeps ``path`` (``checkpoints/last.ckpt``) at most a few steps behind training.

    Saved every ``every_n_steps`` optimizer steps, after every validation (end of
    epoch: with the updated early-stopping and best-checkpoint state), when
    training ends, and on an exception such as Ctrl-C once training has started
    (not during the restore of a resumed run, which would replace the checkpoint
    it failed to restore; single process only: with several processes a save
    needs all of them, and they may not all be there).
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
        self._training = False

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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # not before training starts: a failed restore would overwrite last.ckpt with the step-0 state
        if trainer.world_size > 1 or not self._training:
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


EMA_KEY = "weight_ema"  # checkpoint entry of WeightEMA: decay, updates and the trained (not averaged) weights


class WeightEMA(L.Callback):
    """An exponential moving average (EMA) of the trainable weights, which is what a run
    validates, keeps as ``best.ckpt`` and is tested with.

    After every optimizer step ``n`` (counted from 1) the average moves towards the
    weights: ``ema += (1 - d_n) (w - ema)`` with ``d_n = min(decay, (1 + n) / (10 + n))``
    (the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=n)``, so that a
    run from scratch is not averaged with its random initialisation for ``1 / (1 - decay)``
    steps). The average starts as the weights the run starts from (``--init_from``'s).

    Only parameters are averaged. Buffers (the random features and their redraw
    counters) are the model's current ones: an average of two feature draws is no
    draw at all.

    Validation swaps the average in and the trained weights back out afterwards, so
    ``val/acc``, early stopping and ``best.ckpt`` all judge the average. Every
    checkpoint holds the average as its ``state_dict`` (what ``test``, ``export`` and
    ``--init_from`` read) and the trained weights under :data:`EMA_KEY` (what
    ``--resume`` continues from, together with the average).

    Lightning's own ``EMAWeightAveraging`` is not used: it swaps the buffers too, which
    would validate with a stale feature draw after a redraw.
    """

    def __init__(self, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self._average: dict[str, torch.Tensor] | None = None
        self._last_step = -1
        self._swapped = False  # the average is in the model (during validation)

    def _parameters(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {name: p for name, p in pl_module.named_parameters() if p.requires_grad}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._average is None:
            self._average = {name: p.detach().clone() for name, p in self._parameters(pl_module).items()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # called after the state_dict (the average) is loaded; only --resume (fitting) restores the trained weights
        if trainer.state.fn != TrainerFn.FITTING:
            return
        state = checkpoint.get(EMA_KEY)
        if state is None:
            raise UserError(f"{trainer.ckpt_path} has no {EMA_KEY} entry, which --resume of a run with --ema_decay "
                            "needs: it was not saved by such a run; start the run again")
        params = self._parameters(pl_module)
        with torch.no_grad():
            self._average = {name: p.detach().clone() for name, p in params.items()}  # as loaded from state_dict
            for name, p in params.items():
                p.copy_(state["weights"][name])
        self.updates = int(state["updates"])
        self._last_step = int(checkpoint.get("global_step", -1))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average is None:
            return
        state = checkpoint["state_dict"]
        held = {name: a.detach().clone() for name, a in self._average.items()}
        # saved mid-validation (an exception there): the model holds the average, this callback the weights
        average, weights = (state, held) if self._swapped else (held, state)
        checkpoint[EMA_KEY] = {
            "decay": self.decay,
            "updates": self.updates,
            "weights": {name: weights[name] for name in self._average},
        }
        checkpoint["state_dict"] = {**state, **{name: average[name] for name in self._average}}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._average is None or trainer.global_step == self._last_step:  # no optimizer step in this batch
            return
        self._last_step = trainer.global_step
        self.updates += 1
        weight = 1.0 - min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        params = self._parameters(pl_module)
        with torch.no_grad():
            torch._foreach_lerp_(list(self._average.values()), [params[n].detach() for n in self._average], weight)

    def _swap(self, pl_module: L.LightningModule) -> None:
        if self._average is None:
            return
        params = self._parameters(pl_module)
        with torch.no_grad():
            for name, average in self._average.items():
                current = params[name].detach().clone()
                params[name].copy_(average)
                average.copy_(current)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar without ``v_num`` (it shows the last 4 characters of the version folder)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
