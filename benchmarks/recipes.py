"""Accuracy recipes, measured as a user runs them: whole `cnntrain` processes, several seeds.

    python benchmarks/recipes.py \
        --recipe "small3=model=resnet_small optimizer=adamw scheduler=onecycle trainer.epochs=3"
    python benchmarks/recipes.py --seeds 0,1,2 --recipe "a=<overrides>" --recipe "b=<overrides>" \
        --output benchmarks/recipes.md

Each `--recipe "<name>=<cnntrain overrides>"` runs once per seed (`seed=<s>`), each in a
fresh process with its own run folder, and the table gives per recipe: the test accuracy
of every seed and their mean ± standard deviation, the mean best validation accuracy (what
to tune on), the wall time of the whole process
(start to summary, as the user waits for it) and the training examples per second (the
runs' mean over epochs after the first). Test accuracy is the run's own (its best.pt by
validation accuracy, measured once on the test split): tune on validation, report test.
A recipe that validates on the test images (data.val_fraction=0, as the book's presets do)
has best.pt chosen on them: its notes line gives each seed's accuracy after the last epoch.
Extra arguments after the options are added to every recipe (e.g. data.root=...).
Prints the table, and writes it as markdown with `--output`.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without `pip install -e .`
from cnntrain.cpu import cpu_description  # noqa: E402


@dataclass
class RecipeResult:
    name: str
    overrides: list[str]
    test_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)
    examples_per_s: list[float] = field(default_factory=list)
    # Each seed's accuracy after the last epoch, for runs whose validation was the test split.
    last_epoch_test_acc: list[float] = field(default_factory=list)

    def row(self) -> str:
        spread = statistics.stdev(self.test_acc) if len(self.test_acc) > 1 else 0.0
        return (
            f"| {self.name} | {', '.join(f'{a:.4f}' for a in self.test_acc)} | "
            f"{statistics.mean(self.test_acc):.4f} ± {spread:.4f} | {statistics.mean(self.val_acc):.4f} | "
            f"{statistics.mean(self.wall_seconds):.0f} | "
            f"{statistics.mean(self.examples_per_s):,.0f} |"
        )

    def note(self) -> str:
        line = f"- {self.name}: `cnntrain {' '.join(self.overrides)}`"
        if self.last_epoch_test_acc:
            figures = self.last_epoch_test_acc
            spread = statistics.stdev(figures) if len(figures) > 1 else 0.0
            line += (
                f"; validation ran on the test images, so best.pt was chosen on them. After the last epoch: "
                f"{', '.join(f'{a:.4f}' for a in figures)} ({statistics.mean(figures):.4f} ± {spread:.4f})"
            )
        return line


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not name.strip() or not overrides.strip():
        sys.exit(f"--recipe takes '<name>=<cnntrain overrides>', got {text!r}")
    return name.strip(), shlex.split(overrides)


def run_seed(overrides: list[str], seed: int, run_dir: Path) -> tuple[float, float, float, float, float | None]:
    """(test accuracy, best validation accuracy, wall seconds of the whole process, training examples/s,
    the test accuracy after the last epoch when validation was the test split, else None) of one run."""
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnntrain",
            *overrides,
            f"seed={seed}",
            "trainer.progress=none",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"seed {seed} of {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        speeds = [float(row["train_examples_per_s"]) for row in csv.DictReader(f)]
    timed = speeds[1:] or speeds  # the first epoch warms up
    last_test = summary["final_epoch"]["val_acc"] if summary.get("test_is_validation") else None
    return summary["test_acc"], summary["best_val_acc"], wall, statistics.mean(timed), last_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", required=True, help="'<name>=<cnntrain overrides>' (repeatable)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", help="also write the table to this markdown file")
    args, common = parser.parse_known_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.recipe):
            name, overrides = parse_recipe(text)
            result = RecipeResult(name, overrides + common)
            for seed in seeds:
                acc, val, wall, speed, last_test = run_seed(result.overrides, seed, Path(tmp) / f"r{i}_s{seed}")
                result.test_acc.append(acc)
                result.val_acc.append(val)
                result.wall_seconds.append(wall)
                result.examples_per_s.append(speed)
                if last_test is not None:
                    result.last_epoch_test_acc.append(last_test)
                print(
                    f"{name} seed {seed}: test acc {acc:.4f}, val acc {val:.4f}, {wall:.0f} s, {speed:,.0f} ex/s"
                    + (
                        f", after the last epoch {last_test:.4f} (validation is the test split)"
                        if last_test is not None
                        else ""
                    ),
                    flush=True,
                )
            results.append(result)
    lines = [
        f"# Recipes, {len(seeds)} seed(s) each",
        "",
        f"{date.today()}, CPU: {cpu_description()}, Python {platform.python_version()}; whole `cnntrain` "
        f"processes, test accuracy of best.pt (chosen by validation accuracy).",
        "",
        "| recipe | test acc per seed | mean ± std | best val acc (mean) | wall s (whole process) | train ex/s |",
        "|---|---|---|---:|---:|---:|",
        *(r.row() for r in results),
        "",
        *(r.note() for r in results),
    ]
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
