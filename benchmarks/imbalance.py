"""Imbalanced classes, measured: LeNet on a Fashion-MNIST training set where 5 of the 10 classes keep
only 10% of their images, tested on the full (balanced) test split, trained three ways:

    plain                          nothing done about the imbalance
    trainer.class_weights=balanced the loss weighs each class by n_images / (n_classes x its images)
    data.sampler=balanced          each epoch draws every class equally often

    python benchmarks/imbalance.py      # the recipe's 10 epochs each; Fashion-MNIST where data=fashion_mnist finds it
    python benchmarks/imbalance.py --epochs 5 --output benchmarks/imbalance.md
    python benchmarks/imbalance.py optimizer=adam   # extra overrides go to every run

The imbalanced set is a dataset this script registers through the Python API (`fashion_mnist_imbalanced`:
the fashion_mnist builder's images, then a seeded choice of 5 classes cut to a seeded 10% of their training
images), so the runs are ordinary `cnntrain.train` runs of model=lenet with its recipe (SGD lr 0.9, batch
256, 10 epochs: the sigmoid LeNet starts slowly, and 5 epochs leave it near chance), the same seed and
epochs for the three, on one CPU thread (trainer.threads=1: a fixed thread count makes reruns bit-identical;
under `auto` the count follows the machine's load, and the last bits with it, which the sigmoid LeNet's
chaotic first epochs turn into different runs). Validation is 10% of the imbalanced training images, held out
as usual. The table gives the test accuracy, balanced accuracy (mean per-class recall) and macro-F1 of each
run's best.pt (chosen by val_acc), the mean test recall of the 5 cut classes, and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout without `pip install -e .`
from cnntrain import train  # noqa: E402
from cnntrain.cpu import cpu_description  # noqa: E402
from cnntrain.data import DATASETS  # noqa: E402
from cnntrain.evaluation import evaluate_run  # noqa: E402

CUT_CLASSES = 5  # how many classes lose most of their training images
DRAW_SEED = 0  # which classes, and which of their images stay
KEEP = 0.1  # the share of a cut class's training images kept (--keep)

OPTIONS = {
    "plain": [],
    "trainer.class_weights=balanced": ["trainer.class_weights=balanced"],
    "data.sampler=balanced": ["data.sampler=balanced"],
}


def cut_classes() -> list[int]:
    return sorted(torch.randperm(10, generator=torch.Generator().manual_seed(DRAW_SEED))[:CUT_CLASSES].tolist())


@DATASETS.register("fashion_mnist_imbalanced")
def fashion_mnist_imbalanced(root: str = "data", download: bool = True):
    """Fashion-MNIST with `cut_classes()` keeping KEEP of their training images (a seeded choice); test as it is."""
    data = DATASETS.build("fashion_mnist", {"root": root, "download": download})
    labels = data.train.labels
    generator = torch.Generator().manual_seed(DRAW_SEED + 1)
    keep = torch.ones(len(labels), dtype=torch.bool)
    for label in cut_classes():
        members = torch.nonzero(labels == label).flatten()
        dropped = members[torch.randperm(len(members), generator=generator)[round(KEEP * len(members)) :]]
        keep[dropped] = False
    data.train = data.train.subset(torch.nonzero(keep).flatten())
    return data


def measure(name: str, overrides: list[str], args: argparse.Namespace, folder: Path) -> dict:
    started = time.perf_counter()
    extra = [f"data.root={args.root}"] if args.root else []
    result = train(
        f"model={args.model}",
        "data=fashion_mnist",
        "data.name=fashion_mnist_imbalanced",
        "device=cpu",
        f"trainer.epochs={args.epochs}",
        "trainer.progress=none",
        "trainer.threads=1",
        *extra,
        *args.overrides,
        *overrides,
        run_dir=folder / name.replace("=", "_"),
    )
    seconds = time.perf_counter() - started
    recalls = {row["class"]: row["recall"] for row in evaluate_run(result.run_dir).per_class}
    classes = result.classes
    summary = result.summary
    return {
        "name": name,
        "test_acc": summary["test_acc"],
        "test_balanced_acc": summary["test_balanced_acc"],
        "test_macro_f1": summary["test_macro_f1"],
        "cut_recall": sum(recalls[classes[c]] for c in cut_classes()) / CUT_CLASSES,
        "seconds": seconds,
        "best_epoch": summary["best_epoch"],  # chosen by trainer.checkpoint.monitor (val_acc unless overridden)
        "counts": summary["imbalance"]["class_counts"],
        "test_size": summary["test_size"],
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    counts = rows[0]["counts"]
    cut = ", ".join(list(counts)[c] for c in cut_classes())
    lines = [
        f"Imbalanced Fashion-MNIST: {cut} kept at {KEEP:.0%} of their training images "
        f"({min(counts.values()):,} to {max(counts.values()):,} images per class after the 10% validation "
        f"hold-out, {sum(counts.values()):,} in all); the whole test split ({rows[0]['test_size']:,} images, "
        f"balanced). model={args.model} with its recipe{''.join(' ' + o for o in args.overrides)}, {args.epochs} "
        f"epochs, seed 42, trainer.threads=1, on {cpu_description()}.",
        "",
        "| training | test acc | test balanced acc | test macro-F1 | cut classes' recall | best epoch | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['test_acc']:.4f} | {row['test_balanced_acc']:.4f} | {row['test_macro_f1']:.4f} "
            f"| {row['cut_recall']:.4f} | {row['best_epoch']} | {row['seconds']:.0f}s |"
        )
    return "\n".join(lines)


def main() -> None:
    global KEEP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="each run's epochs (the recipe's 10)")
    parser.add_argument("--keep", type=float, default=KEEP, help="the share of a cut class's images kept")
    parser.add_argument("--model", default="lenet", help="the model (with its recipe's optimizer and batch size)")
    parser.add_argument("--root", help="data.root (default: where data=fashion_mnist finds the dataset)")
    parser.add_argument("--output", type=Path, help="also write the table here (markdown)")
    parser.add_argument("overrides", nargs="*", help="cnntrain overrides added to every run (optimizer=adam)")
    args = parser.parse_args()
    KEEP = args.keep
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(name, options, args, Path(folder)) for name, options in OPTIONS.items()]
    text = table(rows, args)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
