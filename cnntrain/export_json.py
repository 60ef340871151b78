"""The json cnntrain-export writes beside an exported file (<file>.json, companion_files.export_info_path):
`export_info` says what it holds (the classes, the preprocessing that turns images into the file's input, the
input and output, the format, the versions, the run and checkpoint it came from, the verification figures);
`info_text` is the text written. exported_model.read_export_info reads it back.

The same description, less the verification (which needs the written file), goes inside the exported file
(`model_description`; exported_model.py's `onnx_metadata`): an ONNX file's metadata_props, a TorchScript or
torch.export archive's extra file `cnntrain_export_info.json`. So the file alone says what its outputs mean.
Neither keeps an absolute path of the machine it was made on: the run is named by its folder's name, the
checkpoint relative to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cnntrain import __version__
from cnntrain.export_formats import INPUT_NAME, OUTPUT_NAME, Verification
from cnntrain.predict import LoadedRun


def export_info(description: dict[str, Any], verification: Verification) -> dict[str, Any]:
    """What the json beside an export holds: the model's description and how the file compared with PyTorch."""
    return {**description, "verification": verification.as_dict()}


def model_description(loaded: LoadedRun, format: str, path: Path, checkpoint: str) -> dict[str, Any]:
    """What the exported file is: its classes, preprocessing, input and output, versions and origin."""
    prep = loaded.preprocess
    size = prep["size"]
    # stored_size, size, mean, std (and whatever else prediction converts with); not the training augmentations.
    preprocess = {key: _plain(value) for key, value in prep.items() if key != "augment"}
    input_spec = {
        "shape": ["batch", loaded.in_channels, size, size],
        "dtype": "float32",
        "batch": "dynamic (any size >= 1)",
        "is": "images as floats in [0, 1] (stored_size, then resized to size x size, or to "
        "resize_before_crop x resize_before_crop and centre-cropped to size x size when it is set; "
        "bilinear with antialiasing), minus mean, divided by std (per channel; not normalised "
        "when empty)",
    }
    if format == "onnx":
        input_spec = {"name": INPUT_NAME, **input_spec}
    output_spec = {"shape": ["batch", len(loaded.classes)], "is": "logits (softmax gives probabilities)"}
    if format == "onnx":
        output_spec = {"name": OUTPUT_NAME, **output_spec}
    return {
        "exported_by": "cnntrain-export",
        "cnntrain_version": __version__,
        "torch_version": torch.__version__,
        "format": format,
        "file": path.name,
        "model": loaded.checkpoint.model_recipe["name"],
        # model=timm / model=torchvision: which of their architectures (the family's name alone says little)
        **({"arch": arch} if (arch := loaded.checkpoint.model_recipe.get("settings", {}).get("arch")) else {}),
        "classes": loaded.classes,
        "in_channels": loaded.in_channels,
        "preprocess": preprocess,
        "input": input_spec,
        "output": output_spec,
        # The run's trainer.tta: the file computes one pass; cnntrain-predict run=<this file> averages each
        # image with its mirror image when it is hflip, as the run's test did (tta=none: one pass).
        "tta": loaded.run_tta,
        # The run folder's name and the checkpoint relative to it: an absolute path would tell whoever gets the
        # file the user's name and folders, and mean nothing on their machine.
        "run": loaded.folder.path.resolve().name,
        "checkpoint": checkpoint,
        "checkpoint_file": _relative_to_run(loaded.checkpoint.path, loaded.folder.path),
        "epoch": loaded.checkpoint.epoch,
    }


def _relative_to_run(file: Path, run_dir: Path) -> str:
    try:
        return file.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:  # a checkpoint outside its run folder (a link): its name only
        return file.name


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def info_text(info: dict[str, Any]) -> str:
    """The json as written beside the file (indented, a newline at the end)."""
    return json.dumps(info, indent=2) + "\n"
