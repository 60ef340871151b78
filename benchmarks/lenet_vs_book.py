"""The default LeNet, cnntrain against the book's own code: whole processes, back to back.

    python benchmarks/lenet_vs_book.py                                   # 10 epochs, seed 0
    python benchmarks/lenet_vs_book.py --epochs 10 --seeds 0,1,2 --output benchmarks/lenet.md

Per seed, first the book's code (benchmarks/book_lenet.py: d2l's LeNet section and the
helpers it calls, 4 DataLoader workers, per-step host reads, SGD lr 0.9, batch 256), then
`cnntrain experiment=d2l_lenet` (the same recipe; it trains on all 60k images and tests on
the 10k test images after every epoch, as the book does), each in a fresh process.
Measured: the whole process from start to exit (imports, data, every epoch, the final
figures, cnntrain's plots and checkpoints), the epoch (training + test pass; the median of
the epochs after the first) and the test accuracy after the last epoch. The book's own
"examples/sec" (step time only, the figure it prints) is listed too. Needs the real
Fashion-MNIST (apt-get install dataset-fashion-mnist) and matplotlib (the book's plot).
Measure on a quiet machine: anything else running shares the cores with both.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import write_torchvision_copy  # noqa: E402

from cnntrain.data.mnist import fashion_mnist  # noqa: E402


@dataclass
class ProcessResult:
    wall_seconds: float
    epoch_seconds: list[float]
    test_acc: float
    examples_per_s: float  # the book: its printed step-only figure; cnntrain: training examples/s

    @property
    def epoch(self) -> float:
        """The median epoch after the first (warm-up: worker start, first allocations)."""
        return statistics.median(self.epoch_seconds[1:] or self.epoch_seconds)


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, done.stdout


def run_book(root: Path, epochs: int, seed: int) -> ProcessResult:
    wall, out = timed(
        [sys.executable, str(HERE / "book_lenet.py"), "--root", str(root), "--epochs", str(epochs), "--seed", str(seed)]
    )
    result = json.loads(out.strip().splitlines()[-1])
    return ProcessResult(wall, result["epoch_seconds"], result["test_acc"], result["printed_examples_per_s"])


def run_cnntrain(run_dir: Path, root: str, epochs: int, seed: int) -> ProcessResult:
    wall, _ = timed(
        [
            sys.executable,
            "-m",
            "cnntrain",
            "experiment=d2l_lenet",
            f"trainer.epochs={epochs}",
            f"data.root={Path(root).resolve()}",
            f"seed={seed}",
            "trainer.progress=none",
            f"hydra.run.dir={run_dir}",
        ]
    )
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return ProcessResult(
        wall,
        [float(r["epoch_seconds"]) for r in rows],
        float(rows[-1]["val_acc"]),
        statistics.mean(float(r["train_examples_per_s"]) for r in rows[1:] or rows),
    )


def table(results: list[tuple[int, ProcessResult, ProcessResult]]) -> list[str]:
    lines = [
        "| seed | book: whole process s | cnntrain: whole process s | ratio | book: epoch s | "
        "cnntrain: epoch s | ratio | book: test acc | cnntrain: test acc | book: printed ex/s | "
        "cnntrain: train ex/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed, book, ours in results:
        lines.append(
            f"| {seed} | {book.wall_seconds:.1f} | {ours.wall_seconds:.1f} | "
            f"{book.wall_seconds / ours.wall_seconds:.2f}x | {book.epoch:.2f} | {ours.epoch:.2f} | "
            f"{book.epoch / ours.epoch:.2f}x | {book.test_acc:.4f} | {ours.test_acc:.4f} | "
            f"{book.examples_per_s:,.0f} | {ours.examples_per_s:,.0f} |"
        )
    if len(results) > 1:
        mean = statistics.mean
        book_wall, our_wall = mean(b.wall_seconds for _, b, _ in results), mean(o.wall_seconds for _, _, o in results)
        book_epoch, our_epoch = mean(b.epoch for _, b, _ in results), mean(o.epoch for _, _, o in results)
        lines.append(
            f"| mean | {book_wall:.1f} | {our_wall:.1f} | {book_wall / our_wall:.2f}x | {book_epoch:.2f} | "
            f"{our_epoch:.2f} | {book_epoch / our_epoch:.2f}x | "
            f"{mean(b.test_acc for _, b, _ in results):.4f} | {mean(o.test_acc for _, _, o in results):.4f} | "
            f"{mean(b.examples_per_s for _, b, _ in results):,.0f} | "
            f"{mean(o.examples_per_s for _, _, o in results):,.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed runs the book, then cnntrain")
    parser.add_argument("--root", default="data", help="data.root to look in before the system copy")
    parser.add_argument("--output", help="also write the table here (markdown)")
    args = parser.parse_args()
    import torch

    data = fashion_mnist(root=args.root, download=False)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_torchvision_copy(data, Path(tmp) / "book")
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"seed {seed}: the book's code ...", flush=True)
            book = run_book(root, args.epochs, seed)
            print(f"seed {seed}: cnntrain experiment=d2l_lenet ...", flush=True)
            results.append((seed, book, run_cnntrain(Path(tmp) / f"run{seed}", args.root, args.epochs, seed)))
    lines = [
        "# The default LeNet: cnntrain against the book's own code",
        "",
        f"{date.today()}, {platform.machine()} CPU with {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {args.epochs} epochs, back to back per seed (`python benchmarks/lenet_vs_book.py "
        f"--epochs {args.epochs} --seeds {args.seeds}`). Ratios: the book's time / cnntrain's.",
        "",
        *table(results),
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
