"""A finished run, loaded for use: `load_run(folder).predict(images)`, and `cnntrain-predict`.

New images go through the same conversion as the training data: Pillow converts them
to the run's channel count and resizes them to the size the dataset was stored at,
then the training batch transform (resize to the model's input size, normalisation
with the run's mean/std) runs, without augmentation.

A `Predictor` is what predicting needs: class names, that preprocessing, the channel
count, a model (normalised float batch -> logits) and the run's test-time augmentation
(trainer.tta, applied by default as the run's test applied it; tta=none turns it off).
`LoadedRun` takes them from a run folder's checkpoint, `ExportedModel` (`load_exported`)
from an ONNX file written by `cnntrain-export` and the json beside it (run with
onnxruntime); both convert images with the same code, so their predictions agree.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from PIL import Image
from rich.markup import escape
from rich.table import Table

from cnntrain.checkpoint import RunCheckpoint, check_model_description
from cnntrain.checks import TTA_MODES, resolve_tta
from cnntrain.user_code import confirmed_imports, import_user_modules
from cnntrain.data.folder import READ_ERRORS, image_extensions, image_to_array
from cnntrain.data.loader import BatchTransform, preprocess_transform
from cnntrain.errors import CnnTrainError
from cnntrain.run_folder import (RunFolder, cannot_write_message, check_writable, export_info_path,
                                 export_predictions_csv, not_a_run_message, refuse_links_out_of_run, write_atomically)
from cnntrain.trainer import mean_log_probabilities

CHECKPOINTS = ("best", "last")


@dataclass
class Prediction:
    file: str  # the image's path, or "<image i>" for images given as objects
    label: str
    probability: float
    top: list[tuple[str, float]]


class Predictor:
    """Images -> predictions, for any model that takes the run's normalised float batch (N, C, size, size)
    and returns logits. Subclasses give `classes`, `preprocess` (stored_size, size, mean, std), `in_channels`,
    `run_tta` (the run's trainer.tta) and `model`."""

    classes: list[str]
    preprocess: dict[str, Any]
    in_channels: int
    run_tta: str | None = None
    model: Callable[[torch.Tensor], torch.Tensor]

    def transform(self) -> BatchTransform:
        return preprocess_transform(self.preprocess)

    def to_array(self, image) -> torch.Tensor:
        """One image (a path, a Pillow image, or a (C, H, W) / (H, W) tensor: uint8, or float in [0, 1])
        as the uint8 (C, H, W) tensor the run's data was stored as."""
        height, width = self.preprocess["stored_size"]
        channels = self.in_channels
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    return torch.from_numpy(image_to_array(opened, channels, height, width))
            except READ_ERRORS as err:
                raise CnnTrainError(f"Cannot read image {image}: {err}") from err
        if isinstance(image, torch.Tensor):
            from torchvision.transforms.functional import to_pil_image

            image = to_pil_image(checked_tensor(image))
        if isinstance(image, Image.Image):
            return torch.from_numpy(image_to_array(image, channels, height, width))
        raise CnnTrainError(f"Cannot predict on a {type(image).__name__}: give image paths, Pillow images "
                            f"or image tensors.")

    def predict(self, images, topk: int = 3, batch_size: int = 64, tta: str = "run") -> list[Prediction]:
        """The top-`topk` classes of each image: a path (file or folder of images), a Pillow image, a tensor
        ((C, H, W), or (N, C, H, W) for several), or a list of these. `tta`: "run" (the run's trainer.tta,
        as its test measured), "none" or "hflip" (the mean of each image's and its mirror's probabilities)."""
        used_tta = resolve_tta(tta, self.run_tta)
        if not is_count(topk) or not is_count(batch_size):
            raise CnnTrainError(f"topk and batch_size must be whole numbers >= 1, got topk={topk!r}, "
                                f"batch_size={batch_size!r}.")
        items = list(_image_items(images))
        if not items:
            raise CnnTrainError("No images to predict on: the list or batch given is empty.")
        transform = self.transform()
        predictions = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch = transform(torch.stack([self.to_array(image) for _, image in chunk]))
            with torch.inference_mode():
                logits = self.model(batch)
                if used_tta == "hflip":
                    logits = mean_log_probabilities(logits, self.model(batch.flip(-1)))
                probabilities = logits.softmax(dim=1)
            values, indices = probabilities.topk(min(topk, len(self.classes)), dim=1)
            for (name, _), top_p, top_i in zip(chunk, values.tolist(), indices.tolist()):
                top = [(self.classes[i], p) for i, p in zip(top_i, top_p)]
                predictions.append(Prediction(name, top[0][0], top[0][1], top))
        return predictions


# What a tensor image may hold: uint8 (0..255) or floats in [0, 1], as torchvision's conventions say.
TENSOR_IMAGES = "a (C, H, W) or (H, W) tensor of uint8 (0..255) or of floats in [0, 1], C = 1 (grey), 3 (RGB) or 4 (RGBA)"


def checked_tensor(image: torch.Tensor) -> torch.Tensor:
    """A tensor image as to_pil_image takes it (on the CPU), or a CnnTrainError saying what was expected: other
    dtypes, ranges and shapes gave a traceback or a silently wrong answer (0..255 in a float tensor is
    white everywhere once clipped)."""
    image = image.detach().cpu()
    shape = tuple(image.shape)
    if image.dim() not in (2, 3) or image.numel() == 0:
        raise CnnTrainError(f"Cannot predict on a tensor of shape {shape}: give {TENSOR_IMAGES} (or a batch of them, "
                            f"(N, C, H, W)).")
    if image.dim() == 3 and image.shape[0] not in (1, 3, 4):
        hint = (" It looks like (H, W, C): pass image.permute(2, 0, 1)." if image.shape[-1] in (1, 3, 4) else "")
        raise CnnTrainError(f"Cannot predict on a tensor of shape {shape}: {image.shape[0]} channels. Give "
                            f"{TENSOR_IMAGES}.{hint}")
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise CnnTrainError(f"Cannot predict on a {image.dtype} tensor: give {TENSOR_IMAGES}. Convert 0..255 "
                            f"values with image.to(torch.uint8).")
    if not torch.isfinite(image).all():
        raise CnnTrainError(f"Cannot predict on a tensor holding nan or inf: give {TENSOR_IMAGES}.")
    low, high = image.min().item(), image.max().item()
    if low < 0 or high > 1:
        raise CnnTrainError(f"Cannot predict on a float tensor with values from {low:g} to {high:g}: float images "
                            f"must be in [0, 1]. For 0..255 values pass a uint8 tensor (image.to(torch.uint8)) or "
                            f"divide by 255; a normalised tensor (minus mean, divided by std) goes straight to "
                            f"the model instead.")
    return image.float()


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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
        raise CnnTrainError(f"Running {path} needs onnxruntime, which is not installed. Install it with: "
                            f"{ONNX_RUNTIME_INSTALL}.")
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error kinds (InvalidProtobuf, Fail, ...)
        raise CnnTrainError(f"onnxruntime cannot load {path}: {_first_line(err)}. Export it again with "
                            f"cnntrain-export.") from None
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
        raise CnnTrainError(f"{info_path} is missing: the class names and preprocessing of {model_file} are in "
                            f"the json cnntrain-export writes beside it. Keep the two files together, or export "
                            f"again with: cnntrain-export run=<run folder> format=onnx.")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise CnnTrainError(f"{info_path} is damaged ({err}). Export again with cnntrain-export.") from None
    needed = ("classes", "preprocess", "in_channels", "format")
    if not isinstance(info, dict) or info.get("exported_by") != "cnntrain-export" or any(k not in info for k in needed):
        raise CnnTrainError(f"{info_path} is not a json written by cnntrain-export (it needs {', '.join(needed)}). "
                            f"Export again with cnntrain-export.")
    check_model_description(info["classes"], info["in_channels"], info["preprocess"], str(info_path),
                            EXPORT_AGAIN)
    if info.get("tta") not in (None, *TTA_MODES):
        raise CnnTrainError(f"{info_path} has tta={info['tta']!r}; it needs null or one of {', '.join(TTA_MODES)}. "
                            f"{EXPORT_AGAIN}")
    return info


EXPORT_AGAIN = "It does not describe the model it was written with: export again with cnntrain-export."


def check_against_model(predictor: "Predictor", where: str, fix: str) -> None:
    """The model takes what `where` (a checkpoint, an export's json) says it takes, a batch of in_channels x size
    x size images, and gives one output per class it names: tried on one blank image, so that a class list of
    another length or another channel count is a message now, not every image "class0" or a traceback later."""
    size, channels, classes = predictor.preprocess["size"], predictor.in_channels, len(predictor.classes)
    try:
        with torch.inference_mode():
            outputs = predictor.model(torch.zeros(1, channels, size, size))
    except Exception as err:  # torch's and onnxruntime's own error kinds
        raise CnnTrainError(f"{where} says the model takes {channels}-channel {size}x{size} images, but the model "
                            f"refuses them: {' '.join(str(err).split())[:300] or type(err).__name__}. {fix}") from None
    if tuple(outputs.shape) != (1, classes):
        gives = (f"{outputs.shape[1]} outputs per image" if outputs.dim() == 2
                 else f"outputs of shape {tuple(outputs.shape)} for one image")
        raise CnnTrainError(f"{where} names {classes} classes, but the model gives {gives}. {fix}")


def load_exported(path: Path | str) -> ExportedModel:
    """An ONNX file written by `cnntrain-export format=onnx`, with the json beside it, ready to predict."""
    path = Path(path)
    if not path.is_file():
        raise CnnTrainError(f"{path} does not exist (run=). Give a run folder, or an .onnx file written by "
                            f"cnntrain-export.")
    info = read_export_info(path)
    if info["format"] != "onnx":
        raise CnnTrainError(f"{export_info_path(path)} describes a {info['format']} export, not the ONNX file "
                            f"{path.name}. Export again with cnntrain-export format=onnx.")
    exported = ExportedModel(path, info, onnx_model(path))
    check_against_model(exported, str(export_info_path(path)), EXPORT_AGAIN)
    return exported


def load_predictor(run: Path | str, checkpoint: str = "best", imports: list[str] | str | None = None) -> Predictor:
    """A run folder (`load_run`) or an exported .onnx file (`load_exported`; checkpoint and imports do not apply:
    the file holds the weights of the checkpoint it was exported from, and no Python code)."""
    return load_exported(run) if is_exported_file(run) else load_run(run, checkpoint, imports)


def predictions_path(run: Path | str, inputs: Path | str = "images") -> Path:
    """Where cnntrain-predict writes without output=: predictions-<input name>.csv in the run folder, or
    <file stem>.predictions-<input name>.csv beside an exported .onnx file; with -2, -3, ... added when
    that file exists, so that earlier predictions are kept."""
    run = Path(run)
    if is_exported_file(run):
        if not run.is_file():
            raise CnnTrainError(f"run={run} does not exist. Give a run folder, or an .onnx file written by "
                                f"cnntrain-export.")
        base = export_predictions_csv(run)
    elif run.is_file():
        raise CnnTrainError(f"run={run} is a file. Give a run folder (outputs/<date>/<time>_<model>_<data>) or "
                            f"an .onnx file written by cnntrain-export.")
    elif not run.is_dir():
        raise CnnTrainError(f"run={run} is not a folder. Give a run folder (outputs/<date>/<time>_<model>_<data>) "
                            f"or an .onnx file written by cnntrain-export.")
    elif not RunFolder(run).holds_run():
        raise CnnTrainError(not_a_run_message(run, f"cnntrain-predict run={{}} inputs={inputs}"))
    else:
        base = RunFolder(run).predictions_csv
    named = base.with_name(f"{base.stem}-{_file_name_part(inputs)}{base.suffix}")
    return _unused(named)


def _file_name_part(inputs: Path | str) -> str:
    """The inputs' name as part of a file name: a folder's name, an image's name without its extension."""
    inputs = Path(inputs)
    name = (inputs.stem if inputs.is_file() else inputs.resolve().name) or "images"
    return re.sub(r"[^\w.-]+", "_", name)


def _unused(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... (before the extension) that does not exist."""
    number = 2
    candidate = path
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def load_run(run_dir: Path | str, checkpoint: str = "best", imports: list[str] | str | None = None) -> LoadedRun:
    """The run in `run_dir` with the weights of checkpoints/<checkpoint>.pt (best or last).

    `imports`: for a run of your own model, the modules the run was trained with (they
    register the model). Modules named only in the run folder are never imported.
    """
    folder = RunFolder(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise CnnTrainError(f"checkpoint must be best or last, got '{checkpoint}'.")
    if not folder.path.is_dir():
        raise CnnTrainError(f"{run_dir} is not a folder. Give a run folder (outputs/<date>/<time>_<model>_<data>).")
    if not folder.holds_run():
        raise CnnTrainError(not_a_run_message(folder.path, "load_run('{}')"))
    state = RunCheckpoint.read(folder.checkpoint(checkpoint))
    import_user_modules(confirmed_imports(state.config.get("imports"), imports, folder.path))
    loaded = LoadedRun(folder, state, state.build_model().eval())
    check_against_model(loaded, f"Checkpoint {state.path}", "It was changed after the run wrote it: copy the run "
                                                            "folder again from where it came from.")
    return loaded


def _image_items(images) -> Iterable[tuple[str, Any]]:
    """(name, image) pairs: a folder gives its image files, a batch tensor its images."""
    if isinstance(images, torch.Tensor) and images.dim() > 4:
        raise CnnTrainError(f"Cannot predict on a tensor of shape {tuple(images.shape)}: give {TENSOR_IMAGES}, or "
                            f"a batch of them (N, C, H, W).")
    if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, torch.Tensor) and images.dim() <= 3):
        images = [images]
    elif not isinstance(images, Iterable):
        images = [images]  # to_array names what it is and what it takes
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            for path in find_images(Path(image)):
                yield str(path), path
        elif isinstance(image, torch.Tensor) and image.dim() == 4:
            yield from ((f"<image {i}.{j}>", single) for j, single in enumerate(image))
        else:
            yield f"<image {i}>", image


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


def predict(run_dir: Path, inputs: Path, topk: int = 3, checkpoint: str = "best", batch_size: int = 64,
            imports: str | None = None, tta: str = "run") -> list[Prediction]:
    """The predictions of a run (or of an exported .onnx file) for an image file or a folder of images."""
    return load_predictor(run_dir, checkpoint, imports).predict(Path(inputs), topk=topk, batch_size=batch_size,
                                                                 tta=tta)


PREDICTIONS_HEADER = ["file", "predicted", "probability", "top_k"]


def check_output(path: Path) -> None:
    """output= may be a new file or a predictions CSV written before; never anything else (a checkpoint, a
    folder, someone's data), since writing it would destroy it."""
    if path.is_dir():
        raise CnnTrainError(f"output={path} is a folder; give a CSV file name, e.g. output={path / 'predictions.csv'}.")
    refuse_links_out_of_run(path, "Replace the link, or write the predictions elsewhere with output=<csv file>.")
    if not path.exists():
        if not path.parent.is_dir():
            raise CnnTrainError(f"output={path}: the folder {path.parent} does not exist.")
        check_writable(path.parent, WRITE_ELSEWHERE)
        return
    try:
        with open(path, newline="", encoding="utf-8") as f:
            first_row = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error, OSError):
        first_row = None
    if first_row != PREDICTIONS_HEADER:
        raise CnnTrainError(f"output={path} exists and is not a predictions CSV written by cnntrain-predict; "
                            f"it is left as it is. Give another file name.")
    check_writable(path.parent, WRITE_ELSEWHERE)  # it is replaced by a new file beside it


WRITE_ELSEWHERE = "Write the predictions to a folder you can write to with output=<folder>/predictions.csv."


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    """The predictions CSV, written whole or not at all (write_atomically); a file system that is read-only or
    full is a CnnTrainError saying where and offering output=."""
    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(PREDICTIONS_HEADER)
        for p in predictions:
            writer.writerow([p.file, p.label, f"{p.probability:.6f}",
                             "; ".join(f"{name}:{prob:.4f}" for name, prob in p.top)])

    try:
        write_atomically(path, write, binary=False)
    except OSError as err:
        raise CnnTrainError(cannot_write_message(Path(path).parent, err, WRITE_ELSEWHERE)) from None


# Rows cnntrain-predict prints as a table when the console's height is unknown (a pipe, a file); past it
# (or past the terminal's height) it prints a summary: the CSV holds every row.
SCREENFUL = 40


def shown_path(file: str, inputs: Path | str) -> str:
    """An image's path as the table shows it: relative to the input folder (a single image: its name)."""
    inputs = Path(inputs)
    if inputs.is_file():
        return Path(file).name
    try:
        return str(Path(file).relative_to(inputs))
    except ValueError:
        return file


def predictions_table(predictions: list[Prediction], inputs: Path | str = ".", width: int = 80) -> Table:
    """One row per image, fitted to `width` columns. Paths and class names never break mid-name while the
    top-k column can give way: it wraps between its entries, and is left out (the CSV has it) when the
    paths need its room; only a path longer than the whole room is folded."""
    files = [shown_path(p.file, inputs) for p in predictions]
    tops = [", ".join(f"{n} {q:.2f}" for n, q in p.top) for p in predictions]
    label = min(max([len("predicted"), *(len(p.label) for p in predictions)]), 30)
    longest = max([len("file"), *map(len, files)])
    room = width - 13 - label - len("probability")  # 13: the borders and each column's padding (4 columns)
    with_top_k = longest <= room - 16
    if not with_top_k:
        room += 3  # one column less
    file = min(longest, max(room - (16 if with_top_k else 0), 12))
    table = Table(title=f"predictions ({len(predictions)} images)", header_style="bold")
    table.add_column("file", overflow="fold", min_width=file, max_width=file)
    table.add_column("predicted", no_wrap=True, overflow="fold", min_width=label, max_width=label)
    table.add_column("probability", justify="right", no_wrap=True)
    if with_top_k:
        table.add_column("top k", overflow="fold", min_width=room - file, max_width=room - file)
    for p, file, top in zip(predictions, files, tops):
        table.add_row(escape(file), escape(p.label), f"{p.probability:.3f}", *([escape(top)] if with_top_k else []))
    return table


def predictions_summary(predictions: list[Prediction], inputs: Path | str = ".", least: int = 5) -> list[Table]:
    """For more images than a screen holds: images per predicted class, and the `least` confident."""
    counts: dict[str, int] = {}
    for p in predictions:
        counts[p.label] = counts.get(p.label, 0) + 1
    total = len(predictions)
    per_class = Table(title=f"{total:,} images per predicted class", header_style="bold")
    per_class.add_column("predicted", overflow="fold")
    per_class.add_column("images", justify="right", no_wrap=True)
    per_class.add_column("share", justify="right", no_wrap=True)
    for label, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        per_class.add_row(escape(label), f"{count:,}", f"{count / total:.1%}")
    unsure = sorted(predictions, key=lambda p: (p.probability, p.file))[:least]
    low = predictions_table(unsure, inputs)
    low.title = f"the {len(unsure)} least confident"
    return [per_class, low]
