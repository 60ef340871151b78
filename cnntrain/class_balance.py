"""Imbalanced classes: how many training images each class has, the loss weights trainer.class_weights
asks for, and what a run says (the imbalance notice) and records (summary.json's "imbalance") of them.

`ClassBalance` is built once the training split is known (build.py): the counts are those of the
images actually trained on, after the validation hold-out and data.subset. `balanced` is scikit-learn's
compute_class_weight("balanced"): n_images / (n_classes x the class's images), whose mean over the
training images is 1, so the loss keeps its scale. The weights weigh the training loss only
(`training_loss`); validation and test losses stay plain cross-entropy, comparable across runs.
data.sampler=balanced, the other remedy, is the training loader's (data/sampling.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cnntrain.errors import ConfigError, first_few

# The largest class holding more than this many times the images of the smallest is named in the run's first lines.
IMBALANCE_RATIO = 5
# The per-epoch figures that weigh every class the same (metrics.csv's columns).
BALANCED_FIGURES = ("val_balanced_acc", "val_macro_f1")


def shows_balanced_figures(imbalance: dict[str, Any], watched: Iterable[str]) -> bool:
    """Whether the epoch lines and the result table show the balanced accuracy and macro-F1 beside the accuracy:
    for data whose classes are imbalanced (summary.json's "imbalance"), with either remedy set, or when best.pt or
    early stopping watch one of them (`watched`). Elsewhere they would only lengthen the lines (metrics.csv has
    them always)."""
    return bool(
        imbalance.get("imbalanced")
        or imbalance.get("class_weights")
        or imbalance.get("sampler")
        or set(watched) & set(BALANCED_FIGURES)
    )


def per_example_mean(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """The class-weighted cross-entropy of each example, averaged over the examples (`training_loss`)."""
    losses = F.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing, reduction="none")
    return losses.mean()


def balanced_weights(counts: list[int]) -> list[float]:
    """scikit-learn's "balanced" class weights: n_images / (n_classes x count), for counts above zero."""
    total, classes = sum(counts), len(counts)
    return [total / (classes * count) for count in counts]


@dataclass(frozen=True)
class ClassBalance:
    """The training split's class counts and what trainer.class_weights and data.sampler made of them."""

    classes: list[str]
    counts: list[int]  # training images per class, in the classes' order
    weights: list[float] | None  # the training loss's class weights; None: unweighted
    sampler: str | None  # data.sampler

    def training_loss(self, label_smoothing: float, device: torch.device) -> Callable:
        """Cross-entropy with the class weights (torch's `weight=`), hard labels or trainer.mixup's soft targets
        alike, averaged over the batch's examples (Keras's class_weight does the same). Not torch's weighted mean,
        which divides a batch of hard labels by the sum of its weights: that sum differs between the shares of
        torchrun's processes and between accumulated batches, whose losses are then averaged by their counts, so
        the gradient would not be the whole batch's. Balanced weights average 1 per training image, so the loss
        keeps the unweighted scale."""
        if self.weights is None:
            return functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
        weight = torch.tensor(self.weights, dtype=torch.float32, device=device)
        return functools.partial(per_example_mean, weight=weight, label_smoothing=label_smoothing)

    @property
    def imbalanced(self) -> bool:
        """The largest class has more than IMBALANCE_RATIO x the images of the smallest."""
        return max(self.counts) > IMBALANCE_RATIO * min(self.counts)

    def notice(self) -> str | None:
        """The run's first lines name a largest class with more than IMBALANCE_RATIO x the smallest's images,
        and the options, unless one of them is set already; both set is said too (each alone evens the classes)."""
        largest, smallest = max(self.counts), min(self.counts)
        if self.weights is not None and self.sampler is not None:
            return (
                "notice: trainer.class_weights and data.sampler=balanced are both set: the sampler already draws "
                "every class equally often, so the weights then favour the rare classes instead. Use one of them."
            )
        if self.weights is not None or self.sampler is not None or not self.imbalanced:
            return None
        big, small = self.classes[self.counts.index(largest)], self.classes[self.counts.index(smallest)]
        if smallest:
            versus = f"{largest / smallest:.1f}x the {smallest:,} of the smallest, '{small}'"
        else:
            versus = f"and '{small}' has none"
        return (
            f"notice: imbalanced classes: the largest training class, '{big}', has {largest:,} images, {versus} "
            f"(every class's count: summary.json's \"imbalance\"). Accuracy then favours the large classes: to "
            f"weigh every class the same, set trainer.class_weights=balanced (the loss) or data.sampler=balanced "
            f"(the batches), and watch val_balanced_acc and val_macro_f1."
        )

    def summary(self) -> dict[str, Any]:
        """summary.json's "imbalance" entry."""
        return {
            "imbalanced": self.imbalanced,
            "class_counts": dict(zip(self.classes, self.counts)),
            "class_weights": None if self.weights is None else dict(zip(self.classes, self.weights)),
            "sampler": self.sampler,
        }


def class_balance(
    labels: torch.Tensor, classes: list[str], class_weights: str | tuple[float, ...] | None, sampler: str | None
) -> ClassBalance:
    """The training split's `labels` counted, and trainer.class_weights resolved against them (checked:
    trainer_checks.check_class_weights; here what needs the data: the list's length, empty classes)."""
    counts = torch.bincount(labels.cpu(), minlength=len(classes)).tolist()
    return ClassBalance(list(classes), counts, _resolved_weights(class_weights, counts, classes), sampler)


def _resolved_weights(setting: str | tuple[float, ...] | None, counts: list[int], classes: list[str]):
    if setting is None:
        return None
    if setting == "balanced":
        empty = [name for name, count in zip(classes, counts) if count == 0]
        if empty:
            raise ConfigError(
                f"trainer.class_weights=balanced weighs each class by n_images / (n_classes x its images), but "
                f"{_names(empty)} {'has' if len(empty) == 1 else 'have'} no training image (after the validation "
                f"hold-out and data.subset), which would weigh infinitely. Give the weights as a list "
                f"(trainer.class_weights=[...], one per class), train on more images (a larger data.subset), "
                f"or use data.sampler=balanced, which draws only the classes that have images."
            )
        return balanced_weights(counts)
    if len(setting) != len(classes):
        raise ConfigError(
            f"trainer.class_weights has {len(setting)} value{'s' if len(setting) != 1 else ''} but the data has "
            f"{len(classes)} classes ({_names(classes)}): give one positive number per class, in this order, "
            f"or trainer.class_weights=balanced."
        )
    return list(setting)


def _names(classes: list[str], shown: int = 12) -> str:
    """'a', 'b', ... (and N more)."""
    return first_few([f"'{name}'" for name in classes], shown)
