"""Per-batch cost of the augmentation policies: cnntrain's batched ones vs torchvision's per image.

For randaugment, trivialaugment and augmix (default settings) and two batch shapes (B x 1 x 28 x 28
as Fashion-MNIST, B x 3 x 32 x 32 as CIFAR), the best time of one batch (of --repeats) through
`cnntrain.data.augment_policies` (float [0, 1] batch in and out, as the loader runs it) and through
torchvision.transforms.v2's RandAugment / TrivialAugmentWide / AugMix applied to each uint8 image in
a Python loop (what one DataLoader worker does per batch). Prints a markdown table and the CPU;
asserts nothing (the figures depend on the machine and on what else runs on it).

    python benchmarks/augment_policies.py [--batch 256] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from cnntrain.cpu import cpu_description
from cnntrain.data.augment import build_augmentations

TORCHVISION = {"randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide, "augmix": v2.AugMix}
SHAPES = ((1, 28, 28), (3, 32, 32))


def best_ms(work, repeats: int) -> float:
    """The fastest of `repeats` timed calls after a warm-up: the least disturbed by other processes."""
    work()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def row(name: str, policy, per_image, shape: tuple[int, ...], repeats: int) -> str:
    """The table row of one policy on one batch shape: both times and how many times faster."""
    levels = torch.randint(0, 256, shape, dtype=torch.uint8)
    floats = levels.float() / 255
    generator = torch.Generator().manual_seed(0)
    ours = best_ms(lambda: policy(floats, generator), repeats)
    theirs = best_ms(lambda: torch.stack([per_image(image) for image in levels]), repeats)
    return f"| {name} | {'x'.join(map(str, shape))} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.1f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU: {cpu_description()}; torch threads: {torch.get_num_threads()}; batch {args.batch}")
    print(f"best of {args.repeats} after a warm-up, milliseconds per batch")
    print("| policy | batch shape | cnntrain batched (ms) | torchvision per image (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for name, reference in TORCHVISION.items():
        [policy] = build_augmentations([name])
        for shape in SHAPES:
            print(row(name, policy, reference(), (args.batch, *shape), args.repeats))


if __name__ == "__main__":
    main()
