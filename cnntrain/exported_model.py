"""An ONNX file written by `cnntrain-export`, loaded to predict with: `load_exported(file.onnx)`.

Run with onnxruntime, with the classes and preprocessing of the json cnntrain-export
wrote beside it, or of the same description inside the file's metadata when the json is
missing (`read_export_info`, which cnntrain-export also reads to tell its own earlier
exports), tried on one blank image (`predictor.check_against_model`).
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


# The key of cnntrain-export's whole description in an exported file's metadata, and the name of the extra file
# the TorchScript and torch.export archives carry it in.
DESCRIPTION_KEY = "cnntrain_export_info"
EXTRA_FILE = f"{DESCRIPTION_KEY}.json"
ONNX_RUNTIME_INSTALL = "pip install onnxruntime (or pip install 'cnntrain[onnx]')"


def onnx_model(path: Path | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ONNX file at `path` as a function: float batch -> logits, run by onnxruntime on the CPU."""
    session = inference_session(path)
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {input_name: array})[0])

    return run


def inference_session(path: Path | str):
    """onnxruntime's session of the file (on the CPU); a CnnTrainError when onnxruntime is missing or refuses it."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise CnnTrainError(
            f"Running {path} needs onnxruntime, which is not installed. Install it with: {ONNX_RUNTIME_INSTALL}."
        )
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error kinds (InvalidProtobuf, Fail, ...)
        raise CnnTrainError(
            f"onnxruntime cannot load {path}: {_first_line(err)}. Export it again with cnntrain-export."
        ) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip().rstrip(".") if text else type(err).__name__


def is_exported_file(run: Path | str) -> bool:
    """run= names an exported ONNX file (cnntrain-predict's other kind of run=)."""
    return Path(run).suffix.lower() == ".onnx"


def read_export_info(model_file: Path) -> dict[str, Any]:
    """What cnntrain-export says of `model_file`: the json it wrote beside it or, when that is missing, the same
    description inside an ONNX file's metadata (CnnTrainError when neither is there, or it is not one)."""
    info_path = export_info_path(model_file)
    source = description_source(model_file)
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            raise CnnTrainError(f"{info_path} is damaged ({err}). Export again with cnntrain-export.") from None
    else:
        info = embedded_description(model_file)
        if info is None:
            raise CnnTrainError(
                f"{info_path} is missing, and {model_file} does not carry the description cnntrain-export puts "
                f"inside the ONNX files it writes (its class names and preprocessing). Keep the json beside the "
                f"file, or export again with: cnntrain-export run=<run folder> format=onnx."
            )
    needed = ("classes", "preprocess", "in_channels", "format")
    if not isinstance(info, dict) or info.get("exported_by") != "cnntrain-export" or any(k not in info for k in needed):
        raise CnnTrainError(
            f"{source} is not a description written by cnntrain-export (it needs {', '.join(needed)}). "
            f"Export again with cnntrain-export."
        )
    check_model_description(info["classes"], info["in_channels"], info["preprocess"], source, EXPORT_AGAIN)
    if info.get("tta") not in (None, *TTA_MODES):
        raise CnnTrainError(
            f"{source} has tta={info['tta']!r}; it needs null or one of {', '.join(TTA_MODES)}. {EXPORT_AGAIN}"
        )
    return info


def onnx_metadata(description: dict[str, Any]) -> dict[str, str]:
    """The string pairs cnntrain-export writes into an ONNX file's metadata_props: the whole description as json
    (what `read_export_info` reads back), and the keys other tools look for, each readable alone (onnxruntime:
    `InferenceSession(file).get_modelmeta().custom_metadata_map`)."""
    preprocess = description["preprocess"]
    return {
        DESCRIPTION_KEY: json.dumps(description),
        "classes": json.dumps(description["classes"]),
        "input_size": json.dumps([description["in_channels"], preprocess["size"], preprocess["size"]]),
        "mean": json.dumps(preprocess.get("mean") or []),
        "std": json.dumps(preprocess.get("std") or []),
        "cnntrain_version": description["cnntrain_version"],
    }


def embedded_description(model_file: Path) -> dict[str, Any] | None:
    """The description inside an ONNX file's metadata (`onnx_metadata`); None for a file without one. onnxruntime
    missing, or refusing the file, is the CnnTrainError predicting with it would give."""
    if not is_exported_file(model_file):
        return None
    text = inference_session(model_file).get_modelmeta().custom_metadata_map.get(DESCRIPTION_KEY)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise CnnTrainError(
            f"The description in the metadata of {model_file} is damaged: export it again with cnntrain-export."
        ) from None


def description_source(model_file: Path) -> str:
    """Where `read_export_info` reads the file's description from, as messages name it."""
    info_path = export_info_path(model_file)
    return str(info_path) if info_path.is_file() else f"the metadata of {model_file}"


EXPORT_AGAIN = "It does not describe the model it was written with: export again with cnntrain-export."


def load_exported(path: Path | str) -> ExportedModel:
    """An ONNX file written by `cnntrain-export format=onnx` (with the json beside it, or alone), ready to predict."""
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
    check_against_model(exported, description_source(path), EXPORT_AGAIN)
    return exported
