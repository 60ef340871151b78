"""One process against torchrun with N processes (DistributedDataParallel), same run, same machine.

    python benchmarks/distributed.py                                    # LeNet on Fashion-MNIST, 1 vs 2 processes
    python benchmarks/distributed.py --processes 1,2,4 --epochs 3 model=resnet18 data.resize=32
    python benchmarks/distributed.py --device cuda --processes 1,8 model=resnet18 data=cifar10

Each configuration trains the same config (the arguments after the options are
cnntrain overrides) with the same global batch and seed, in its own run folder, and
the figures come from each run's metrics.csv and summary.json: training examples per
second (all processes together; the first epoch left out when there are several, as
warm-up), wall time of the whole command, and the final validation accuracy (which
should agree). Prints a table with the ratio to one process. On a CPU torchrun gives
each process OMP_NUM_THREADS=1, while one process uses every core: the comparison is
of how the cores are used, not of more hardware.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run_once(processes: int, overrides: list[str], folder: Path, device: str) -> dict:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    run_dir = folder / f"p{processes}"
    started = time.perf_counter()
    result = subprocess.run(
        [
            *launcher,
            "-m",
            "cnntrain",
            *overrides,
            f"device={device}",
            "trainer.progress=none",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    timed = rows[1:] or rows
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "processes": processes,
        "examples_per_s": sum(float(r["train_examples_per_s"]) for r in timed) / len(timed),
        "epoch_seconds": sum(float(r["epoch_seconds"]) for r in timed) / len(timed),
        "wall_seconds": wall,
        "val_acc": float(rows[-1]["val_acc"]),
        "test_acc": summary["test_acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (1: no torchrun)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args, overrides = parser.parse_known_args()
    overrides = [f"trainer.epochs={args.epochs}", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_once(int(n), overrides, Path(tmp), args.device) for n in args.processes.split(",")]
    base = results[0]["examples_per_s"]
    print(
        f"cnntrain {' '.join(overrides)} on {args.device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads in one process, torch {torch.__version__})"
    )
    print("| processes | train examples/s | ratio | s per epoch | wall s (whole command) | val acc | test acc |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['processes']} | {r['examples_per_s']:,.0f} | {r['examples_per_s'] / base:.2f} | "
            f"{r['epoch_seconds']:.2f} | {r['wall_seconds']:.1f} | {r['val_acc']:.4f} | {r['test_acc']:.4f} |"
        )


if __name__ == "__main__":
    main()
