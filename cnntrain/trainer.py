"""The training loop: `Trainer.fit` runs epochs of `train_one_epoch` + `evaluate`.

Everything around the loop (console display, metrics file, checkpoints) is a
`Callback`, so the loop stays short and imports no display code. Loss and accuracy
are summed on the device and read back every `log_every` steps and at the end of
the epoch, never every step, so a GPU is not made to wait for the host.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.errors import TrainingError


@dataclass
class EpochMetrics:
    """One row of metrics.csv."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_seconds: float
    train_examples_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepProgress:
    """What the display gets every `log_every` steps."""

    epoch: int
    step: int
    steps: int
    loss: float
    acc: float
    examples_per_s: float


class Callback:
    """Hooks the trainer calls; subclasses override what they need."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer", epoch: int, steps: int) -> None: ...
    def on_train_progress(self, trainer: "Trainer", progress: StepProgress) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", metrics: EpochMetrics) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...


class _RunningStats:
    """Loss and correct-prediction sums kept on the device."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.count = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.count += len(labels)

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy); this is the one place a host sync happens."""
        count = max(self.count, 1)
        return self.loss_sum.item() / count, self.correct.item() / count


class Trainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, train_loader,
                 val_loader, device: torch.device, epochs: int, callbacks: Sequence[Callback] = (),
                 log_every: int = 20, loss_fn: Callable = F.cross_entropy):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.device = device
        self.epochs = epochs
        self.callbacks = list(callbacks)
        self.log_every = max(1, log_every)
        self.loss_fn = loss_fn
        self.history: list[EpochMetrics] = []

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def fit(self, start_epoch: int = 1) -> list[EpochMetrics]:
        self._call("on_fit_start")
        for epoch in range(start_epoch, self.epochs + 1):
            lr = self.current_lr()
            started = time.perf_counter()
            train_loss, train_acc, train_seconds = self.train_one_epoch(epoch)
            val_loss, val_acc = self.evaluate(self.val_loader)
            metrics = EpochMetrics(
                epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                lr=lr, epoch_seconds=time.perf_counter() - started,
                train_examples_per_s=self.train_loader.num_examples / max(train_seconds, 1e-9),
            )
            if self.scheduler is not None:
                self.scheduler.step()
            self.history.append(metrics)
            self._call("on_epoch_end", metrics)
        self._call("on_fit_end")
        return self.history

    def train_one_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One pass over the training data; returns (loss, accuracy, seconds)."""
        self.model.train()
        self.train_loader.set_epoch(epoch)
        steps = len(self.train_loader)
        self._call("on_epoch_start", epoch, steps)
        stats = _RunningStats(self.device)
        started = time.perf_counter()
        for step, (images, labels) in enumerate(self.train_loader, 1):
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            stats.add(logits, labels, loss)
            if step % self.log_every == 0 or step == steps:
                loss_value, acc = stats.read()
                self._check_finite(loss_value, epoch, step)
                self._call("on_train_progress", StepProgress(
                    epoch, step, steps, loss_value, acc, stats.count / (time.perf_counter() - started)))
        loss_value, acc = stats.read()
        return loss_value, acc, time.perf_counter() - started

    @torch.inference_mode()
    def evaluate(self, loader) -> tuple[float, float]:
        """(mean loss, accuracy) over `loader`, without autograd."""
        self.model.eval()
        stats = _RunningStats(self.device)
        for images, labels in loader:
            logits = self.model(images)
            stats.add(logits, labels, self.loss_fn(logits, labels))
        return stats.read()

    def _check_finite(self, loss: float, epoch: int, step: int) -> None:
        if not math.isfinite(loss):
            raise TrainingError(
                f"The training loss became {loss} in epoch {epoch} by step {step} (lr {self.current_lr():g}). "
                f"Training stopped; checkpoints of finished epochs are kept. Try a lower learning rate "
                f"(optimizer.lr), a different init (model.init), or a model with normalisation layers."
            )
