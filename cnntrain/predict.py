"""Predict classes of new images with a finished run's best checkpoint.

New images go through the same conversion as the training data: Pillow converts them
to the run's channel count and resizes them to the size the dataset was stored at,
then the training batch transform (resize to the model's input size, normalisation
with the run's mean/std) runs, without augmentation.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

from cnntrain.checkpoint import load_checkpoint
from cnntrain.data.folder import decode, image_extensions
from cnntrain.data.loader import BatchTransform
from cnntrain.errors import CnnTrainError
from cnntrain.run import model_from_checkpoint


@dataclass
class Prediction:
    file: str
    label: str
    probability: float
    top: list[tuple[str, float]]


def find_images(inputs: Path) -> list[Path]:
    if inputs.is_file():
        return [inputs]
    if inputs.is_dir():
        extensions = image_extensions()
        files = sorted(p for p in inputs.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if files:
            return files
        raise CnnTrainError(f"No images found in {inputs}.")
    raise CnnTrainError(f"{inputs} does not exist (inputs=). Give an image file or a folder of images.")


def predict(run_dir: Path, inputs: Path, topk: int = 3, checkpoint: str = "best",
            batch_size: int = 64) -> list[Prediction]:
    state = load_checkpoint(Path(run_dir) / "checkpoints" / f"{checkpoint}.pt")
    model = model_from_checkpoint(state).eval()
    prep, classes = state["preprocess"], state["classes"]
    channels = state["model"]["in_channels"]
    # Runs saved before stored_size was recorded: their datasets were stored at the model size.
    height, width = prep.get("stored_size", [prep["size"]] * 2)
    transform = BatchTransform(size=(prep["size"], prep["size"]), mean=prep["mean"] or None,
                               std=prep["std"] or None)
    files = find_images(Path(inputs))
    predictions = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        try:
            images = torch.stack([torch.from_numpy(decode(f, channels, height, width)) for f in chunk])
        except (OSError, ValueError) as err:
            raise CnnTrainError(f"Cannot read an image in {inputs}: {err}") from err
        with torch.inference_mode():
            probabilities = model(transform(images)).softmax(dim=1)
        values, indices = probabilities.topk(min(topk, len(classes)), dim=1)
        for path, top_p, top_i in zip(chunk, values.tolist(), indices.tolist()):
            top = [(classes[i], p) for i, p in zip(top_i, top_p)]
            predictions.append(Prediction(str(path), top[0][0], top[0][1], top))
    return predictions


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "predicted", "probability", "top_k"])
        for p in predictions:
            writer.writerow([p.file, p.label, f"{p.probability:.6f}",
                             "; ".join(f"{name}:{prob:.4f}" for name, prob in p.top)])


def predictions_table(predictions: list[Prediction]) -> Table:
    table = Table(title=f"predictions ({len(predictions)} images)", header_style="bold")
    for column in ("file", "predicted", "probability", "top k"):
        table.add_column(column, overflow="fold")
    for p in predictions:
        table.add_row(p.file, p.label, f"{p.probability:.3f}", ", ".join(f"{n} {q:.2f}" for n, q in p.top))
    return table
