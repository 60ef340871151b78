"""cnntrain's training loop against the tutorials' own loop, same machine, same run.

The reference is the book's own training loop (d2l's train_ch6, whose helpers
benchmarks/book_lenet.py copies): torchvision's FashionMNIST dataset with a (Resize +)
ToTensor transform, a DataLoader with 4 worker processes, host reads of the loss and
accuracy every step (Accumulator, accuracy) and the Animator's plot updates five times
an epoch. Only the initial weights are given, so that both loops start from the same
ones. (Before 2026-11-30 this loop read the loss and accuracy with `.item()` and drew
no plot: about 10% faster than the book's code; its 2,619 ex/s in the speed.md of
2026-11-23 was measured while other work shared the 2 cores: quiet, it runs 12k.)
For whole processes against the book's code itself, see lenet_vs_book.py. cnntrain's path: the dataset
decoded once into a uint8 tensor, index batches converted (and resized) on the
device, channels_last as trainer.channels_last=auto chooses, metrics summed on the
device. Both train the same model from the same initial weights with the book's
recipe (experiment=d2l_<model>: SGD, its lr and batch, Xavier-uniform init, native
input size).

    python benchmarks/speed.py                              # LeNet, 1 epoch each; writes speed.md
    python benchmarks/speed.py --epochs 10 --seeds 0,1,2    # + LeNet's test accuracy after 10 epochs, per seed
    python benchmarks/speed.py --zoo --steps 4              # + each zoo model at its native size, 4 steps a pass
    python benchmarks/speed.py --epochs 3 --zoo --device cuda --precision bf16 --compile   # cnntrain's switches

For LeNet a pass is a whole epoch (train 60k + evaluate 10k). For the zoo models a
pass is `--steps` training batches plus as many test images (a whole 224-pixel epoch
takes over an hour on a CPU). With more than one pass, the speed figures leave out
the first (warm-up, torch.compile's compilation and cuDNN's autotuning included).
Also measured per loop: time to the first batch (from creating the iterator to a
batch on the device) and peak memory (CUDA: max allocated; CPU: the process's peak
resident set, reset before each loop; the tutorial loop's worker processes are not
included). Needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # book_lenet.py: the book's helpers
try:
    import cnntrain  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from cnntrain.build import build_training, resolve_device  # noqa: E402
from cnntrain.checks import check_config  # noqa: E402
from cnntrain.config import compose, settings_of  # noqa: E402
from cnntrain.data import ImageData  # noqa: E402
from cnntrain.data.idx import write_idx  # noqa: E402
from cnntrain.data.mnist import fashion_mnist  # noqa: E402
from cnntrain.models import MODEL_KEYS, build_model  # noqa: E402

ZOO = ("lenet_bn", "alexnet", "vgg", "nin", "googlenet", "resnet18")


@dataclass
class Recipe:
    """What both loops train: the book's preset for one model."""

    model: str
    settings: dict
    size: int
    batch: int
    lr: float

    def new_model(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(
            {
                "name": self.model,
                "settings": self.settings,
                "num_classes": 10,
                "in_channels": 1,
                "input_size": self.size,
                "init": "xavier_uniform",
            }
        )


@dataclass
class LoopResult:
    seconds_per_pass: float
    train_examples_per_s: float
    first_batch_seconds: float
    peak_mib: float
    test_acc: float


def recipe(model: str) -> Recipe:
    cfg = compose([f"experiment=d2l_{model}"])
    return Recipe(
        model, settings_of(cfg.model, MODEL_KEYS), cfg.model.input_size, cfg.data.batch_size, cfg.optimizer.lr
    )


class PeakMemory:
    """Peak memory of what runs inside the block, in MiB (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: writing 5 resets the peak resident set (VmHWM) to the current one
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.mib = int(line.split()[1]) / 1024


def timed_first_batch(loader, device: torch.device) -> float:
    started = time.perf_counter()
    images, _ = next(iter(loader))
    images.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def reference_loop(
    root: Path, rc: Recipe, device: torch.device, passes: int, limit: int | None, seed: int
) -> LoopResult:
    """The tutorial loop: the book's train_ch6 epoch (book_lenet.train_epoch_ch6, its per-step
    Accumulator/accuracy host reads and Animator updates included) and test pass, from `rc`'s
    initial weights (train_ch6 itself would re-initialise them)."""
    from book_lenet import Animator, Timer, evaluate_accuracy_gpu, train_epoch_ch6
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    steps = [transforms.Resize(rc.size)] if rc.size != 28 else []
    to_tensor = transforms.Compose(steps + [transforms.ToTensor()])
    with PeakMemory(device) as peak:
        train_set = datasets.FashionMNIST(str(root), train=True, transform=to_tensor, download=False)
        test_set = datasets.FashionMNIST(str(root), train=False, transform=to_tensor, download=False)
        if limit:
            train_set, test_set = Subset(train_set, range(limit)), Subset(test_set, range(limit))
        train_iter = DataLoader(train_set, rc.batch, shuffle=True, num_workers=4)
        test_iter = DataLoader(test_set, rc.batch, shuffle=False, num_workers=4)
        first_batch = timed_first_batch(train_iter, device)
        model = rc.new_model(seed).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=rc.lr)
        animator = Animator(xlabel="epoch", xlim=[1, passes], legend=["train loss", "train acc", "test acc"])
        seconds, train_seconds, accuracy_now = [], [], 0.0
        for epoch in range(passes):
            started = time.perf_counter()
            train_epoch_ch6(model, train_iter, optimizer, torch.nn.CrossEntropyLoss(), device, animator, Timer(), epoch)
            train_seconds.append(time.perf_counter() - started)
            accuracy_now = evaluate_accuracy_gpu(model, test_iter)
            animator.add(epoch + 1, (None, None, accuracy_now))
            seconds.append(time.perf_counter() - started)
    return LoopResult(_steady(seconds), len(train_set) / _steady(train_seconds), first_batch, peak.mib, accuracy_now)


@dataclass
class Switches:
    """The speed switches cnntrain's loop runs with (trainer.precision, trainer.compile)."""

    precision: str = "32"
    compile: bool = False

    def describe(self) -> str:
        return f"trainer.precision={self.precision}, trainer.compile={str(self.compile).lower()}"


