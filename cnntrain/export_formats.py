"""Exporting any model to ONNX, TorchScript or torch.export, and checking the file against PyTorch.

`export_and_verify(model, example, format, path, batches)`: the file is written under a
temporary name (onnx / torchscript / exported_program, the batch dimension left free),
loaded back the way a user would load it (onnxruntime through exported_model.py,
`torch.jit.load`, `torch.export.load`), run at batch sizes other than the one it was
exported with, compared with the PyTorch model against a bound (`TOLERANCE`), and only
then put in place. The zoo test calls it without a run; export.py calls it for one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cnntrain.errors import CnnTrainError
from cnntrain.exported_model import EXTRA_FILE, onnx_metadata, onnx_model
from cnntrain.onnx_export import INPUT_NAME, OUTPUT_NAME, add_onnx_metadata, free_batch, onnx_export_options
from cnntrain.registry import did_you_mean
from cnntrain.run_folder import EXPORT_FILE_NAMES, write_failure

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
        return (
            f"verified with {self.runtime} on {self.inputs}, batch sizes {sizes} (exported with "
            f"{self.export_batch_size}): max abs difference {self.max_abs_diff:.2e} (tolerance "
            f"{self.tolerance:.1e})"
        )


def check_format(format: str) -> str:
    """The format named, in any case (format=ONNX is onnx)."""
    format = format.lower() if format.lower() in FORMATS else format
    if format not in FORMATS:
        raise CnnTrainError(
            f"Unknown export format '{format}' (format={format}).{did_you_mean(format, FORMATS)} "
            f"Choose one of: {', '.join(FORMATS)}."
        )
    return format


def export_model(
    model: torch.nn.Module,
    example: torch.Tensor,
    format: str,
    path: Path | str,
    name: str = "the model",
    description: dict[str, Any] | None = None,
) -> None:
    """Write `model` (put in eval mode) to `path` in `format`, traced on `example` (N >= 2, C, H, W) with the batch
    dimension left free, carrying `description` (export_json.model_description: in an ONNX file's metadata_props,
    `onnx_metadata`; in the torch formats' extra file). A model the exporter refuses is a CnnTrainError naming it
    and the exporter's error."""
    format = check_format(format)
    path = Path(path)
    model.eval()
    try:
        with _quiet_exporter(format != "torchscript"):
            if format == "onnx":
                options = onnx_export_options()
                torch.onnx.export(
                    model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], **options
                )
                if description:
                    add_onnx_metadata(path, onnx_metadata(description))
            elif format == "exported_program":
                program = torch.export.export(model, (example,), dynamic_shapes=free_batch())
                extra = _extra_files(description)
                _save_through_memory(lambda buffer: torch.export.save(program, buffer, extra_files=extra), path)
            else:
                with _quiet_torchscript():
                    traced = torch.jit.trace(model, example, check_trace=False)
                    extra = _extra_files(description)
                    _save_through_memory(lambda buffer: torch.jit.save(traced, buffer, _extra_files=extra), path)
    except Exception as err:  # each exporter has its own error kinds
        failure = write_failure(err, path)
        if failure is not None:  # not the model's fault: the file could not be written (a full disk)
            raise failure from err
        others = " or ".join(f"format={other}" for other in FORMATS if other != format)
        raise CnnTrainError(
            f"Cannot export {name} as {format}: {error_text(err)}. Try another format ({others})."
        ) from None


def _extra_files(description: dict[str, Any] | None) -> dict[str, str]:
    """The description as the one json file a TorchScript or torch.export archive carries beside the model."""
    return {EXTRA_FILE: json.dumps(description)} if description else {}


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
                raise CnnTrainError(
                    f"The exported file returned shape {tuple(got.shape)} for a batch of "
                    f"{tuple(batch.shape)}, where PyTorch returns {tuple(expected.shape)}."
                )
            diff = max(diff, (got - expected).abs().max().item())
            scale = max(scale, expected.abs().max().item())
    return diff, scale


def export_and_verify(
    model: torch.nn.Module,
    example: torch.Tensor,
    format: str,
    path: Path | str,
    batches: list[torch.Tensor],
    name: str = "the model",
    inputs: str = "random images",
    tolerance: float = TOLERANCE,
    description: dict[str, Any] | None = None,
) -> Verification:
    """`export_model` to a temporary file beside `path` (with `description`), loaded back and compared with `model`
    on `batches`; put in place at `path` only when the largest difference is within `tolerance` (times the largest
    logit when that is above 1), else a CnnTrainError and nothing written."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_model(model, example, format, tmp, name, description)
        diff, scale = max_abs_difference(model.eval(), load_exported_file(tmp, format), batches)
        verification = Verification(
            max_abs_diff=diff,
            tolerance=tolerance * max(1.0, scale),
            batch_sizes=[len(b) for b in batches],
            export_batch_size=len(example),
            inputs=inputs,
            runtime=runtime_name(format),
        )
        if not verification.passed:
            raise CnnTrainError(
                f"The {format} export of {name} does not match PyTorch: "
                f"{verification.summary()}. Nothing was written. Try another format "
                f"({' or '.join(f'format={f}' for f in FORMATS if f != format)})."
            )
        mask = os.umask(0)  # mkstemp made it 0600: give it the mode a plain open() would (as write_atomically)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return verification


def error_text(err: BaseException) -> str:
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
