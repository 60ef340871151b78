"""The files the companion commands write beside a run: cnntrain-eval's eval/<name>/ (`EvalFolder`),
cnntrain-export's export/model.<format> and the json beside each export (`export_info_path`), and where
cnntrain-predict run=<file.onnx> writes (`export_predictions_csv`). `RunFolder` names their places."""

from __future__ import annotations

from pathlib import Path

# cnntrain-export's formats and the file each is written to (in <run folder>/export/ by default).
EXPORT_FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "exported_program": "model.pt2"}


def export_info_path(model_file: Path | str) -> Path:
    """The json beside an exported model: its full file name + .json (model.onnx -> model.onnx.json), so that
    the exports of several formats in one folder each keep their own."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def export_predictions_csv(model_file: Path | str) -> Path:
    """Where cnntrain-predict run=<file.onnx> writes by default: beside the file (model.onnx ->
    model.predictions.csv)."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.stem + ".predictions.csv")


class EvalFolder:
    """The files of one evaluation of a run (cnntrain-eval), in `path` (RunFolder.evaluation)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.eval_json = self.path / "eval.json"  # every figure below, and what was evaluated
        self.per_class_csv = self.path / "per_class.csv"  # precision, recall, F1, support per class
        self.confusion_csv = self.path / "confusion_matrix.csv"  # rows: actual class, columns: predicted
        self.confusion_png = self.path / "confusion_matrix.png"
        self.misclassified_csv = self.path / "misclassified.csv"  # file (or index), actual, predicted, probability
        self.misclassified_png = self.path / "misclassified.png"  # a grid of some of them, "pred X / actual Y"

    def files(self) -> list[Path]:
        """The folder and every file written in it."""
        return [
            self.path,
            self.eval_json,
            self.per_class_csv,
            self.confusion_csv,
            self.confusion_png,
            self.misclassified_csv,
            self.misclassified_png,
        ]

    def __str__(self) -> str:
        return str(self.path)
