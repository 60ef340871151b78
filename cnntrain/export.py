"""`cnntrain-export`: a run's model as an ONNX, TorchScript or torch.export file, checked against PyTorch.

    cnntrain-export run=<run folder> format=onnx|torchscript|exported_program [checkpoint=best|last]
                    [output=<file>] [imports=[my_models]]

The file takes what the model takes: the already converted, normalised float batch
(N, C, size, size), with N free (a dynamic batch dimension), and returns logits
(N, classes). Beside it goes `<file>.json` (model.onnx -> model.onnx.json; see
companion_files.export_info_path): the classes, the preprocessing (stored_size, size, mean,
std) that turns images into that batch, the input shape, the format, the cnntrain
version, the run folder and checkpoint it came from, and the verification figures.

Every export is verified before it is put in place: the file is written under a
temporary name, loaded back the way a user would load it (onnxruntime,
torch.jit.load, torch.export.load), run on a batch of the run's own validation images
converted exactly as prediction converts them (predictor.Predictor.to_array and
transform; random images, with a notice, when the run's data cannot be loaded), at
batch sizes other than the one it was exported with, and compared with the PyTorch
model. Above the tolerance the export fails and nothing is written.

This module is the run-level export (`export_run`: the checks of the run, the output and
the folder, then the export, its verification and the json); the verification images
come from export_images.py, the json's contents from export_json.py, the formats and the
check itself from export_formats.py.

`export_and_verify(model, example, format, path, batches)` is the same check for any
model, without a run (the zoo test uses it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnntrain.errors import CnnTrainError
from cnntrain.export_formats import (
    EXPORT_BATCH,
    FORMATS,
    SUFFIXES,
    TOLERANCE,
    VERIFY_BATCHES,
    Verification,
    check_format,
    export_and_verify,
    export_model,
    load_exported_file,
)
from cnntrain.export_images import run_images
from cnntrain.export_json import export_info, info_text, model_description
from cnntrain.onnx_export import require_onnx
from cnntrain.opened_run import RunArgument, find_checkpoint
from cnntrain.predict import load_run, read_export_info
from cnntrain.run_folder import (
    EXPORT_FILE_NAMES,
    RunFolder,
    cannot_write_message,
    check_writable,
    display_path,
    export_info_path,
    refuse_links_out_of_run,
    write_atomically,
)

# Importable from here as before the split (tests, the zoo test and users import them from export).
__all__ = [
    "export_run",
    "ExportResult",
    "export_info",
    "check_export_output",
    "TORCHSCRIPT_NOTICE",
    "FORMATS",
    "SUFFIXES",
    "TOLERANCE",
    "EXPORT_BATCH",
    "VERIFY_BATCHES",
    "Verification",
    "check_format",
    "export_and_verify",
    "export_model",
    "load_exported_file",
    "require_onnx",
]

TORCHSCRIPT_NOTICE = (
    f"notice: TorchScript is deprecated in this PyTorch ({torch.__version__}); "
    f"format=exported_program (torch.export) is its successor."
)


@dataclass
class ExportResult:
    path: Path  # the model file
    info_path: Path  # the json beside it
    info: dict[str, Any]  # what the json holds
    verification: Verification
    seconds: float
    replaced: bool = False  # it replaced an earlier export
    notices: list[str] = field(default_factory=list)


def check_export_output(path: Path, format: str) -> bool:
    """Where the export goes may be a new file or an earlier export (a file with its cnntrain-export json beside
    it), never anything else, since writing it would destroy it. True when it replaces an earlier export."""
    suffix = SUFFIXES[format]
    if path.is_dir():
        raise CnnTrainError(
            f"output={path} is a folder; give a file name, e.g. output={path / EXPORT_FILE_NAMES[format]}."
        )
    if path.suffix != suffix:
        raise CnnTrainError(
            f"output={path}: a format={format} file must end in {suffix}, e.g. "
            f"output={path.with_name(path.stem + suffix)}."
        )
    if not path.parent.is_dir():
        raise CnnTrainError(f"output={path}: the folder {path.parent} does not exist.")
    info_path = export_info_path(path)
    for written in (path, info_path):
        refuse_links_out_of_run(written, f"Replace the link, or write the export elsewhere with output=<file>{suffix}.")
    ours = False
    if info_path.exists():
        try:
            ours = read_export_info(path)["format"] == format
        except CnnTrainError:
            ours = False
        if not ours:
            raise CnnTrainError(
                f"{info_path} exists and is not the json of a format={format} export by "
                f"cnntrain-export; it is left as it is. Give another output= file name."
            )
    if path.exists() and not ours:
        raise CnnTrainError(
            f"output={path} exists and is not a model written by cnntrain-export (there is no "
            f"{info_path.name} beside it); it is left as it is. Give another output= file name."
        )
    return path.exists()


def export_run(
    run_dir: Path | str,
    format: str,
    checkpoint: str = "best",
    output: Path | str | None = None,
    imports: list[str] | str | None = None,
    say: Callable[[str], None] = print,
) -> ExportResult:
    """`cnntrain-export`: the run's checkpoint exported to `output` (default <run folder>/export/model.<...>)
    and verified; `say` gets the progress lines and notices."""
    start = time.perf_counter()
    format = check_format(format)
    folder = RunFolder(run_dir)
    find_checkpoint(folder, checkpoint, RunArgument(key="run=", use=f"cnntrain-export run={{}} format={format}"))
    path = Path(output) if output else folder.export_file(format)
    elsewhere = (
        f"Write the export to a folder you can write to with output=<folder>/{EXPORT_FILE_NAMES[format]}."
        if not output
        else "Give output= a file in a folder you can write to."
    )
    if not output:
        folder.refuse_links_out(
            [folder.export, path, export_info_path(path)],
            f"Replace the link with a folder, or write the export elsewhere with output=<file>{SUFFIXES[format]}.",
        )
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as err:  # a read-only run folder (a shared or mounted one)
            raise CnnTrainError(cannot_write_message(path.parent, err, elsewhere)) from None
    replaced = check_export_output(path, format)
    check_writable(path.parent, elsewhere)  # before the model is loaded and traced
    if format == "onnx":
        require_onnx()
    loaded = load_run(folder.path, checkpoint, imports)
    recipe = loaded.checkpoint.model_recipe
    name = " ".join(filter(None, [recipe["name"], recipe.get("settings", {}).get("arch")]))  # timm resnet18
    say(
        f"exporting {name} ({display_path(folder.checkpoint(checkpoint))}, epoch {loaded.checkpoint.epoch}) as {format}"
    )
    notices = []
    images, inputs, problem = run_images(loaded, max(VERIFY_BATCHES))
    if problem:
        notices.append(
            f"notice: the run's data could not be loaded ({problem}); verifying on {inputs} instead, "
            f"converted the same way."
        )
    if format == "torchscript":
        notices.append(TORCHSCRIPT_NOTICE)
    for notice in notices:
        say(notice)
    batches = [images[:n] for n in VERIFY_BATCHES]
    info_path = export_info_path(path)
    try:
        description = model_description(loaded, format, path, checkpoint)
        verification = export_and_verify(
            loaded.model, images[:EXPORT_BATCH], format, path, batches, name, inputs, description=description
        )
        info = export_info(description, verification)
        write_atomically(info_path, lambda f: f.write(info_text(info)), binary=False)
    except OSError as err:  # the disk filled up while the file was written
        raise CnnTrainError(
            cannot_write_message(
                Path(err.filename or path).parent, err, "Free some space, or " + elsewhere[0].lower() + elsewhere[1:]
            )
        ) from None
    return ExportResult(path, info_path, info, verification, time.perf_counter() - start, replaced, notices)
