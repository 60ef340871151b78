"""The files of one cnntrain-eval evaluation, in its eval/<name>/ folder (`run_folder.EvalFolder`):
eval.json, per_class.csv, confusion_matrix.csv/.png, misclassified.csv/.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from cnntrain.checkpoint import RunCheckpoint
from cnntrain.data.image_files import READ_ERRORS, FileImageSet, decode
from cnntrain.errors import CnnTrainError
from cnntrain.eval_result import EvalResult
from cnntrain.run_folder import write_atomically

GRID_IMAGES = 32  # misclassified examples shown in misclassified.png (the most confident mistakes)


LINK_FIX = "Replace the link with a folder, or evaluate a copy of the run folder."


def write_results(result: EvalResult, examples, state: RunCheckpoint) -> None:
    """eval.json, per_class.csv, confusion_matrix.csv/.png, misclassified.csv/.png into the result's folder."""
    folder = result.folder
    result.run.refuse_links_out(folder.files(), LINK_FIX)
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        write_atomically(
            folder.eval_json,
            lambda f: f.write(json.dumps(result.figures(), indent=2, default=str) + "\n"),
            binary=False,
        )
        _write_csv(
            folder.per_class_csv,
            ["class", "precision", "recall", "f1", "support"],
            [
                [row["class"], _cell(row["precision"]), _cell(row["recall"]), _cell(row["f1"]), row["support"]]
                for row in result.per_class
            ],
        )
        _write_csv(
            folder.confusion_csv,
            ["actual/predicted", *result.classes],
            [[name, *counts] for name, counts in zip(result.classes, result.confusion.tolist())],
        )
        named = getattr(examples, "files", None) is not None
        _write_csv(
            folder.misclassified_csv,
            ["file" if named else "index", "true", "predicted", "probability", "true_probability"],
            [
                [
                    row["file"] if named else row["index"],
                    row["true"],
                    row["predicted"],
                    f"{row['probability']:.6f}",
                    f"{row['true_probability']:.6f}",
                ]
                for row in result.misclassified
            ],
        )
        plot_confusion(result)
        plot_misclassified(result, examples, state)
    except OSError as err:
        raise CnnTrainError(
            f"Cannot write the evaluation into {folder.path}: {err.strerror or err}. "
            f"Give the run folder space or write permission."
        ) from err


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    write_atomically(path, write, binary=False)


def plot_confusion(result: EvalResult) -> None:
    """confusion_matrix.png: counts coloured by the share of their row (the actual class), class names on
    the axes, the counts written in the cells up to 30 classes."""
    from cnntrain.plots import new_figure, save_figure

    confusion, classes = result.confusion, result.classes
    count = len(classes)
    side = min(4 + 0.45 * count, 40)
    figure = new_figure(side + 1.5, side, layout="constrained")
    axes = figure.subplots()
    shares = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    image = axes.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the actual class")
    font = 9 if count <= 15 else 7 if count <= 40 else 5
    axes.set_xticks(
        range(count), classes, rotation=90 if count > 8 else 45, ha="right" if count <= 8 else "center", fontsize=font
    )
    axes.set_yticks(range(count), classes, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    if count <= 30:
        for actual in range(count):
            for predicted in range(count):
                value = int(confusion[actual, predicted])
                if value:
                    axes.text(
                        predicted,
                        actual,
                        str(value),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if shares[actual, predicted] > 0.5 else "black",
                    )
    axes.set_title(
        f"{result.model} on {result.data} {result.split} ({result.checkpoint}.pt): "
        f"accuracy {result.evaluation.acc:.4f}",
        fontsize=10,
    )
    save_figure(figure, result.folder.confusion_png)


def plot_misclassified(result: EvalResult, examples, state: RunCheckpoint) -> None:
    """misclassified.png: the most confident mistakes (up to GRID_IMAGES), captioned "pred X / actual Y";
    none when nothing was misclassified (an older one is removed)."""
    from cnntrain.loggers.tensorboard import labelled_grid
    from cnntrain.plots import save_figure

    shown = result.misclassified[:GRID_IMAGES]
    if not shown:
        result.folder.misclassified_png.unlink(missing_ok=True)
        return
    images = torch.stack([_stored_image(examples, row["index"], state) for row in shown]).float().div(255)
    index = {name: i for i, name in enumerate(result.classes)}
    figure = labelled_grid(
        images, [index[row["predicted"]] for row in shown], [index[row["true"]] for row in shown], result.classes
    )
    save_figure(figure, result.folder.misclassified_png)


def _stored_image(examples, i: int, state: RunCheckpoint) -> torch.Tensor:
    """Example `i` as the data stored it (uint8 C, H, W)."""
    if isinstance(examples, FileImageSet):
        try:
            return torch.from_numpy(decode(examples.files[i], examples.channels, examples.size))
        except READ_ERRORS:
            return torch.zeros(examples.shape[1:], dtype=torch.uint8)
    return examples.images[i]
