"""MixUp and CutMix (`trainer.mixup`): training batches mixed in pairs, with soft targets.

They change the targets, so they are no per-image augmentation: the training loader
applies a `BatchMixer` to each batch after the `BatchTransform` (augmentations,
normalisation), and yields (images, targets) where targets are class probabilities,
shape (batch, classes). `F.cross_entropy` takes those as they are; its label smoothing
then smooths the mixed targets ((1 - e) * target + e / classes), which is what timm's
Mixup does with its smoothing.

The definitions are torchvision's `transforms.v2.MixUp` / `CutMix` (one lambda per batch,
drawn from Beta(alpha, alpha); CutMix's box centred on a random pixel, sides
sqrt(1 - lambda) of the image's, clipped to the image, and lambda then set to the share
of the image the box left as it was), with timm's choice between the two (`switch_prob`)
and `prob` of mixing a batch at all. Unlike torchvision, which draws from the global
random generator and pairs each image with its neighbour in the batch, every number here
(whether to mix, which of the two, lambda, the box, a random pairing permutation) comes
from the loader's seeded per-epoch generator, after the batch's augmentations, and on the
training device without a host sync (on mps, one small read per batch): runs repeat, and a
resumed run continues the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Devices where torch samples Beta (Dirichlet) variates with a given generator; elsewhere (mps)
# one number of the generator seeds a CPU generator that draws it.
_DIRICHLET_DEVICES = ("cpu", "cuda")


def beta(alpha: float, generator: torch.Generator) -> torch.Tensor:
    """One Beta(alpha, alpha) draw from `generator`, a float32 scalar on its device.

    What torch.distributions.Beta(alpha, alpha).sample() draws from the global generator
    (torchvision's MixUp and CutMix), from the given one.
    """
    return dirichlet(torch.tensor([[alpha, alpha]], dtype=torch.float32), generator)[0, 0]


def dirichlet(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Dirichlet draw per row of `concentration` (rows, k), float32 on the generator's device
    (what torch._sample_dirichlet draws from the global generator, from the given one)."""
    device = generator.device
    if device.type in _DIRICHLET_DEVICES:
        return torch._sample_dirichlet(concentration.to(device), generator=generator)
    seed = torch.randint(2**62, (1,), generator=generator, device=device).item()
    cpu = torch.Generator().manual_seed(seed)
    return torch._sample_dirichlet(concentration.cpu(), generator=cpu).to(device)


def cutmix_box(
    lam: torch.Tensor, generator: torch.Generator, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, bottom, left, right) of CutMix's box for `lam`, as torchvision's CutMix draws and computes it:
    a centre pixel (x, then y, from `generator`), half sides int(0.5 * sqrt(1 - lam) * side) around it,
    clipped to the image (bottom and right exclusive)."""
    device = generator.device
    center_x = torch.randint(width, (1,), generator=generator, device=device)[0].to(lam.device)
    center_y = torch.randint(height, (1,), generator=generator, device=device)[0].to(lam.device)
    if lam.device.type != "mps":  # in float64, as torchvision computes it in Python floats (mps has no float64)
        lam = lam.double()
    half = 0.5 * (1 - lam).clamp(min=0).sqrt()
    half_h, half_w = (half * height).floor(), (half * width).floor()
    return (
        (center_y - half_h).clamp(min=0),
        (center_y + half_h).clamp(max=height),
        (center_x - half_w).clamp(min=0),
        (center_x + half_w).clamp(max=width),
    )


def box_weight(box, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) weights of the image's own pixels (0 inside the box, 1 outside) and the share it keeps."""
    top, bottom, left, right = box
    rows = torch.arange(height, device=device, dtype=top.dtype)[:, None]
    cols = torch.arange(width, device=device, dtype=top.dtype)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    return (~inside).float(), kept.float()


def mix(
    images: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """images * weight + images[perm] * (1 - weight); targets likewise with lam.

    `weight` is lam itself for MixUp and the box's 0/1 map for CutMix; `targets` are class
    probabilities (one-hot for plain labels).
    """
    weight = weight.to(images.dtype)
    mixed = images * weight + images[perm] * (1 - weight)
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
        mixed = mixed.contiguous(memory_format=torch.channels_last)  # keep trainer.channels_last's layout
    lam = lam.to(targets.dtype)
    return mixed, targets * lam + targets[perm] * (1 - lam)


@dataclass
class BatchMixer:
    """MixUp (`alpha` > 0) and/or CutMix (`cutmix_alpha` > 0) of training batches, timm's Mixup settings.

    Each batch is mixed with probability `prob`; with both on, CutMix is used with probability
    `switch_prob`, MixUp otherwise. Every batch draws the same amount of random numbers from
    the generator, whatever the outcome, so nothing has to be read back from the device.
    """

    num_classes: int
    alpha: float = 0.0  # MixUp's Beta(alpha, alpha); 0: no MixUp
    cutmix_alpha: float = 0.0  # CutMix's Beta(cutmix_alpha, cutmix_alpha); 0: no CutMix
    prob: float = 1.0  # probability that a batch is mixed at all
    switch_prob: float = 0.5  # with both on: probability of CutMix rather than MixUp

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets (batch, classes)) of a batch with integer labels."""
        weight, lam, perm = self.draw(images, generator)
        return mix(images, F.one_hot(labels, self.num_classes).float(), weight, lam, perm)

    def draw(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch's (weight, lam, perm) for `mix`: the weight of each image's own pixels (lam, or
        CutMix's (H, W) map), its share of the target, and the pairing. Unmixed: weight = lam = 1."""
        height, width = images.shape[-2:]
        device = images.device
        draws = torch.rand(2, generator=generator, device=generator.device).to(device)
        mixed_at_all, use_cutmix = draws[0] < self.prob, draws[1] < self.switch_prob
        one = torch.ones((), device=device)
        weight = lam = one
        if self.alpha > 0:
            weight = lam = beta(self.alpha, generator).to(device)
        if self.cutmix_alpha > 0:
            box = cutmix_box(beta(self.cutmix_alpha, generator).to(device), generator, height, width)
            box_map, kept = box_weight(box, height, width, device)
            if self.alpha > 0:
                weight, lam = torch.where(use_cutmix, box_map, weight), torch.where(use_cutmix, kept, lam)
            else:
                weight, lam = box_map, kept
        weight, lam = torch.where(mixed_at_all, weight, one), torch.where(mixed_at_all, lam, one)
        perm = torch.randperm(len(images), generator=generator, device=generator.device).to(device)
        return weight, lam, perm
