"""Training speed when other processes want the same CPU cores, before and after trainer.threads=auto.

    python benchmarks/contention.py                          # the table: 3 models x 0/1/2 busy processes
    python benchmarks/contention.py --side-by-side 2         # + two runs at once against one after the other
    python benchmarks/contention.py --models airnet --loads 1 --output /tmp/contention.md
    python benchmarks/contention.py --models lenet --loads 0 data=synthetic    # overrides for every run

Every figure is a whole `cnntrain` process on real Fashion-MNIST (apt-get install
dataset-fashion-mnist), reading the epoch's training examples/s from its metrics.csv. A busy
process is `python -c 'while True: pass'`, started before the run and killed after it.
"before" is trainer.threads=<the cores> (what torch did on its own until then: one thread per
core, whatever else runs), "after" is trainer.threads=auto (contention.ThreadGovernor).
"1 thread" is trainer.threads=1 on the quiet machine: the target under one busy process is
80% of it. The runs are short (`--steps` batches, 2 validation and test batches): the
figures include each run's first steps and the governor's first second.

Time it on a quiet machine (`uptime` load under 0.5): anything else running is one more busy process.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cnntrain.cpu import allowed_cores, cpu_description  # noqa: E402

# name -> (cnntrain overrides, training batches timed)
MODELS = {
    "lenet": (["model=lenet", "data.batch_size=256"], 150),
    "airnet": (["experiment=fmnist_fast", "trainer.time_limit=null", "trainer.tta=null", "trainer.precision=32"], 60),
    "alexnet-224": (["model=alexnet", "data.batch_size=16", "optimizer=sgd"], 8),
}
BUSY = [sys.executable, "-c", "while True: pass"]


def train_speed(overrides: list[str], steps: int, threads: str, busy: int, workdir: Path) -> float:
    """Training examples/s of one whole cnntrain run beside `busy` busy processes."""
    hogs = [subprocess.Popen(BUSY) for _ in range(busy)]
    try:
        run_dir = Path(tempfile.mkdtemp(dir=workdir))
        command = [
            *cnntrain_command(),
            *overrides,
            "trainer.epochs=1",
            f"trainer.limit_train_batches={steps}",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            f"trainer.threads={threads}",
            "trainer.progress=none",
            f"hydra.run.dir={run_dir}",
        ]
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=workdir, env=environment())
    finally:
        for hog in hogs:
            hog.kill()
    with open(run_dir / "metrics.csv") as rows:
        return float(next(csv.DictReader(rows))["train_examples_per_s"])


def speed(examples_per_s: float) -> str:
    """12,345 or 14.8: a 224-pixel model's few examples a second keep a decimal."""
    return f"{examples_per_s:,.0f}" if examples_per_s >= 100 else f"{examples_per_s:.1f}"


def environment() -> dict[str, str]:
    """This process's environment without OMP_NUM_THREADS, which would fix every run's thread count."""
    return {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}


def cnntrain_command() -> list[str]:
    return [sys.executable, "-m", "cnntrain"]


def side_by_side(overrides: list[str], threads: str, workdir: Path) -> tuple[float, float]:
    """(seconds for two runs one after the other, seconds for the two started together)."""

    def command() -> list[str]:
        run_dir = Path(tempfile.mkdtemp(dir=workdir))
        return [*cnntrain_command(), *overrides, f"trainer.threads={threads}", f"hydra.run.dir={run_dir}"]

    started = time.perf_counter()
    for _ in range(2):
        subprocess.run(command(), check=True, capture_output=True, cwd=workdir, env=environment())
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    runs = [
        subprocess.Popen(
            command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, env=environment()
        )
    ]
    runs.append(
        subprocess.Popen(
            command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, env=environment()
        )
    )
    if any(run.wait() != 0 for run in runs):
        sys.exit("a side-by-side run failed: run its command by hand to see why")
    return sequential, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--loads", default="0,1,2", help="numbers of busy processes beside the run")
    parser.add_argument(
        "--side-by-side",
        type=int,
        default=0,
        metavar="STEPS",
        help="also time two airnet runs of STEPS batches at once against one after the other",
    )
    parser.add_argument("--output", type=Path, help="write the tables as markdown here")
    parser.add_argument("overrides", nargs="*", help="cnntrain overrides added to every run (e.g. data.root=...)")
    args = parser.parse_args()
    cores = allowed_cores()
    before = str(cores)
    lines = [
        f"# Training beside busy processes ({date.today()})",
        "",
        f"CPU: {cpu_description()}; Python {platform.python_version()}. Whole `cnntrain` processes, "
        f"train ex/s of one epoch's first batches; before: trainer.threads={before}, after: trainer.threads=auto.",
        "",
        "| model | busy processes | before ex/s | after ex/s | after / before | after / 1 thread quiet |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for name in args.models.split(","):
            overrides, steps = MODELS[name]
            overrides = overrides + args.overrides
            alone = train_speed(overrides, steps, "1", 0, workdir)
            for busy in (int(load) for load in args.loads.split(",")):
                old = train_speed(overrides, steps, before, busy, workdir)
                new = train_speed(overrides, steps, "auto", busy, workdir)
                lines.append(f"| {name} | {busy} | {speed(old)} | {speed(new)} | {new / old:.2f} | {new / alone:.2f} |")
                print(lines[-1], flush=True)
            lines.append(f"| {name} | 1 thread, quiet | | {speed(alone)} | | |")
            print(lines[-1], flush=True)
        if args.side_by_side:
            overrides = [*MODELS["airnet"][0], *args.overrides, "trainer.epochs=1"]
            overrides.append(f"trainer.limit_train_batches={args.side_by_side}")
            lines += ["", "| two airnet runs | one after the other s | side by side s |", "|---|---:|---:|"]
            for label, threads in (("before", before), ("after", "auto")):
                sequential, together = side_by_side(overrides, threads, workdir)
                lines.append(f"| {label} (trainer.threads={threads}) | {sequential:.1f} | {together:.1f} |")
                print(lines[-1], flush=True)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
