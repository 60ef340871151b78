"""How the `Trainer` takes an optimizer step: `StepOptions` and `TrainerSteps`, the trainer's base that uses them.

`StepOptions` says how each step is taken (gradient accumulation, clipping, autocast,
fp16 loss scaling); `TrainerSteps` does it: the autocast context (training's forward pass
and evaluate's), the backward pass through the loss scaler, this rank's share of a distributed global batch, the clipped
optimizer step followed by the weights' average (EMA) and a per-step schedule, and an epoch
schedule's step after validation. The loop that calls them is trainer.py's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from cnntrain.metrics import EpochMetrics


@dataclass
class StepOptions:
    """How one optimizer step is taken."""

    accumulate: int = 1  # batches whose gradients are summed before each optimizer step
    grad_clip_norm: float | None = None  # clip the gradients' total norm to this; None: no clipping
    autocast_dtype: torch.dtype | None = None  # bf16/fp16 mixed precision; None: float32

    def optimizer_steps(self, batches: int) -> int:
        """Optimizer steps in an epoch of `batches` batches (a short last group still steps)."""
        return -(-batches // self.accumulate)

    @property
    def grad_scaler(self) -> bool:
        """fp16 scales the loss so that small gradients do not underflow (bf16 has float32's range)."""
        return self.autocast_dtype is torch.float16


class TrainerSteps:
    """The step side of `trainer.Trainer` (which sets every attribute these methods read: model, optimizer,
    schedule, options, scaler, ema, group, device, train_loader)."""

    def _share(self, labels: torch.Tensor, step: int) -> float:
        """This rank's weight in the global batch's mean loss. DDP averages the ranks' gradients, so
        scaling each rank's mean by (its examples x ranks / global batch) makes the average the
        gradient of the global batch's mean, as in one process (1.0 unless the batch splits unevenly)."""
        if not self.group.ddp:
            return 1.0
        return len(labels) * self.group.world_size / self.train_loader.global_batch_size(step)

    def _autocast(self):
        dtype = self.options.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def _optimizer_step(self) -> None:
        if self.options.grad_clip_norm:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if self.schedule is not None and self.schedule.interval == "step":
            self.schedule.scheduler.step()

    def _step_schedule_after_epoch(self, metrics: EpochMetrics) -> None:
        if self.schedule is None or self.schedule.interval != "epoch":
            return
        if self.schedule.monitor:
            self.schedule.scheduler.step(getattr(metrics, self.schedule.monitor))
        else:
            self.schedule.scheduler.step()
