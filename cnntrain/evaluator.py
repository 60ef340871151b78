"""Evaluation: the one loop that measures a model on a loader (validation, the run's test,
cnntrain-eval), and test-time augmentation (trainer.tta, cnntrain-eval's and -predict's tta=).

`evaluate` sums loss, accuracy, top-5 and the confusion matrix on the device (`metrics._RunningStats`)
and reads them once (the balanced accuracy and macro-F1 come from the matrix); with tta=hflip what it
measures per batch is `evaluation_logits`: the log of the mean softmax of the batch and its mirror image
(`mean_log_probabilities`, which cnntrain-predict uses too, so predictions agree with cnntrain-eval's).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnntrain.distributed import Group
from cnntrain.errors import ConfigError
from cnntrain.metrics import _RunningStats, balanced_accuracy, macro_f1
from cnntrain.registry import did_you_mean

TTA_MODES = ("hflip",)  # trainer.tta (evaluation_logits)
TTA_CHOICES = ("run", "none", *TTA_MODES)  # cnntrain-eval/-predict tta=: run (the run's trainer.tta), none, or a mode


def resolve_tta(choice: str, run_tta: str | None) -> str | None:
    """cnntrain-eval's and cnntrain-predict's tta= (run, none or a mode) -> the mode to use, None for none."""
    if choice not in TTA_CHOICES:
        raise ConfigError(
            f"Unknown test-time augmentation '{choice}' (tta=).{did_you_mean(choice, TTA_CHOICES)} Use "
            f"tta=run (what the run used: its trainer.tta), tta=none (no augmentation) or tta=hflip "
            f"(the mean of each image's and its mirror's probabilities)."
        )
    return run_tta if choice == "run" else None if choice == "none" else choice


def tta_line(tta: str | None, run_tta: str | None) -> str | None:
    """What cnntrain-eval and cnntrain-predict say of the test-time augmentation they used (`tta`, resolved)
    against the run's trainer.tta; nothing when neither asks for one."""
    if tta != run_tta:
        return f"test-time augmentation: {tta or 'none'} (the run used trainer.tta={run_tta or 'null'})"
    return f"test-time augmentation: {tta} (the run's trainer.tta)" if tta else None


@dataclass
class Evaluation:
    """What `evaluate` (`Trainer.evaluate`) measured. Unpacks as (loss, accuracy), as it always has."""

    loss: float  # mean cross-entropy
    acc: float
    top5: float | None = None  # top-5 accuracy; None for 5 classes or fewer
    balanced_acc: float | None = None  # the mean per-class recall (metrics.balanced_accuracy); None: no example
    macro_f1: float | None = None  # the mean per-class F1 (metrics.macro_f1); None: no example
    confusion: torch.Tensor | None = None  # (classes, classes) counts on the CPU: rows labels, columns predictions
    # With keep_outputs (on the CPU, one row per example in the loader's order; None otherwise):
    predicted: torch.Tensor | None = None  # (N,) the class of the highest logit, as the accuracy counts it
    probabilities: torch.Tensor | None = None  # (N, classes) softmax, float32 (with tta=hflip: the two passes' mean)
    labels: torch.Tensor | None = None  # (N,)

    def __iter__(self):
        return iter((self.loss, self.acc))

    def figures(self, prefix: str) -> dict[str, float]:
        """The figures by name (prefix "test": test_loss, test_acc, test_top5 when measured, test_balanced_acc,
        test_macro_f1), as summary.json and the callbacks' on_test_end get them."""
        figures = {"loss": self.loss, "acc": self.acc, "top5": self.top5}
        figures |= {"balanced_acc": self.balanced_acc, "macro_f1": self.macro_f1}
        return {f"{prefix}_{name}": value for name, value in figures.items() if value is not None}


def mean_log_probabilities(logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
    """log((p + p_mirrored) / 2), float32, without underflow: test-time flip augmentation (tta=hflip), for
    `Trainer.evaluate` and cnntrain-predict alike. Its softmax is the mean of the two passes' probabilities."""
    both = torch.stack((logits.float().log_softmax(dim=1), mirrored_logits.float().log_softmax(dim=1)))
    return torch.logsumexp(both, dim=0) - math.log(2)


@torch.inference_mode()
def evaluate(
    forward: Callable,
    model: torch.nn.Module,
    loader,
    device: torch.device,
    group: Group | None = None,
    tta: str | None = None,
    autocast=contextlib.nullcontext,
    keep_outputs: bool = False,
) -> Evaluation:
    """Mean cross-entropy, accuracy (and top-5 accuracy for more than 5 classes), balanced accuracy and macro-F1
    of `forward` over `loader`, without autograd, `model` (what `forward` runs) in eval mode; unpacks as
    (loss, accuracy). The loss is unweighted (trainer.class_weights weighs the training loss only). `keep_outputs`:
    also each example's predicted class, probabilities and label, in the loader's order (what cnntrain-eval
    reports per class). `autocast`: the mixed-precision context the training uses."""
    model.eval()
    stats = _RunningStats(device, top5=True, group=group, confusion=True)
    outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for images, labels in loader:
        logits = evaluation_logits(forward, images, tta, autocast)
        predicted = logits.argmax(dim=1)
        stats.add(logits, labels, F.cross_entropy(logits.float(), labels), predicted=predicted)
        if keep_outputs:  # kept on the device until the end: no host sync per batch
            outputs.append((predicted, logits.float().softmax(dim=1), labels))
    loss, acc = stats.read()
    evaluation = Evaluation(loss, acc, stats.read_top5(), confusion=stats.read_confusion())
    if evaluation.confusion is not None:
        evaluation.balanced_acc = balanced_accuracy(evaluation.confusion)
        evaluation.macro_f1 = macro_f1(evaluation.confusion)
    if keep_outputs and outputs:
        evaluation.predicted, evaluation.probabilities, evaluation.labels = (
            torch.cat(parts).cpu() for parts in zip(*outputs)
        )
    return evaluation


def evaluation_logits(
    forward: Callable, images: torch.Tensor, tta: str | None = None, autocast=contextlib.nullcontext
) -> torch.Tensor:
    """What `evaluate` measures for a batch: `forward(images)`; with tta=hflip the log of the mean of the
    softmax probabilities of the batch and of its horizontal mirror, float32. Log-probabilities are
    logits whose softmax is that mean, so the accuracy, top-5 and probabilities are the averaged
    probabilities' and the loss is the cross-entropy of the averaged probabilities, -log(mean p[label])."""
    with autocast():
        logits = forward(images)
        if tta != "hflip":
            return logits
        mirrored = forward(images.flip(-1))
    return mean_log_probabilities(logits, mirrored)
