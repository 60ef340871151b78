"""`cnntrain-export`: a run's model as an ONNX, TorchScript or torch.export file, checked against PyTorch.

    cnntrain-export run=<run folder> format=onnx|torchscript|exported_program [checkpoint=best|last]
                    [output=<file>] [imports=[my_models]]

The file takes what the model takes: the already converted, normalised float batch
(N, C, size, size), with N free (a dynamic batch dimension), and returns logits
(N, classes). Beside it goes `<file>.json` (model.onnx -> model.onnx.json; see
run_folder.export_info_path): the classes, the preprocessing (stored_size, size, mean,
std) that turns images into that batch, the input shape, the format, the cnntrain
version, the run folder and checkpoint it came from, and the verification figures.

Every export is verified before it is put in place: the file is written under a
temporary name, loaded back the way a user would load it (onnxruntime,
torch.jit.load, torch.export.load), run on a batch of the run's own validation images
converted exactly as prediction converts them (predict.Predictor.to_array and
transform; random images, with a notice, when the run's data cannot be loaded), at
batch sizes other than the one it was exported with, and compared with the PyTorch
model. Above the tolerance the export fails and nothing is written.

`export_and_verify(model, example, format, path, batches)` is the same check for any
model, without a run (the zoo test uses it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnntrain import __version__
from cnntrain.build import build_data
from cnntrain.checks import check_config
from cnntrain.errors import CnnTrainError
from cnntrain.predict import CHECKPOINTS, LoadedRun, load_run, onnx_model, read_export_info
from cnntrain.registry import did_you_mean
from cnntrain.run_folder import (EXPORT_FILE_NAMES, RunFolder, cannot_write_message, check_writable, display_path,
                                 export_info_path, not_a_run_message, refuse_links_out_of_run, write_atomically,
                                 write_failure)

FORMATS = tuple(EXPORT_FILE_NAMES)  # onnx, torchscript, exported_program
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}

# Largest accepted |exported - PyTorch| over the logits, times max(1, largest |logit|). float32 carries about
# 7 significant digits (eps 1.2e-7); an exported graph computes the same sums in another order (onnxruntime's
# kernels, BatchNorm folded into the convolution), which moves logits by a few eps per unit of logit: 1e-8 to 3e-6
# for the zoo's models in ONNX (0 in the two torch formats). 1e-4 leaves well over an order of magnitude above that,
# while the mistakes the check is for (a missing weight, dropout or BatchNorm left in training mode, a batch size
# baked in) move them by 1e-2 or more. Logits far above 1 carry proportionally larger rounding, hence the scaling.
TOLERANCE = 1e-4
# The example batch the exporters trace with. Not 1: torch.export specialises a dimension of size 1 to a constant
# ("You marked batch as dynamic but your code specialized it to be a constant (1)"), so the batch could not vary.
EXPORT_BATCH = 2
# The batch sizes the written file is checked at: neither is the example's, so a batch size baked into the file
# fails the check; 1 is what predicting a single image runs.
VERIFY_BATCHES = (1, 8)
INPUT_NAME, OUTPUT_NAME = "images", "logits"

ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # torch.onnx.export (dynamo) needs onnxscript and onnx
ONNX_INSTALL = "pip install 'cnntrain[onnx]' (or: pip install onnx onnxruntime onnxscript)"
TORCHSCRIPT_NOTICE = (f"notice: TorchScript is deprecated in this PyTorch ({torch.__version__}); "
                      f"format=exported_program (torch.export) is its successor.")


@dataclass
class Verification:
    """How the written file compared with the PyTorch model."""

    max_abs_diff: float
    tolerance: float  # the bound max_abs_diff was held to: TOLERANCE * max(1, largest |logit|)
    batch_sizes: list[int]
    export_batch_size: int
    inputs: str  # what the batches were: "8 validation images of <data>" or "8 random images"
    runtime: str  # what loaded the file back

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        sizes = " and ".join(str(n) for n in self.batch_sizes)
        return (f"verified with {self.runtime} on {self.inputs}, batch sizes {sizes} (exported with "
                f"{self.export_batch_size}): max abs difference {self.max_abs_diff:.2e} (tolerance "
                f"{self.tolerance:.1e})")


@dataclass
class ExportResult:
    path: Path  # the model file
    info_path: Path  # the json beside it
    info: dict[str, Any]  # what the json holds
    verification: Verification
    seconds: float
    replaced: bool = False  # it replaced an earlier export
    notices: list[str] = field(default_factory=list)


def check_format(format: str) -> str:
    """The format named, in any case (format=ONNX is onnx)."""
    format = format.lower() if format.lower() in FORMATS else format
    if format not in FORMATS:
        raise CnnTrainError(f"Unknown export format '{format}' (format={format}).{did_you_mean(format, FORMATS)} "
                            f"Choose one of: {', '.join(FORMATS)}.")
    return format


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require_onnx() -> None:
    """format=onnx needs onnx and onnxscript (torch.onnx.export) and onnxruntime (the check)."""
    missing = [name for name in ONNX_PACKAGES if not _installed(name)]
    if missing:
        raise CnnTrainError(f"format=onnx needs {', '.join(ONNX_PACKAGES)}; not installed: {', '.join(missing)}. "
                            f"Install them with: {ONNX_INSTALL}. Or export with format=exported_program, which "
                            f"needs nothing besides torch.")


def check_export_output(path: Path, format: str) -> bool:
    """Where the export goes may be a new file or an earlier export (a file with its cnntrain-export json beside
    it), never anything else, since writing it would destroy it. True when it replaces an earlier export."""
    suffix = SUFFIXES[format]
    if path.is_dir():
        raise CnnTrainError(f"output={path} is a folder; give a file name, e.g. "
                            f"output={path / EXPORT_FILE_NAMES[format]}.")
    if path.suffix != suffix:
        raise CnnTrainError(f"output={path}: a format={format} file must end in {suffix}, e.g. "
                            f"output={path.with_name(path.stem + suffix)}.")
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
            raise CnnTrainError(f"{info_path} exists and is not the json of a format={format} export by "
                                f"cnntrain-export; it is left as it is. Give another output= file name.")
    if path.exists() and not ours:
        raise CnnTrainError(f"output={path} exists and is not a model written by cnntrain-export (there is no "
                            f"{info_path.name} beside it); it is left as it is. Give another output= file name.")
    return path.exists()


# ---------------------------------------------------------------- exporting any model


def export_model(model: torch.nn.Module, example: torch.Tensor, format: str, path: Path | str,
                 name: str = "the model") -> None:
    """Write `model` (put in eval mode) to `path` in `format`, traced on `example` (N >= 2, C, H, W) with the batch
    dimension left free. A model the exporter refuses is a CnnTrainError naming it and the exporter's error."""
    format = check_format(format)
    path = Path(path)
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter(format != "torchscript"):
            if format == "onnx":
                torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False,
                                  verbose=False)
            elif format == "exported_program":
                program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
                _save_through_memory(lambda buffer: torch.export.save(program, buffer), path)
            else:
                with _quiet_torchscript():
                    traced = torch.jit.trace(model, example, check_trace=False)
                    _save_through_memory(lambda buffer: torch.jit.save(traced, buffer), path)
    except Exception as err:  # each exporter has its own error kinds
        failure = write_failure(err, path)
        if failure is not None:  # not the model's fault: the file could not be written (a full disk)
            raise failure from err
        others = " or ".join(f"format={other}" for other in FORMATS if other != format)
        raise CnnTrainError(f"Cannot export {name} as {format}: {_error_text(err)}. Try another format "
                            f"({others}).") from None


