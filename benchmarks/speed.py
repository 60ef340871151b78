"""cnntrain's training loop against the tutorials' own loop, same machine, same run.

The reference is written the way the tutorials write it: torchvision's FashionMNIST
dataset with a ToTensor transform, a DataLoader with 4 worker processes, and a
`.item()` per step for the loss and accuracy. cnntrain's path: the dataset decoded
once into a uint8 tensor, index batches converted on the device, channels_last,
metrics summed on the device. Both train the book's LeNet (SGD lr 0.9, batch 256,
Xavier-uniform init) on the same 60k images and evaluate on the 10k test images.

    python benchmarks/speed.py                 # 1 epoch each, prints a table, writes speed.md
    python benchmarks/speed.py --epochs 10     # also compares test accuracy after 10 epochs

Needs the real Fashion-MNIST (apt-get install dataset-fashion-mnist, or data.root).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
try:
    import cnntrain  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from cnntrain.data.idx import write_idx  # noqa: E402
from cnntrain.data.loader import BatchTransform, InMemoryLoader  # noqa: E402
from cnntrain.data.mnist import fashion_mnist  # noqa: E402
from cnntrain.models import MODELS, init_weights  # noqa: E402
from cnntrain.trainer import Trainer  # noqa: E402

BATCH, LR = 256, 0.9


def new_lenet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return init_weights(MODELS.build("lenet", {}), "xavier_uniform")


def reference_epochs(root: Path, epochs: int, seed: int) -> tuple[list[float], float]:
    """The tutorial loop; returns (seconds per epoch incl. evaluation, final test accuracy)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    to_tensor = transforms.ToTensor()
    train_set = datasets.FashionMNIST(str(root), train=True, transform=to_tensor, download=False)
    test_set = datasets.FashionMNIST(str(root), train=False, transform=to_tensor, download=False)
    train_iter = DataLoader(train_set, BATCH, shuffle=True, num_workers=4)
    test_iter = DataLoader(test_set, BATCH, shuffle=False, num_workers=4)
    model = new_lenet(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    seconds, accuracy = [], 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        loss_sum = correct = seen = 0.0
        for x, y in train_iter:
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)  # the tutorials' per-step host read
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
        model.eval()
        hits = total = 0
        with torch.no_grad():
            for x, y in test_iter:
                hits += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        accuracy = hits / total
        seconds.append(time.perf_counter() - started)
    return seconds, accuracy


def cnntrain_epochs(data, epochs: int, seed: int) -> tuple[list[float], float]:
    device = torch.device("cpu")
    model = new_lenet(seed).to(memory_format=torch.channels_last)
    transform = BatchTransform(size=None, mean=None, std=None, channels_last=True)
    train_loader = InMemoryLoader(data.train, BATCH, transform, device, shuffle=True, seed=seed)
    test_loader = InMemoryLoader(data.test, 2 * BATCH, transform, device)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=LR), None, train_loader, test_loader,
                      device, epochs, log_every=50)
    history = trainer.fit()
    return [m.epoch_seconds for m in history], history[-1].val_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="data", help="data.root to look in before the system copy")
    args = parser.parse_args()

    load_started = time.perf_counter()
    data = fashion_mnist(root=args.root, download=False)
    load_seconds = time.perf_counter() - load_started
    with tempfile.TemporaryDirectory() as tmp:
        # torchvision wants the decompressed files in its own layout (and would reject
        # the Debian package's recompressed .gz by checksum), so write them out once.
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = getattr(data, split).images[:, 0]
            write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress=False)
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", getattr(data, split).labels, compress=False)
        ref_seconds, ref_acc = reference_epochs(Path(tmp), args.epochs, args.seed)
    ours_seconds, ours_acc = cnntrain_epochs(data, args.epochs, args.seed)

    ref, ours = sum(ref_seconds) / len(ref_seconds), sum(ours_seconds) / len(ours_seconds)
    lines = [
        "# LeNet on Fashion-MNIST: cnntrain vs the tutorials' loop",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.epochs} epoch(s), batch {BATCH}, lr {LR}, seed {args.seed}. "
        f"Epoch = train on 60k + evaluate on 10k. cnntrain decoded the IDX files in {load_seconds:.2f} s (once).",
        "",
        "| loop | seconds per epoch | train examples/s | test acc after last epoch |",
        "|---|---:|---:|---:|",
        f"| tutorial (DataLoader, 4 workers, ToTensor, .item() per step) | {ref:.2f} | "
        f"{len(data.train) / ref:,.0f}* | {ref_acc:.4f} |",
        f"| cnntrain (in-memory uint8, device batches, channels_last) | {ours:.2f} | "
        f"{len(data.train) / ours:,.0f}* | {ours_acc:.4f} |",
        "",
        f"**Speed-up: {ref / ours:.2f}x** per epoch. (*) examples/s here is 60k over the whole epoch, "
        f"evaluation included.",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "benchmarks" / "speed.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
