"""What training and evaluation measure: an epoch's row (`EpochMetrics`), the running figures the
display gets (`StepProgress`), and the device-side counters both loops sum into (`_RunningStats`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from cnntrain.distributed import Group


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
    # Optional columns: present only in runs that have them (as_dict leaves out the ones that are None).
    stage: int | None = None  # 1 or 2 in a two-stage fine-tuning (finetune.unfreeze_at); None otherwise
    val_top5: float | None = None  # top-5 validation accuracy, for data with more than 5 classes

    def as_dict(self) -> dict:
        row = asdict(self)
        return {key: value for key, value in row.items() if value is not None or key not in OPTIONAL_METRICS}


OPTIONAL_METRICS = ("stage", "val_top5")


@dataclass
class StepProgress:
    """What the display gets when the running figures are read (`Trainer.reads_progress`)."""

    epoch: int
    step: int
    steps: int
    loss: float
    acc: float
    examples_per_s: float


class _RunningStats:
    """Loss and correct-prediction sums kept on the device, and the first step whose loss was not finite.

    With `top5`, also the examples whose label is among the 5 highest logits, counted when
    the logits have more than 5 classes (on the device too: no extra host sync). In a
    distributed run the reads sum the counters of every rank (`group`), so every rank reads
    the figures of the whole global batch or split. Soft targets (trainer.mixup's class
    probabilities) count a prediction as correct when it is their most likely class.
    """

    def __init__(self, device: torch.device, top5: bool = False, group: Group | None = None):
        self.group = group or Group.single()
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.first_bad_step = torch.zeros((), device=device, dtype=torch.long)  # 0: none yet
        self.count = 0
        self.top5 = top5
        self.top5_correct = torch.zeros((), device=device, dtype=torch.long)
        self.top5_counted = False  # some batch had more than 5 classes

    def add(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        loss: torch.Tensor,
        step: int = 0,
        predicted: torch.Tensor | None = None,
    ) -> None:
        loss = loss.detach().float()
        self.loss_sum += loss * len(labels)
        if labels.dim() == 2:  # soft targets (MixUp / CutMix): the class with the largest share
            labels = labels.argmax(dim=1)
        predicted = logits.argmax(dim=1) if predicted is None else predicted
        self.correct += (predicted == labels).sum()
        if self.top5 and logits.shape[1] > 5:
            self.top5_correct += (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum()
            self.top5_counted = True
        if step:  # remembered on the device, so no step waits for the host to look at its loss
            bad = ~torch.isfinite(loss) & (self.first_bad_step == 0)
            self.first_bad_step = torch.where(bad, step, self.first_bad_step)
        self.count += len(labels)

    def _totals(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss sum, correct, count) over every rank."""
        count = torch.tensor(self.count, device=self.loss_sum.device, dtype=torch.long)
        loss_sum, correct, count = self.group.sum(self.loss_sum, self.correct, count)
        return loss_sum, correct, int(count.item())

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy); this is the one place a host sync happens."""
        loss_sum, correct, count = self._totals()
        return loss_sum.item() / max(count, 1), correct.item() / max(count, 1)

    def read_top5(self) -> float | None:
        """Top-5 accuracy; None when not counted (not asked for, or 5 classes or fewer)."""
        counted = torch.tensor(int(self.top5_counted), device=self.loss_sum.device)
        count = torch.tensor(self.count, device=self.loss_sum.device, dtype=torch.long)
        top5_correct, counted, count = self.group.sum(self.top5_correct, counted, count)
        return top5_correct.item() / max(int(count.item()), 1) if counted.item() else None

    def state_dict(self) -> dict:
        """The counters of every rank summed (a distributed run's checkpoint holds the whole global batch's)."""
        loss_sum, correct, count = self._totals()
        return {
            "loss_sum": loss_sum.detach().cpu(),
            "correct": correct.cpu(),
            "first_bad_step": self.first_bad_step.cpu(),
            "count": count,
        }

    def load_state_dict(self, state: dict) -> None:
        """Counters saved as every rank's sums: rank 0 takes them, the others start from zero."""
        if self.group.rank != 0:
            return
        device = self.loss_sum.device
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        self.first_bad_step = state["first_bad_step"].to(device)
        self.count = state["count"]
