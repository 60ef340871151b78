"""A finished run, loaded for use: `load_run(folder).predict(images)`, and `cnntrain-predict`'s loading.

A `Predictor` (predictor.py) is what predicting needs: class names, the preprocessing,
the channel count, a model (normalised float batch -> logits) and the run's test-time
augmentation (trainer.tta, applied by default as the run's test applied it; tta=none
turns it off). `LoadedRun` takes them from a run folder's checkpoint (opened by
`opened_run.open_run`, as every command opens a run), `ExportedModel` (`load_exported`,
exported_model.py) from an ONNX file written by `cnntrain-export` and the json beside it;
`load_predictor` takes either. What cnntrain-predict writes and prints is predict_output.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnntrain.checkpoint import RunCheckpoint
from cnntrain.exported_model import (
    EXPORT_AGAIN,
    ExportedModel,
    is_exported_file,
    load_exported,
    onnx_model,
    read_export_info,
)
from cnntrain.opened_run import CHECKPOINTS, open_run
from cnntrain.predict_output import (
    PREDICTIONS_HEADER,
    SCREENFUL,
    check_output,
    predictions_path,
    predictions_summary,
    predictions_table,
    shown_path,
    write_predictions,
)
from cnntrain.predictor import Prediction, Predictor, check_against_model, checked_tensor, find_images
from cnntrain.run_folder import RunFolder

# Importable from here as before the split (the command line, export.py and users import them from predict).
__all__ = [
    "LoadedRun",
    "load_run",
    "load_predictor",
    "predict",
    "Prediction",
    "Predictor",
    "checked_tensor",
    "find_images",
    "check_against_model",
    "ExportedModel",
    "load_exported",
    "onnx_model",
    "read_export_info",
    "is_exported_file",
    "EXPORT_AGAIN",
    "CHECKPOINTS",
    "PREDICTIONS_HEADER",
    "SCREENFUL",
    "check_output",
    "predictions_path",
    "predictions_summary",
    "predictions_table",
    "shown_path",
    "write_predictions",
]


@dataclass
class LoadedRun(Predictor):
    """A run's model with its weights (in eval mode, on the CPU), class names and preprocessing."""

    folder: RunFolder
    checkpoint: RunCheckpoint
    model: torch.nn.Module

    @property
    def classes(self) -> list[str]:
        return self.checkpoint.classes

    @property
    def preprocess(self) -> dict[str, Any]:
        """stored_size, size (the model's input), mean and std (empty: not normalised), augment."""
        return self.checkpoint.preprocess

    @property
    def in_channels(self) -> int:
        return self.checkpoint.in_channels

    @property
    def run_tta(self) -> str | None:
        return (self.checkpoint.config.get("trainer") or {}).get("tta")

    @property
    def summary(self) -> dict[str, Any]:
        return self.folder.read_summary()


def load_predictor(run: Path | str, checkpoint: str = "best", imports: list[str] | str | None = None) -> Predictor:
    """A run folder (`load_run`) or an exported .onnx file (`load_exported`; checkpoint and imports do not apply:
    the file holds the weights of the checkpoint it was exported from, and no Python code)."""
    return load_exported(run) if is_exported_file(run) else load_run(run, checkpoint, imports)


def load_run(run_dir: Path | str, checkpoint: str = "best", imports: list[str] | str | None = None) -> LoadedRun:
    """The run in `run_dir` with the weights of checkpoints/<checkpoint>.pt (best or last).

    `imports`: for a run of your own model, the modules the run was trained with (they
    register the model). Modules named only in the run folder are never imported.
    """
    opened = open_run(run_dir, checkpoint, imports)
    state = opened.checkpoint
    loaded = LoadedRun(opened.folder, state, state.build_model().eval())
    check_against_model(
        loaded,
        f"Checkpoint {state.path}",
        "It was changed after the run wrote it: copy the run folder again from where it came from.",
    )
    return loaded


def predict(
    run_dir: Path,
    inputs: Path,
    topk: int = 3,
    checkpoint: str = "best",
    batch_size: int = 64,
    imports: str | None = None,
    tta: str = "run",
) -> list[Prediction]:
    """The predictions of a run (or of an exported .onnx file) for an image file or a folder of images."""
    return load_predictor(run_dir, checkpoint, imports).predict(Path(inputs), topk=topk, batch_size=batch_size, tta=tta)
