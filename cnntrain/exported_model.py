"""An ONNX file written by `cnntrain-export`, loaded to predict with: `load_exported(file.onnx)`.

Run with onnxruntime, with the classes and preprocessing of the json cnntrain-export
wrote beside it (`read_export_info`, which cnntrain-export also reads to tell its own
earlier exports), tried on one blank image (`predictor.check_against_model`).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnntrain.checkpoint import check_model_description
from cnntrain.errors import CnnTrainError
from cnntrain.evaluator import TTA_MODES
from cnntrain.predictor import Predictor, check_against_model
from cnntrain.run_folder import export_info_path


@dataclass
class ExportedModel(Predictor):
    """An ONNX file written by cnntrain-export, run with onnxruntime, with the classes and preprocessing
    of the json beside it (`info`: that json's content)."""

    path: Path
    info: dict[str, Any]
    model: Callable[[torch.Tensor], torch.Tensor]

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def preprocess(self) -> dict[str, Any]:
        return dict(self.info["preprocess"])

    @property
    def in_channels(self) -> int:
        return int(self.info["in_channels"])

    @property
    def run_tta(self) -> str | None:
        return self.info.get("tta")  # absent from files exported before it was recorded: none


ONNX_RUNTIME_INSTALL = "pip install onnxruntime (or pip install 'cnntrain[onnx]')"


def onnx_model(path: Path | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ONNX file at `path` as a function: float batch -> logits, run by onnxruntime on the CPU."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise CnnTrainError(
            f"Running {path} needs onnxruntime, which is not installed. Install it with: {ONNX_RUNTIME_INSTALL}."
        )
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error kinds (InvalidProtobuf, Fail, ...)
        raise CnnTrainError(
            f"onnxruntime cannot load {path}: {_first_line(err)}. Export it again with cnntrain-export."
        ) from None
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {input_name: array})[0])

    return run


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip().rstrip(".") if text else type(err).__name__


def is_exported_file(run: Path | str) -> bool:
    """run= names an exported ONNX file (cnntrain-predict's other kind of run=)."""
    return Path(run).suffix.lower() == ".onnx"


def read_export_info(model_file: Path) -> dict[str, Any]:
    """The json cnntrain-export wrote beside `model_file` (CnnTrainError when it is missing or not one)."""
    info_path = export_info_path(model_file)
    if not info_path.is_file():
        raise CnnTrainError(
            f"{info_path} is missing: the class names and preprocessing of {model_file} are in "
            f"the json cnntrain-export writes beside it. Keep the two files together, or export "
            f"again with: cnntrain-export run=<run folder> format=onnx."
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise CnnTrainError(f"{info_path} is damaged ({err}). Export again with cnntrain-export.") from None
    needed = ("classes", "preprocess", "in_channels", "format")
    if not isinstance(info, dict) or info.get("exported_by") != "cnntrain-export" or any(k not in info for k in needed):
        raise CnnTrainError(
            f"{info_path} is not a json written by cnntrain-export (it needs {', '.join(needed)}). "
            f"Export again with cnntrain-export."
        )
    check_model_description(info["classes"], info["in_channels"], info["preprocess"], str(info_path), EXPORT_AGAIN)
    if info.get("tta") not in (None, *TTA_MODES):
        raise CnnTrainError(
            f"{info_path} has tta={info['tta']!r}; it needs null or one of {', '.join(TTA_MODES)}. {EXPORT_AGAIN}"
        )
    return info


EXPORT_AGAIN = "It does not describe the model it was written with: export again with cnntrain-export."


def load_exported(path: Path | str) -> ExportedModel:
    """An ONNX file written by `cnntrain-export format=onnx`, with the json beside it, ready to predict."""
    path = Path(path)
    if not path.is_file():
        raise CnnTrainError(
            f"{path} does not exist (run=). Give a run folder, or an .onnx file written by cnntrain-export."
        )
    info = read_export_info(path)
    if info["format"] != "onnx":
        raise CnnTrainError(
            f"{export_info_path(path)} describes a {info['format']} export, not the ONNX file "
            f"{path.name}. Export again with cnntrain-export format=onnx."
        )
    exported = ExportedModel(path, info, onnx_model(path))
    check_against_model(exported, str(export_info_path(path)), EXPORT_AGAIN)
    return exported
