"""The measurements behind two of cnntrain's speed defaults, per model, on this device.

1. Memory format: one training step (forward, backward, SGD step) in channels_last
   against the default contiguous layout. `trainer.channels_last=auto` follows this.
2. Resize for the 96/224-pixel models: resizing each 28-pixel batch on the device
   (what cnntrain does) against reading an already-resized copy of the dataset kept
   in memory as uint8 (a cache), next to the training step it feeds. The cache would
   cost N x size x size bytes (60k x 224 x 224 = 2.8 GiB for Fashion-MNIST at 224).

    python benchmarks/choices.py                     # every zoo model, recipe batch, 3 steps
    python benchmarks/choices.py --models lenet,nin --steps 5 --device cuda

Inputs are random (the speed of these operations does not depend on the pixel
values); models are built from the d2l presets (experiment=d2l_<model>). Writes
benchmarks/choices.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from speed import Recipe, recipe  # noqa: E402  (also puts cnntrain on the path)

from cnntrain.build import resolve_device  # noqa: E402
from cnntrain.data.loader import BatchTransform  # noqa: E402
from cnntrain.speed_switches import use_channels_last  # noqa: E402

MODELS = ("lenet", "lenet_bn", "alexnet", "vgg", "nin", "googlenet", "resnet18")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work, device: torch.device, steps: int) -> float:
    """Seconds per call of `work`, after one warm-up call."""
    work()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        work()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def step_seconds(rc: Recipe, device: torch.device, channels_last: bool, steps: int) -> float:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = rc.new_model(0).to(device, memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=rc.lr)
    images = torch.rand(rc.batch, 1, rc.size, rc.size, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (rc.batch,), device=device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return timed(train_step, device, steps)


def batch_seconds(rc: Recipe, device: torch.device, steps: int, cached: bool) -> float:
    """One training batch from 4096 stored 28-pixel images: resized per batch, or read from a resized copy."""
    stored = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8, device=device)
    transform = BatchTransform(size=(rc.size, rc.size), mean=(0.5,), std=(0.5,), channels_last=True)
    if cached:
        resize_only = BatchTransform(size=(rc.size, rc.size), mean=None, std=None)
        stored = resize_only(stored).mul_(255).round_().clamp_(0, 255).byte()
    generator = torch.Generator().manual_seed(0)

    def next_batch():
        index = torch.randint(0, len(stored), (rc.batch,), generator=generator).to(device)
        return transform(stored[index])

    return timed(next_batch, device, steps)


def measure(rc: Recipe, device: torch.device, steps: int) -> str:
    contiguous = step_seconds(rc, device, False, steps)
    channels_last = step_seconds(rc, device, True, steps)
    auto, _ = use_channels_last("auto", device, rc.new_model(0))
    row = (
        f"| {rc.model} | {rc.size} | {rc.batch} | {contiguous * 1000:,.1f} | {channels_last * 1000:,.1f} | "
        f"{contiguous / channels_last:.2f}x | {'channels_last' if auto else 'contiguous'} |"
    )
    if rc.size == 28:
        return row + " - | - | - |"
    per_batch = batch_seconds(rc, device, steps, cached=False)
    cached = batch_seconds(rc, device, steps, cached=True)
    step = min(contiguous, channels_last)
    return row + f" {per_batch * 1000:,.2f} | {cached * 1000:,.2f} | {(per_batch - cached) / step:.2%} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "choices.md"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for name in args.models.split(","):
        print(f"{name} ...", flush=True)
        rows.append(measure(recipe(name), device, args.steps))
    lines = [
        "# Layout and resize choices, measured",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, device {device} ({platform.machine()}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}; {args.steps} timed steps each. "
        "Step: forward + backward + SGD step at the recipe's batch. Batch: a resized, normalised, "
        "channels_last float batch from stored 28-pixel uint8 images, resized per batch (cnntrain) or read "
        "from a pre-resized uint8 copy; the last column is what the cache would save, as a share of a step.",
        "",
        "| model | input | batch | step ms, contiguous | step ms, channels_last | channels_last speed-up "
        "| trainer.channels_last=auto picks | batch ms, resized per batch | batch ms, from a resized cache "
        "| cache saves |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
