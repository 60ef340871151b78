"""How far cnntrain's LeNet step is from the fastest step torch gives on this machine.

    python benchmarks/lenet_floor.py                          # 5 rounds, with torch.compile
    python benchmarks/lenet_floor.py --reps 7 --output benchmarks/lenet_floor.md

Builds `cnntrain experiment=d2l_lenet` through the Python API (one epoch, to have its
model, optimizer and loader), then times, in interleaved rounds over the same batches:
cnntrain's own training epoch (`Trainer.train_one_epoch`: its device-side metrics, hooks
and loader included), a bare loop (zero_grad, forward, cross-entropy, backward, SGD step)
over the same loader, and that bare loop with the model `torch.compile`d (its compile
time listed apart; `--no-compile` leaves it out). Milliseconds per step, the fastest and
the median round: when the three agree, the step is as fast as torch's CPU kernels make
it and what is left is in the kernels. Needs Fashion-MNIST (apt-get install
dataset-fashion-mnist, or `--root` with the IDX files). Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from cnntrain import Callback, train


class _KeepTrainer(Callback):
    def on_fit_start(self, trainer) -> None:
        self.trainer = trainer


def build_trainer(root: str, run_dir: Path):
    """cnntrain's trainer for d2l_lenet, after one epoch (warm: allocator, kernels chosen)."""
    keep = _KeepTrainer()
    train(
        "experiment=d2l_lenet",
        "trainer.epochs=1",
        "trainer.progress=none",
        f"data.root={root}",
        callbacks=[keep],
        run_dir=run_dir,
    )
    return keep.trainer


def bare_epoch(trainer, forward: Callable) -> Callable[[], None]:
    """One epoch of the plainest loop over cnntrain's loader, with `forward` computing the logits."""
    model, optimizer = trainer.model, trainer.optimizer

    def epoch() -> None:
        model.train()
        for images, labels in trainer.train_loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(forward(images), labels).backward()
            optimizer.step()

    return epoch


def cnntrain_epoch(trainer) -> Callable[[], None]:
    def epoch() -> None:
        trainer.train_one_epoch(2)
        trainer._epoch = None  # as fit() leaves it between epochs

    return epoch


def compiled_forward(trainer, cache_dir: str) -> tuple[Callable, float]:
    """The model compiled, and the seconds its first forward + backward took: the compile a first run pays
    (inductor's on-disk cache pointed at the empty `cache_dir`; a warm cache makes later runs' compile quick)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    compiled = torch.compile(trainer.model)
    images, labels = next(iter(trainer.train_loader))
    started = time.perf_counter()
    F.cross_entropy(compiled(images), labels).backward()
    return compiled, time.perf_counter() - started


def measure(loops: dict[str, Callable[[], None]], reps: int, steps: int) -> dict[str, list[float]]:
    """ms per step of each loop, per round; the loops take turns within a round."""
    for loop in loops.values():
        loop()  # warm-up round, not counted
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(reps):
        for name, loop in loops.items():
            started = time.perf_counter()
            loop()
            times[name].append((time.perf_counter() - started) / steps * 1000)
    return times


def table(times: dict[str, list[float]]) -> list[str]:
    reference = min(times["bare loop"])
    lines = ["| loop | ms/step, fastest round | ms/step, median | fastest / bare loop's |", "|---|---:|---:|---:|"]
    for name, values in times.items():
        lines.append(
            f"| {name} | {min(values):.2f} | {statistics.median(values):.2f} | {min(values) / reference:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (each loop runs one epoch per round)")
    parser.add_argument("--root", default="data", help="data.root to look in before the system copy")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd loop")
    parser.add_argument("--output", help="also write the table here (markdown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(str(Path(args.root).resolve()), Path(tmp) / "run")
        loops = {
            "cnntrain (Trainer.train_one_epoch)": cnntrain_epoch(trainer),
            "bare loop": bare_epoch(trainer, trainer.model),
        }
        if not args.no_compile:
            forward, compile_seconds = compiled_forward(trainer, str(Path(tmp) / "inductor"))
            loops[f"bare loop, torch.compile (compile {compile_seconds:.1f} s first, empty cache)"] = bare_epoch(
                trainer, forward
            )
        steps = len(trainer.train_loader)
        times = measure(loops, args.reps, steps)
    lines = [
        "# cnntrain's LeNet step against the bare loop and torch.compile",
        "",
        f"{date.today()}, {platform.machine()} CPU with {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, experiment=d2l_lenet (batch {trainer.train_loader.batch_size}, {steps} steps per "
        f"epoch), {args.reps} rounds (`python benchmarks/lenet_floor.py --reps {args.reps}"
        f"{' --no-compile' if args.no_compile else ''}`).",
        "",
        *table(times),
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
