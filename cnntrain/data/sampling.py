"""The order a training loader visits its examples in, epoch by epoch, and its augmentations' random stream.

Every draw comes from a generator seeded by (seed, epoch) alone, so a resumed run, a mid-epoch resume
(`_EpochLoader.resume_at` skips the batches already trained) and every process of a distributed run
(each takes its share of the same global order) see the same epoch. `epoch_order` is the default: a
permutation. data.sampler=balanced is `balanced_order`: len(train) draws with replacement, each class
equally likely (`example_weights`: 1 / its class's count), as torch's WeightedRandomSampler draws them.
"""

from __future__ import annotations

import torch

SAMPLERS = ("balanced",)  # data.sampler's choices besides null (a permutation per epoch)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch `epoch`: depends only on the seed and the epoch (a resumed run sees the same)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def augment_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The augmentations' random stream for an epoch, separate from the shuffle's, on the batch's device."""
    return torch.Generator(device=device).manual_seed(10_007 * (seed + 1) + epoch)


def example_weights(labels: torch.Tensor) -> torch.Tensor:
    """Each example's chance of a draw under data.sampler=balanced, float64 on the CPU: 1 / the number of
    examples of its class, so every class present is drawn equally often (a class with no example never is)."""
    labels = labels.cpu()
    counts = torch.bincount(labels).double()
    return 1.0 / counts[labels]


def balanced_order(weights: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Epoch `epoch`'s len(weights) draws with replacement (`example_weights`), from the shuffle's generator."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.multinomial(weights, len(weights), replacement=True, generator=generator)
