"""Size and CPU training speed of every registered model at its native input size.

For each model (built from configs/model/<name>.yaml, at the builder's native channel
count): parameters, multiply-adds per image (Conv + Linear, from the inspector), and
training throughput on the CPU: forward + backward + SGD step on random data in
channels_last layout (`--no-channels-last` for NCHW), a warm-up step or two, then timed steps. Like the book's
"examples/s", this counts step time only (no data loading, no evaluation).

    python benchmarks/models.py                 # all models, prints and writes models.md
    python benchmarks/models.py --models lenet alexnet --seconds 5

Batch size follows the input size (256 at <= 32 px, 128 at <= 96 px, 32 above, as the
tutorials use), halved for models so heavy that one step would take minutes on a CPU
(VGG-11); the table says which batch was used. Expect the run to take a few minutes.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
try:
    import cnntrain  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from cnntrain import inspector  # noqa: E402
from cnntrain.models import MODELS, builder_settings, init_weights, model_config  # noqa: E402

# Forward multiply-adds one timed step may cost; above it the batch is halved, so that
# full-width VGG-11 (7.6 G per 224 image) stays at seconds per step on a CPU.
MAX_STEP_MACS = 48e9


def default_batch(input_size: int, macs: int) -> int:
    batch = 256 if input_size <= 32 else 128 if input_size <= 96 else 32
    while batch > 1 and batch * macs > MAX_STEP_MACS:
        batch //= 2
    return batch


def time_training(
    model: torch.nn.Module,
    batch: int,
    channels: int,
    size: int,
    seconds: float,
    max_steps: int,
    channels_last: bool = True,
) -> tuple[float, int]:
    """Seconds per SGD step (mean over timed steps) and the number of timed steps."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    # Warm-up: the first steps pick kernels and allocate buffers. One is enough when a
    # step is slow anyway.
    if step() < 2.0:
        step()
    times: list[float] = []
    while len(times) < max_steps and (not times or sum(times) < seconds):
        times.append(step())
    return sum(times) / len(times), len(times)


def human(n: float) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= threshold:
            return f"{n / threshold:.2f} {suffix}"
    return f"{n:.0f}"


def rate(examples_per_s: float) -> str:
    # Whole numbers for readability, one decimal where that would round to almost nothing.
    return f"{examples_per_s:,.0f}" if examples_per_s >= 100 else f"{examples_per_s:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="names (default: all registered)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per model (default 8)")
    parser.add_argument("--max-steps", type=int, default=30, help="at most this many timed steps (default 30)")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="time the default NCHW layout instead of channels_last",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).with_name("models.md"),
        help="markdown file to write (default benchmarks/models.md)",
    )
    args = parser.parse_args(argv)

    names = args.models or MODELS.names()
    torch.manual_seed(0)
    header = [
        "# Model zoo: size and CPU training speed",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, torch {torch.__version__}, {torch.get_num_threads()} CPU "
        f"threads, {platform.processor() or platform.machine()}. Training step = forward + backward + "
        f"SGD on random data, {'channels_last' if args.channels_last else 'NCHW'}, float32; "
        f"examples/s excludes data loading. MACs = "
        f"multiply-adds per image in Conv and Linear layers.",
        "",
        "| model | input | batch | params | MACs/image | train examples/s | ms/step | timed steps |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(header), flush=True)
    lines = list(header)
    run_start = time.perf_counter()
    for name in names:
        cfg = model_config(name)
        size = int(cfg["input_size"])
        settings = builder_settings(cfg)
        channels = inspect.signature(MODELS.get(name)).parameters["in_channels"].default
        model = MODELS.build(name, settings, num_classes=10, in_channels=channels, input_size=size)
        init_weights(model, cfg.get("init", "default"))
        totals = inspector.model_totals(model, (channels, size, size))
        batch = default_batch(size, totals.macs)
        step_s, steps = time_training(model, batch, channels, size, args.seconds, args.max_steps, args.channels_last)
        line = (
            f"| {name} | {channels}x{size}x{size} | {batch} | {totals.params:,} | {human(totals.macs)} | "
            f"{rate(batch / step_s)} | {step_s * 1000:,.0f} | {steps} |"
        )
        print(line, flush=True)
        lines.append(line)
        del model
    footer = f"\nTotal benchmark time: {time.perf_counter() - run_start:.0f} s."
    print(footer)
    lines.append(footer)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