def cnntrain_loop(
    data: ImageData, rc: Recipe, device: torch.device, passes: int, seed: int, switches: Switches
) -> LoopResult:
    """A cnntrain run of the book's preset, built as `cnntrain experiment=d2l_<model>` builds it
    (validated on the test split, as the book does), without the run folder's callbacks."""
    cudnn_benchmark = torch.backends.cudnn.benchmark
    cfg = compose(
        [
            f"experiment=d2l_{rc.model}",
            f"trainer.epochs={passes}",
            f"seed={seed}",
            f"device={device.type}",
            f"trainer.precision={switches.precision}",
            f"trainer.compile={str(switches.compile).lower()}",
            "trainer.log_every=50",
            "trainer.progress=none",
        ]
    )
    with PeakMemory(device) as peak:
        parts = build_training(check_config(cfg), data=data)  # the same initial weights as rc.new_model(seed)
        for notice in parts.notices:
            print(notice, flush=True)
        first_batch = timed_first_batch(parts.train_loader, device)
        history = parts.trainer().fit()
    torch.backends.cudnn.benchmark = cudnn_benchmark  # put back for the next tutorial loop
    return LoopResult(
        _steady([m.epoch_seconds for m in history]),
        _steady([m.train_examples_per_s for m in history]),
        first_batch,
        peak.mib,
        history[-1].val_acc,
    )


def _steady(values: list[float]) -> float:
    """The mean without the first pass (warm-up) when there is more than one."""
    values = values[1:] if len(values) > 1 else values
    return sum(values) / len(values)


