"""The trainer's speed switches: precision, channels_last, torch.compile, cuDNN autotuning, and the one that gives
speed up for reruns that agree to the bit (trainer.deterministic).

Each is resolved against the device the run has. Where the device cannot do what was
asked (fp16 autocast on a CPU, torch.compile with no compiler), the switch becomes a
no-op and the caller gets a one-line notice to show, never an exception.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable

import torch
from torch import nn

PRECISIONS = {"32": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}


def resolve_precision(setting, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """trainer.precision -> (autocast dtype or None for float32, notice or None).

    auto: bf16 where it is native (below), float32 elsewhere, without a notice (the presets use it:
    on a CPU with AVX-512 BF16/AMX bf16 trained airnet 1.3x faster at the same accuracy).

    bf16 autocast runs on CUDA GPUs that support it and on CPUs with native bf16
    (AVX-512 BF16/AMX, as oneDNN reports); fp16 (with loss scaling) only on CUDA.
    Elsewhere bf16 is emulated: measured 5.6-6.4x slower than float32 on an AVX2 CPU
    (LeNet and ResNet-18), so it is turned off with a notice.
    """
    key = str(setting).lower()
    dtype = PRECISIONS[key]  # a valid key: trainer_checks.check_trainer_settings refused others before any data loaded
    if dtype == "auto":  # bf16 where it is native (and measured faster at the same accuracy), else float32
        native = (
            torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_has_native_bf16()
        )
        return (torch.bfloat16 if native else None), None
    if dtype is None:
        return None, None
    if device.type == "cuda":
        if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return None, "notice: this GPU does not support bf16; training in float32 (try trainer.precision=fp16)."
        return dtype, None
    if device.type == "cpu" and dtype is torch.bfloat16:
        if cpu_has_native_bf16():
            return dtype, None
        return None, (
            "notice: this CPU has no native bf16 (it would be emulated, several times slower); training in float32."
        )
    return None, f"notice: trainer.precision={key} is not supported on {device.type}; training in float32."


def cpu_has_native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_channels_last(setting, device: torch.device, model: nn.Module) -> tuple[bool, str | None]:
    """trainer.channels_last (auto, true, false; checked by trainer_checks.check_trainer_settings) ->
    (use it, notice or None).

    channels_last speeds convolutions up on CPU (oneDNN) and CUDA; MPS gains nothing.
    `auto` turns it on there, except on a CPU for models with a BatchNorm2d whose
    channel count is not a multiple of 16 (see `slow_channels_last_batchnorms`).
    """
    if setting == "auto":
        if device.type == "cpu":
            return not slow_channels_last_batchnorms(model), None
        return device.type == "cuda", None
    if setting and device.type not in ("cpu", "cuda"):
        return False, f"notice: trainer.channels_last=true has no effect on {device.type}; left off."
    return setting, None


def slow_channels_last_batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d layers that the CPU runs several times slower in channels_last.

    Measured (torch 2.14, AVX2, batch 256, forward + backward): channels_last takes
    5-8x as long as contiguous at 3, 4, 6, 10 and 12 channels, 1.3-1.6x at 8 and 24,
    and is faster at 16, 32, 64 and 128. For BN-LeNet (BatchNorm2d of 6 and 16
    channels) that made a whole step 0.67-0.74x the contiguous speed, while LeNet,
    VGG, NiN, GoogLeNet and ResNet-18 ran 1.06-1.51x faster in channels_last and
    AlexNet 0.97x (benchmarks/choices.md).
    """
    return [layer for layer in model.modules() if isinstance(layer, nn.BatchNorm2d) and layer.num_features % 16 != 0]


def tune_backend(device: torch.device, deterministic: bool = False) -> None:
    """Backend settings that change only speed: on CUDA, cuDNN times the convolution
    algorithms for each new input shape and keeps the fastest (a run meets few
    shapes: every batch has one size but an epoch's last). `deterministic`
    (trainer.deterministic) turns that off and PyTorch's deterministic algorithms on.

    Tried and left out (2026-11-30, 2-core CPU): glibc's mallopt keeping freed memory
    (M_MMAP_THRESHOLD/M_TRIM_THRESHOLD) made a bare LeNet step loop 1.46x faster but whole
    cnntrain runs no faster (25k ex/s either way: the run's allocation pattern already
    reuses the heap); OMP_PROC_BIND/OMP_PLACES and flush-denormal changed nothing."""
    use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic


_turned_on_here = False  # whether use_deterministic_algorithms(True) is cnntrain's doing (not the user's own)


def use_deterministic_algorithms(on: bool) -> None:
    """trainer.deterministic: PyTorch's deterministic algorithms only (an operation without one raises, see
    `nondeterministic_message`), cuDNN's and oneDNN's too. cuBLAS needs CUBLAS_WORKSPACE_CONFIG for it, set before any
    CUDA work (when the user has not set it). Turned off again for a later run of this process only when a
    run of cnntrain turned it on: a user's own choice in Python stays."""
    global _turned_on_here
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif not _turned_on_here:
        return
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.mkldnn.deterministic = on  # oneDNN's CPU kernels
    _turned_on_here = on


def nondeterministic_message(err: BaseException) -> str | None:
    """With trainer.deterministic=true, torch's error for an operation that has no deterministic version, as
    a message naming the setting; None for any other error."""
    text = str(err)
    if not isinstance(err, RuntimeError) or "use_deterministic_algorithms" not in text:
        return None
    operation = (
        text.split(" does not have a deterministic implementation")[0].strip() if "does not have" in text else ""
    )
    what = f"the operation {operation}" if operation and len(operation) < 80 else "an operation this run uses"
    return (
        f"trainer.deterministic=true, but {what} has no deterministic version in PyTorch on this device, so the "
        f"run stopped. Set trainer.deterministic=false (reruns may then differ in their last bits), or use a model "
        f"or device without that operation. (PyTorch said: {text.splitlines()[0][:300]})"
    )


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/platform"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs the triton package"
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++)"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile is not supported on {device.type}"
    return None


def maybe_compile(model: nn.Module, setting: bool, device: torch.device) -> tuple[Callable, str | None]:
    """The callable that computes the logits: torch.compile(model) when asked and possible, else the model.

    The compiled module shares the model's parameters, so checkpoints keep saving the
    plain model's state_dict. A graph that fails to compile later falls back to eager
    mode for that part (dynamo's suppress_errors) instead of ending the run.
    """
    if not setting:
        return model, None
    reason = compile_unavailable_reason(device)
    if reason:
        return model, f"notice: {reason}; trainer.compile=true ignored."
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return torch.compile(model), None
