"""What training and evaluation measure: an epoch's row (`EpochMetrics`), the running figures the
display gets (`StepProgress`), the device-side counters both loops sum into (`_RunningStats`), and the
figures that see imbalanced classes, read from an evaluation's confusion matrix (`balanced_accuracy`,
`macro_f1`, defined as scikit-learn's balanced_accuracy_score and f1_score(average="macro", zero_division=0)).
"""

from __future__ import annotations

import math
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
    val_balanced_acc: float | None = None  # the mean of the per-class recalls (metrics.balanced_accuracy)
    val_macro_f1: float | None = None  # the mean of the per-class F1 scores (metrics.macro_f1)

    def as_dict(self) -> dict:
        row = asdict(self)
        return {key: value for key, value in row.items() if value is not None or key not in OPTIONAL_METRICS}


# val_balanced_acc and val_macro_f1 are optional only for runs saved before they existed (a resume's rows).
OPTIONAL_METRICS = ("stage", "val_top5", "val_balanced_acc", "val_macro_f1")


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
    With `confusion`, also the (classes, classes) confusion matrix, rows the label and columns the
    prediction, summed on the device by index_add_ (no host sync: torch.bincount on CUDA reads its
    input's maximum back), for the balanced accuracy and macro-F1 (`read_confusion`).
    """

    def __init__(self, device: torch.device, top5: bool = False, group: Group | None = None, confusion: bool = False):
        self.group = group or Group.single()
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.first_bad_step = torch.zeros((), device=device, dtype=torch.long)  # 0: none yet
        self.count = 0
        self.top5 = top5
        self.top5_correct = torch.zeros((), device=device, dtype=torch.long)
        self.top5_counted = False  # some batch had more than 5 classes
        self.counts_confusion = confusion
        self.confusion: torch.Tensor | None = None  # made at the first batch, which says how many classes

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
        if self.counts_confusion:
            self._add_confusion(labels, predicted, logits.shape[1])
        if step:  # remembered on the device, so no step waits for the host to look at its loss
            bad = ~torch.isfinite(loss) & (self.first_bad_step == 0)
            self.first_bad_step = torch.where(bad, step, self.first_bad_step)
        self.count += len(labels)

    def _add_confusion(self, labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> None:
        if self.confusion is None:
            self.confusion = torch.zeros(classes * classes, device=labels.device, dtype=torch.long)
        cells = labels * classes + predicted
        self.confusion.index_add_(0, cells, torch.ones_like(cells))

    def read_confusion(self) -> torch.Tensor | None:
        """The confusion matrix over every rank, on the CPU (rows: labels, columns: predictions); None when
        not counted. A rank that saw no batch (a split smaller than the processes) learns its size from the others."""
        classes = 0 if self.confusion is None else math.isqrt(len(self.confusion))
        if self.group.ddp:  # every rank must take part in the sum with a matrix of the same size
            sizes, seen = self.group.sum(
                *(torch.tensor(v, device=self.loss_sum.device) for v in (classes, int(classes > 0)))
            )
            classes = int(sizes.item()) // max(int(seen.item()), 1)
            if self.confusion is None and classes:
                self.confusion = torch.zeros(classes * classes, device=self.loss_sum.device, dtype=torch.long)
        if self.confusion is None:
            return None
        (confusion,) = self.group.sum(self.confusion)
        return confusion.view(classes, classes).cpu()

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


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """The mean recall of the classes that have labels (rows: labels, columns: predictions): scikit-learn's
    balanced_accuracy_score, which leaves out a class with no label even when it was predicted."""
    confusion = confusion.double()
    support = confusion.sum(dim=1)
    present = support > 0
    return (confusion.diagonal()[present] / support[present]).mean().item() if present.any() else 0.0


def macro_f1(confusion: torch.Tensor) -> float:
    """The mean F1 of the classes present among the labels or the predictions: scikit-learn's
    f1_score(average="macro", zero_division=0), so a class never predicted counts 0, and a class
    predicted but absent from the labels counts 0 too (each is a mistake the mean must see)."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    both = confusion.sum(dim=1) + confusion.sum(dim=0)  # 2 TP + FN + FP
    present = both > 0
    return (2 * hits[present] / both[present]).mean().item() if present.any() else 0.0
