"""What exporting to ONNX needs besides what every format does (export_formats.py).

`onnx_export_options`: torch.onnx.export's arguments for the torch at hand, so the call works across the torch
versions pyproject.toml accepts (>= 2.4): the torch.export-based exporter from 2.6, the TorchScript-based one
before. `add_onnx_metadata`: the description cnntrain-export writes into the file's metadata_props (exported_model.py
says which keys, `onnx_metadata`, and reads them back). `require_onnx`: the packages format=onnx needs.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cnntrain.errors import CnnTrainError

INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # torch.onnx.export (dynamo) needs onnxscript and onnx
ONNX_INSTALL = "pip install 'cnntrain[onnx]' (or: pip install onnx onnxruntime onnxscript)"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_onnx() -> None:
    """format=onnx needs onnx and onnxscript (torch.onnx.export) and onnxruntime (the check)."""
    missing = [name for name in ONNX_PACKAGES if not _installed(name)]
    if missing:
        raise CnnTrainError(
            f"format=onnx needs {', '.join(ONNX_PACKAGES)}; not installed: {', '.join(missing)}. "
            f"Install them with: {ONNX_INSTALL}. Or export with format=exported_program, which "
            f"needs nothing besides torch."
        )


def free_batch() -> tuple[dict[int, Any]]:
    """torch.export's dynamic_shapes for one image batch whose first dimension is free (any size from 1)."""
    return ({0: torch.export.Dim("batch", min=1)},)


def onnx_export_options(parameters: Mapping[str, Any] | None = None, torch_version: str | None = None) -> dict:
    """torch.onnx.export's arguments for a free batch dimension, for the torch at hand (torch.onnx.export's
    `parameters` and `torch_version`; the installed torch's when not given).

    From torch 2.6 the torch.export-based exporter (dynamo=True; the default from 2.9): `dynamic_shapes`, and
    `external_data=False` so the weights stay inside the one file. Before 2.6 it was not the one torch documented
    (2.5 had it as an option, 2.4 not at all): the TorchScript-based exporter, with `dynamic_axes`, and
    dynamo=False where the argument exists (2.5), since that exporter's default changes with torch's version."""
    parameters = inspect.signature(torch.onnx.export).parameters if parameters is None else parameters
    torch_version = torch.__version__ if torch_version is None else torch_version
    if _version(torch_version) >= (2, 6) and {"dynamo", "dynamic_shapes"} <= set(parameters):
        options: dict[str, Any] = {"dynamo": True, "dynamic_shapes": free_batch()}
        if "external_data" in parameters:
            options["external_data"] = False
        return options
    options = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    if "dynamo" in parameters:
        options["dynamo"] = False
    return options


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def add_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    """`metadata` written into the ONNX file's metadata_props (replacing keys of the same name)."""
    import onnx

    model = onnx.load(str(path))
    kept = [entry for entry in model.metadata_props if entry.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
