"""The LightningModule: training, validation and test of an injected classifier.

The classifier is a plain ``nn.Module`` (images (b, c, H, W) -> logits (b, k))
built by the model registry; this module only adds the loss, the metrics, the
optimizer of the original work (Adam, betas (0.9, 0.98)) with a per-step
learning-rate schedule, and the model record that every checkpoint carries
(:mod:`relative_performer.checkpoint`).

Logged: ``train/loss`` (per step as ``train/loss_step`` and per epoch as
``train/loss_epoch``), ``train/acc`` (per epoch), ``val/loss``, ``val/acc``,
``test/loss``, ``test/acc`` (per epoch). Accuracy is a fraction in [0, 1].
No metric is read back to the CPU in a training step (Lightning does that
every ``log_every_n_steps`` and for the progress bar).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from relative_performer.checkpoint import RECORD_KEY
from relative_performer.training.schedules import make_scheduler

ADAM_BETAS = (0.9, 0.98)


class ClassifierModule(L.LightningModule):
    """Wraps ``model`` (held as ``self.model``; see ``checkpoint.STATE_PREFIX``).

    ``record``: the plain-dict model record stored in every checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        record: dict[str, Any],
        num_classes: int,
        learning_rate: float = 1e-3,
        warmup: int = 0,
        schedule: str = "constant",
    ):
        super().__init__()
        self.model = model
        self.record = record
        self.learning_rate = learning_rate
        self.warmup = warmup
        self.schedule = schedule
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=labels.shape[0])
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=labels.shape[0])
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate, betas=ADAM_BETAS)
        scheduler = make_scheduler(optimizer, self.schedule, self.warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = self.record