def _save_through_memory(save: Callable[[io.BytesIO], None], path: Path) -> None:
    """`save` into memory, then the bytes to `path`. torch's zip writer, given a file name, cannot fail cleanly:
    on a full disk its destructor throws again and the process aborts ("terminate called after throwing an
    instance of 'c10::Error'"), where a write from Python raises an OSError that can be answered."""
    buffer = io.BytesIO()
    save(buffer)
    Path(path).write_bytes(buffer.getbuffer())


def load_exported_file(path: Path | str, format: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The file at `path` loaded back the way its users load it, as a function: float batch -> logits."""
    if format == "onnx":
        return onnx_model(path)
    if format == "exported_program":
        return torch.export.load(str(path)).module()
    with _quiet_torchscript():
        return torch.jit.load(str(path), map_location="cpu")


def runtime_name(format: str) -> str:
    if format == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    return f"torch.{'export' if format == 'exported_program' else 'jit'}.load (torch {torch.__version__})"


def max_abs_difference(model: torch.nn.Module, loaded: Callable, batches: list[torch.Tensor]) -> tuple[float, float]:
    """The largest |loaded - model| over the logits of `batches`, and the largest |logit| of the model."""
    diff, scale = 0.0, 0.0
    with torch.inference_mode():
        for batch in batches:
            expected = model(batch).float()
            got = torch.as_tensor(loaded(batch)).float()
            if got.shape != expected.shape:
                raise CnnTrainError(f"The exported file returned shape {tuple(got.shape)} for a batch of "
                                    f"{tuple(batch.shape)}, where PyTorch returns {tuple(expected.shape)}.")
            diff = max(diff, (got - expected).abs().max().item())
            scale = max(scale, expected.abs().max().item())
    return diff, scale


def export_and_verify(model: torch.nn.Module, example: torch.Tensor, format: str, path: Path | str,
                      batches: list[torch.Tensor], name: str = "the model", inputs: str = "random images",
                      tolerance: float = TOLERANCE) -> Verification:
    """`export_model` to a temporary file beside `path`, loaded back and compared with `model` on `batches`; put
    in place at `path` only when the largest difference is within `tolerance` (times the largest logit when that
    is above 1), else a CnnTrainError and nothing written."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_model(model, example, format, tmp, name)
        diff, scale = max_abs_difference(model.eval(), load_exported_file(tmp, format), batches)
        verification = Verification(max_abs_diff=diff, tolerance=tolerance * max(1.0, scale),
                                    batch_sizes=[len(b) for b in batches], export_batch_size=len(example),
                                    inputs=inputs, runtime=runtime_name(format))
        if not verification.passed:
            raise CnnTrainError(f"The {format} export of {name} does not match PyTorch: "
                                f"{verification.summary()}. Nothing was written. Try another format "
                                f"({' or '.join(f'format={f}' for f in FORMATS if f != format)}).")
        mask = os.umask(0)  # mkstemp made it 0600: give it the mode a plain open() would (as write_atomically)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return verification


# ---------------------------------------------------------------- exporting a run


def export_run(run_dir: Path | str, format: str, checkpoint: str = "best", output: Path | str | None = None,
               imports: list[str] | str | None = None, say: Callable[[str], None] = print) -> ExportResult:
    """`cnntrain-export`: the run's checkpoint exported to `output` (default <run folder>/export/model.<...>)
    and verified; `say` gets the progress lines and notices."""
    start = time.perf_counter()
    format = check_format(format)
    folder = RunFolder(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise CnnTrainError(f"checkpoint must be best or last, got '{checkpoint}'.")
    if not folder.path.is_dir():
        raise CnnTrainError(f"run={run_dir} is not a folder. Give a run folder (outputs/<date>/<time>_<model>_<data>).")
    if not folder.checkpoint(checkpoint).is_file():
        raise CnnTrainError(_no_checkpoint(folder, checkpoint, format))
    path = Path(output) if output else folder.export_file(format)
    elsewhere = (f"Write the export to a folder you can write to with output=<folder>/{EXPORT_FILE_NAMES[format]}." if
                 not output else "Give output= a file in a folder you can write to.")
    if not output:
        folder.refuse_links_out([folder.export, path, export_info_path(path)],
                                f"Replace the link with a folder, or write the export elsewhere with output=<file>"
                                f"{SUFFIXES[format]}.")
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as err:  # a read-only run folder (a shared or mounted one)
            raise CnnTrainError(cannot_write_message(path.parent, err, elsewhere)) from None
    replaced = check_export_output(path, format)
    check_writable(path.parent, elsewhere)  # before the model is loaded and traced
    if format == "onnx":
        require_onnx()
    loaded = load_run(folder.path, checkpoint, imports)
    name = loaded.checkpoint.model_recipe["name"]
    say(f"exporting {name} ({display_path(folder.checkpoint(checkpoint))}, epoch {loaded.checkpoint.epoch}) "
        f"as {format}")
    notices = []
    images, inputs, problem = run_images(loaded, max(VERIFY_BATCHES))
    if problem:
        notices.append(f"notice: the run's data could not be loaded ({problem}); verifying on {inputs} instead, "
                       f"converted the same way.")
    if format == "torchscript":
        notices.append(TORCHSCRIPT_NOTICE)
    for notice in notices:
        say(notice)
    batches = [images[:n] for n in VERIFY_BATCHES]
    info_path = export_info_path(path)
    try:
        verification = export_and_verify(loaded.model, images[:EXPORT_BATCH], format, path, batches, name, inputs)
        info = export_info(loaded, format, path, checkpoint, verification)
        write_atomically(info_path, lambda f: f.write(_json(info)), binary=False)
    except OSError as err:  # the disk filled up while the file was written
        raise CnnTrainError(cannot_write_message(Path(err.filename or path).parent, err, "Free some space, or "
                                                 + elsewhere[0].lower() + elsewhere[1:])) from None
    return ExportResult(path, info_path, info, verification, time.perf_counter() - start, replaced, notices)


def _no_checkpoint(folder: RunFolder, checkpoint: str, format: str) -> str:
    if not folder.holds_run():
        return not_a_run_message(folder.path, f"cnntrain-export run={{}} format={format}")
    other = "last" if checkpoint == "best" else "best"
    hint = (f" It has checkpoints/{other}.pt: export that with checkpoint={other}."
            if folder.checkpoint(other).is_file() else " The run has no checkpoint yet (none was saved).")
    return f"{folder.path} has no checkpoints/{checkpoint}.pt.{hint}"


def run_images(loaded: LoadedRun, count: int) -> tuple[torch.Tensor, str, str | None]:
    """`count` images as the model takes them, converted by the prediction path (to_array, transform): the first
    of the run's validation split (repeated to `count` if it has fewer), or random images when the run's data
    cannot be loaded. Returns the batch, what it is, and why the data could not be loaded (None when it was)."""
    height, width = loaded.preprocess["stored_size"]
    try:
        split, what = _validation_split(loaded)
        n = min(count, len(split))
        files = getattr(split, "files", None)  # an image folder streamed from disk: its files, as predict reads them
        items = files[:n] if files is not None else list(split.images[:n])
        arrays = torch.stack([loaded.to_array(item) for item in items])
        problem = None
        inputs = f"{n} {what}" + (f" (repeated to {count})" if n < count else "")
    except (CnnTrainError, OmegaConfBaseException, OSError) as err:
        generator = torch.Generator().manual_seed(0)
        raw = torch.randint(0, 256, (count, loaded.in_channels, height, width), dtype=torch.uint8, generator=generator)
        arrays = torch.stack([loaded.to_array(image) for image in raw])
        problem = _error_text(err)
        inputs = f"{count} random images"
    if len(arrays) < count:
        arrays = arrays.repeat((count + len(arrays) - 1) // len(arrays), 1, 1, 1)[:count]
    return loaded.transform()(arrays), inputs, problem


def _validation_split(loaded: LoadedRun):
    """The run's validation split, loaded from the config in its checkpoint: nothing composed anew, no download,
    none of the folder's imports or callbacks (load_run has imported what the user confirmed)."""
    config = OmegaConf.to_container(OmegaConf.create(loaded.checkpoint.config), resolve=False)
    config.pop("callbacks", None)
    config["imports"] = []
    if "download" in config.get("data", {}):
        config["data"]["download"] = False
    checked = check_config(OmegaConf.create(config))
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the dataset's notes (streaming from disk, ...) were for training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = build_data(checked)
    finally:
        logging.disable(before)
    return prepared.val, f"validation images of {config['data']['name']}"


def export_info(loaded: LoadedRun, format: str, path: Path, checkpoint: str,
                verification: Verification) -> dict[str, Any]:
    """What the json beside an export holds."""
    prep = loaded.preprocess
    size = prep["size"]
    # stored_size, size, mean, std (and whatever else prediction converts with); not the training augmentations.
    preprocess = {key: _plain(value) for key, value in prep.items() if key != "augment"}
    input_spec = {"shape": ["batch", loaded.in_channels, size, size], "dtype": "float32",
                  "batch": "dynamic (any size >= 1)",
                  "is": "images as floats in [0, 1] (stored_size, then resized to size x size, or to "
                        "resize_before_crop x resize_before_crop and centre-cropped to size x size when it is set; "
                        "bilinear with antialiasing), minus mean, divided by std (per channel; not normalised "
                        "when empty)"}
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
        "classes": loaded.classes,
        "in_channels": loaded.in_channels,
        "preprocess": preprocess,
        "input": input_spec,
        "output": output_spec,
        # The run's trainer.tta: the file computes one pass; cnntrain-predict run=<this file> averages each
        # image with its mirror image when it is hflip, as the run's test did (tta=none: one pass).
        "tta": loaded.run_tta,
        "run": str(loaded.folder.path.resolve()),
        "checkpoint": checkpoint,
        "checkpoint_file": str(loaded.checkpoint.path.resolve()),
        "epoch": loaded.checkpoint.epoch,
        "verification": verification.as_dict(),
    }


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2) + "\n"


def _error_text(err: BaseException) -> str:
    """The first line of an exporter's error; when it wraps another (torch.onnx wraps torch.export's), its first
    sentence and the first line of the innermost one."""
    lines = []
    while err is not None:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # torch.onnx colours its messages
        lines.append(" ".join(text.splitlines()[0].split()).rstrip(".") if text else type(err).__name__)
        err = err.__cause__
    outer, inner = lines[0], lines[-1]
    return f"{outer.split('. ')[0]}: {inner}" if inner != outer else outer


@contextlib.contextmanager
def _quiet_exporter(torch_export: bool):
    """torch.export logs warnings and prints whole graph dumps to stderr when it fails (the error is reported
    instead, by its first line): both kept off the screen while it runs. torch.jit.trace prints nothing of the
    kind, and its TracerWarnings (a traced branch) are worth seeing."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        if torch_export:
            with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
                yield
        else:
            yield
    finally:
        logging.disable(before)


@contextlib.contextmanager
def _quiet_torchscript():
    """torch.jit.trace/save/load warn on every call that TorchScript is deprecated (FutureWarning): export_run
    says it once. Other warnings (a TracerWarning about a traced branch, say) still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(torch\.jit|TorchScript).*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*(torch\.jit|TorchScript).*")
        yield