def write_torchvision_copy(data, folder: Path) -> Path:
    """torchvision wants the decompressed files in its own layout (and rejects the Debian
    package's recompressed .gz by checksum), so write them out once."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", getattr(data, split).images[:, 0], compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", getattr(data, split).labels, compress=False)
    return folder


def result_row(label: str, rc: Recipe, result: LoopResult) -> str:
    return (
        f"| {rc.model} | {rc.size} | {rc.batch} | {label} | {result.seconds_per_pass:.2f} | "
        f"{result.train_examples_per_s:,.1f} | {result.first_batch_seconds:.3f} | {result.peak_mib:,.0f} | "
        f"{result.test_acc:.4f} |"
    )


def accuracy_table(accuracies: list[tuple[int, float, float]], epochs: int) -> list[str]:
    """LeNet's test accuracy per seed for both loops, with the mean and the spread across seeds."""
    lines = [
        f"LeNet test accuracy after {epochs} epochs, per seed (same initial weights for both loops; "
        "each loop shuffles in its own order):",
        "",
        "| seed | tutorial loop | cnntrain |",
        "|---|---:|---:|",
    ]
    lines += [f"| {seed} | {reference:.4f} | {ours:.4f} |" for seed, reference, ours in accuracies]
    for label, column in (("mean", statistics.mean), ("max - min", lambda v: max(v) - min(v))):
        lines.append(
            f"| {label} | {column([a[1] for a in accuracies]):.4f} | {column([a[2] for a in accuracies]):.4f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="LeNet epochs per loop")
    parser.add_argument("--zoo", action="store_true", help="also each zoo model at its native size")
    parser.add_argument("--models", default=",".join(ZOO), help="zoo models to measure with --zoo")
    parser.add_argument("--steps", type=int, default=4, help="training batches per pass for the zoo models")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds: LeNet runs once per seed (the accuracy's noise); "
        "the zoo and the timing table use the first",
    )
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16", "fp16"],
        help="cnntrain's trainer.precision (autocast; unsupported on this device: float32 + a notice)",
    )
    parser.add_argument("--compile", action="store_true", help="cnntrain's trainer.compile=true (torch.compile)")
    parser.add_argument("--root", default="data", help="data.root to look in before the system copy")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "speed.md"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    switches = Switches(args.precision, args.compile)

    load_started = time.perf_counter()
    data = fashion_mnist(root=args.root, download=False)
    load_seconds = time.perf_counter() - load_started
    # (recipe, passes, examples per pass: None for whole epochs)
    plans = [(recipe("lenet"), args.epochs, None)]
    if args.zoo:
        plans += [(rc, 2, args.steps * rc.batch) for rc in map(recipe, args.models.split(","))]
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_torchvision_copy(data, Path(tmp))
        for rc, passes, limit in plans:
            subset = (
                data
                if limit is None
                else ImageData(
                    data.classes, data.train.subset(torch.arange(limit)), data.test.subset(torch.arange(limit))
                )
            )
            results = []
            for seed in seeds if limit is None else seeds[:1]:  # the zoo's few-batch accuracies mean nothing
                print(f"{rc.model}, seed {seed}: tutorial loop ...", flush=True)
                reference = reference_loop(root, rc, device, passes, limit, seed)
                print(f"{rc.model}, seed {seed}: cnntrain ...", flush=True)
                results.append((seed, reference, cnntrain_loop(subset, rc, device, passes, seed, switches)))
            if limit is None:
                lenet_accuracies = [(seed, reference.test_acc, ours.test_acc) for seed, reference, ours in results]
            _, reference, ours = results[0]
            rows += [result_row("tutorial loop", rc, reference), result_row("cnntrain", rc, ours)]
            ratios.append(
                f"| {rc.model} | {ours.train_examples_per_s / reference.train_examples_per_s:.2f}x | "
                f"{reference.seconds_per_pass / ours.seconds_per_pass:.2f}x |"
            )

    lenet = "the whole epoch (train 60k + test 10k)" + (f", {args.epochs} epochs" if args.epochs > 1 else "")
    lines = [
        "# cnntrain vs the tutorials' loop",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, device {device} ({platform.machine()}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, seed {seeds[0]}. "
        f"cnntrain ran with {switches.describe()} and decoded the IDX files in {load_seconds:.2f} s (once). "
        f"LeNet: a pass is {lenet}; test acc after the last one. Zoo models: a pass is {args.steps} training "
        f"batches + as many test images; figures from the second pass.",
        "",
        "| model | input | batch | loop | s per pass | train ex/s | first batch s | peak MiB | test acc |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "| model | train ex/s ratio (cnntrain / tutorial) | pass time ratio (tutorial / cnntrain) |",
        "|---|---:|---:|",
        *ratios,
        "",
        "Peak MiB: CPU, the process's peak resident set during the loop (the tutorial loop's 4 DataLoader "
        "workers come on top); CUDA, the most memory allocated on the GPU.",
    ]
    if len(seeds) > 1:
        lines += ["", *accuracy_table(lenet_accuracies, args.epochs)]
    text = "\n".join(lines)
    print(text)
    Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
