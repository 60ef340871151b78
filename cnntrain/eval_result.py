"""What one cnntrain-eval evaluation measured (`EvalResult`) and the figures made from its predictions: the
confusion matrix, precision/recall/F1 per class, the misclassified examples (most confident first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cnntrain.run_folder import EvalFolder, RunFolder
from cnntrain.trainer import Evaluation


@dataclass
class EvalResult:
    """One evaluation: what was measured on what, and where the files went."""

    run: RunFolder
    folder: EvalFolder
    checkpoint: str  # best or last
    epoch: int  # the epoch the checkpoint holds
    model: str
    data: str  # the dataset's name
    source: str  # where its images came from ("from <folder>", ...)
    own_data: bool  # the run's own data (no data setting changed)
    split: str
    classes: list[str]  # the run's
    evaluation: Evaluation  # loss, acc, top5 and each example's prediction
    confusion: torch.Tensor  # (classes, classes): rows the actual class, columns the predicted one
    per_class: list[dict[str, Any]]
    misclassified: list[dict[str, Any]]  # most confident first
    notices: list[str] = field(default_factory=list)
    run_test: dict[str, Any] | None = None  # the run's summary.json test figures, when they are for this split
    tta: str | None = None  # the test-time augmentation measured with (None: none)
    run_tta: str | None = None  # the run's trainer.tta

    @property
    def size(self) -> int:
        return len(self.evaluation.labels)

    def figures(self) -> dict[str, Any]:
        """What eval.json holds."""
        evaluation = self.evaluation
        figures = {
            "run_dir": str(self.run.path),
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "model": self.model,
            "data": self.data,
            "source": self.source,
            "own_data": self.own_data,
            "split": self.split,
            "size": self.size,
            "loss": evaluation.loss,
            "acc": evaluation.acc,
        }
        if evaluation.top5 is not None:
            figures["top5"] = evaluation.top5
        figures.update(balanced_acc=evaluation.balanced_acc, macro_f1=evaluation.macro_f1)
        figures.update(
            {
                "misclassified": len(self.misclassified),
                "classes": self.classes,
                "per_class": self.per_class,
                "confusion_matrix": self.confusion.tolist(),
                "notices": self.notices,
                "run_test": self.run_test,
                "tta": self.tta,
            }
        )
        return figures


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts: row = actual class, column = predicted class."""
    return torch.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def per_class_metrics(confusion: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows actual, columns
    predicted). None where undefined: precision of a class never predicted, recall of one with no example."""
    rows = []
    for i, name in enumerate(classes):
        hits, support, predicted = int(confusion[i, i]), int(confusion[i].sum()), int(confusion[:, i].sum())
        precision = hits / predicted if predicted else None
        recall = hits / support if support else None
        f1 = (
            (2 * precision * recall / (precision + recall) if precision + recall else 0.0)
            if precision is not None and recall is not None
            else None
        )
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def misclassified_rows(evaluation: Evaluation, examples, classes: list[str]) -> list[dict[str, Any]]:
    """Each wrongly classified example: its file (image folders) or index in the split, the true and predicted
    class, the probability of the prediction and of the true class; the most confident mistakes first."""
    files = getattr(examples, "files", None)
    wrong = (evaluation.predicted != evaluation.labels).nonzero().flatten().tolist()
    rows = []
    for i in wrong:
        actual, predicted = int(evaluation.labels[i]), int(evaluation.predicted[i])
        rows.append(
            {
                "index": i,
                "file": str(files[i]) if files is not None else None,
                "true": classes[actual],
                "predicted": classes[predicted],
                "probability": float(evaluation.probabilities[i, predicted]),
                "true_probability": float(evaluation.probabilities[i, actual]),
            }
        )
    return sorted(rows, key=lambda row: -row["probability"])
