"""RandAugment, TrivialAugmentWide and AugMix as `data.augment` entries, batched and seeded.

    data.augment=[randaugment]
    data.augment='[{name: randaugment, num_ops: 2, magnitude: 9}]'
    data.augment=[trivialaugment]          data.augment=[augmix]

The definitions are torchvision's (transforms.v2.RandAugment, TrivialAugmentWide, AugMix): the
same operations (augment_ops.py), magnitude tables, random signs, interpolation (nearest;
AugMix: bilinear) and fill, for grey and colour images. Unlike torchvision, which draws from the
global generator for one image at a time, every image of a batch draws its own operations,
magnitudes and signs (AugMix: its chain depths and mixing weights too) from the loader's seeded
generator (`draw`; `apply` then transforms): a run repeats and a mid-epoch resume continues the
stream. The images are grouped by the operation they drew and each group is transformed at
once; the group sizes are read from the device once per operation slot.

Value range: augmentations run on float batches in [0, 1] (after resize, before normalisation).
torchvision defines posterize, solarize and equalize on uint8, and its auto-augment policies on
uint8 tensors, so these policies round the batch to 0-255 (exact unless a resize or an earlier
augmentation made values between the levels), run torchvision's uint8 arithmetic and divide by
255 again; AugMix mixes its chains in float and truncates to uint8 as torchvision does.

Everything in the three policies fits this design; what is not offered is torchvision's fill per
channel (`fill` is one value in [0, 1] for all channels) and interpolations other than nearest
and bilinear (torchvision has no others for tensors). `ops` (torchvision's operation names, e.g.
[ShearX, Rotate, Contrast]) keeps only those operations of a policy's list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cnntrain.data.augment import AUGMENTATIONS
from cnntrain.data.augment_ops import (
    AUGMIX_ALL_OPS,
    AUGMIX_OPS,
    OPERATIONS,
    RANDAUGMENT_OPS,
    TRIVIALAUGMENT_OPS,
    Op,
    Resampling,
    identity,
)
from cnntrain.data.mixing import dirichlet
from cnntrain.registry import did_you_mean, is_number, is_whole

AUGMIX_SEVERITY_BINS = 10  # torchvision's AugMix._PARAMETER_MAX: severity picks among its first bins


@dataclass
class PolicyDraw:
    """What a batch drew: `ops` indexes the policy's `ops` (len(ops): an identity that pads AugMix's
    shorter chains), `magnitudes` (float64, signs applied) has its shape: (slots, N) for RandAugment
    and TrivialAugment, (chains, depth, N) for AugMix, whose `weights` (N, 1 + chains) are the
    original image's share, then each chain's."""

    ops: torch.Tensor
    magnitudes: torch.Tensor
    weights: torch.Tensor | None = None


class Policy:
    """What the three policies share: the operation list, the resampling, and applying drawn slots."""

    def __init__(self, ops: Sequence[Op], interpolation: str, fill: float | None):
        self.ops = tuple(ops)
        self.operations = [OPERATIONS[op.name] for op in self.ops] + [identity]
        self.signed = torch.tensor([op.signed for op in self.ops] + [False])
        self.resampling = Resampling(interpolation, None if fill is None else 255.0 * fill)
        # Tables and sign masks already on a device, by what they were made for: copying them from the host every
        # batch would, on CUDA, wait for the queued work each time.
        self._on_device: dict[tuple, torch.Tensor] = {}

    def table(self, bins: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(len(ops) + 1, bins) magnitudes on `device`: torchvision's float32 tables, 0 for operations
        without, in float64 as torchvision's Python floats (float32 on mps, which has no float64)."""
        key = ("table", bins, height, width, str(device))
        if key not in self._on_device:
            rows = [op.magnitudes(bins, height, width) if op.magnitudes else torch.zeros(bins) for op in self.ops]
            table = torch.stack([row.double() for row in rows] + [torch.zeros(bins, dtype=torch.float64)])
            dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
            self._on_device[key] = table.to(device, dtype)
        return self._on_device[key]

    def signs(self, ops: torch.Tensor, magnitudes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each signed operation's magnitude negated with probability 1/2 (torchvision: rand() <= 0.5)."""
        flip = torch.rand(ops.shape, generator=generator, device=generator.device) <= 0.5
        key = ("signed", str(ops.device))
        if key not in self._on_device:
            self._on_device[key] = self.signed.to(ops.device)
        return torch.where(flip & self._on_device[key][ops], -magnitudes, magnitudes)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(len(images), *images.shape[-2:], generator))

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> PolicyDraw:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, draw: PolicyDraw) -> torch.Tensor:
        """A float [0, 1] batch transformed as `draw` says (through uint8, see the module's docstring)."""
        levels = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return self.apply_uint8(levels, draw).float().div_(255)

    def apply_uint8(self, images: torch.Tensor, draw: PolicyDraw) -> torch.Tensor:
        """The uint8 batch with each of the draw's slots applied in turn."""
        for ops, magnitudes in zip(draw.ops.to(images.device), draw.magnitudes.to(images.device)):
            images = self.apply_slot(images, ops, magnitudes)
        return images

    def apply_slot(self, images: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        """Image i transformed by operation ops[i] with magnitudes[i], each operation's images at once."""
        counts = torch.bincount(ops, minlength=len(self.operations)).tolist()  # the one read from the device
        order = torch.argsort(ops, stable=True)
        out = torch.empty_like(images)
        groups = zip(self.operations, images[order].split(counts), magnitudes[order].split(counts), order.split(counts))
        for operation, group, magnitude, where in groups:
            if len(where):
                out[where] = operation(group, magnitude, self.resampling)
        return out


class RandAugment(Policy):
    """num_ops operations per image, each drawn from the list, all at the magnitude bin `magnitude`."""

    def __init__(self, num_ops, magnitude, num_magnitude_bins, ops, interpolation, fill):
        super().__init__(ops, interpolation, fill)
        self.num_ops, self.magnitude, self.bins = num_ops, magnitude, num_magnitude_bins

    def draw(self, n, height, width, generator):
        ops = torch.randint(len(self.ops), (self.num_ops, n), generator=generator, device=generator.device)
        magnitudes = self.table(self.bins, height, width, ops.device)[:, self.magnitude][ops]
        return PolicyDraw(ops, self.signs(ops, magnitudes, generator))


class TrivialAugment(Policy):
    """One operation per image at a magnitude bin drawn per image (TrivialAugmentWide)."""

    def __init__(self, num_magnitude_bins, ops, interpolation, fill):
        super().__init__(ops, interpolation, fill)
        self.bins = num_magnitude_bins

    def draw(self, n, height, width, generator):
        ops = torch.randint(len(self.ops), (1, n), generator=generator, device=generator.device)
        bins = torch.randint(self.bins, (1, n), generator=generator, device=generator.device)
        magnitudes = self.table(self.bins, height, width, ops.device)[ops, bins]
        return PolicyDraw(ops, self.signs(ops, magnitudes, generator))


class AugMix(Policy):
    """mixture_width chains of 1-3 (or chain_depth) operations at magnitude bins below `severity`,
    mixed with the original image by Dirichlet(alpha) weights inside a Beta(alpha, alpha) share."""

    def __init__(self, severity, mixture_width, chain_depth, alpha, ops, interpolation, fill):
        super().__init__(ops, interpolation, fill)
        self.severity, self.width, self.depth, self.alpha = severity, mixture_width, chain_depth, alpha

    def draw(self, n, height, width, generator):
        device = generator.device
        share = dirichlet(torch.full((n, 2), float(self.alpha)), generator)  # (original, all chains)
        chains = dirichlet(torch.full((n, self.width), float(self.alpha)), generator) * share[:, 1:]
        slots = self.depth if self.depth > 0 else 3
        ops = torch.randint(len(self.ops), (self.width, slots, n), generator=generator, device=device)
        if self.depth <= 0:  # each chain of each image 1 to 3 operations long; identity pads the rest
            depth = torch.randint(1, 4, (self.width, 1, n), generator=generator, device=device)
            ops = torch.where(torch.arange(slots, device=device).view(1, -1, 1) < depth, ops, len(self.ops))
        bins = torch.randint(self.severity, ops.shape, generator=generator, device=device)
        magnitudes = self.table(AUGMIX_SEVERITY_BINS, height, width, device)[ops, bins]
        weights = torch.cat([share[:, :1], chains], 1)
        return PolicyDraw(ops, self.signs(ops, magnitudes, generator), weights)

    def apply_uint8(self, images, draw):
        weights = draw.weights.to(images.device).view(len(images), draw.weights.shape[1], 1, 1, 1)  # 0 images too
        mix = weights[:, 0] * images
        for i, (ops, magnitudes) in enumerate(zip(draw.ops.to(images.device), draw.magnitudes.to(images.device))):
            mix.add_(weights[:, i + 1] * super().apply_uint8(images, PolicyDraw(ops, magnitudes)))
        return mix.to(torch.uint8)  # truncated, as torchvision's AugMix returns uint8


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _chosen_ops(available: Sequence[Op], names: Sequence[str] | None) -> tuple[Op, ...]:
    """The policy's operations named in `ops` (case does not matter), all of them for None."""
    if names is None:
        return tuple(available)
    by_name = {op.name.lower(): op for op in available}
    valid = ", ".join(op.name for op in available)
    _require(
        isinstance(names, Sequence) and not isinstance(names, str) and len(names) > 0,
        f"ops must be a list of operation names such as [ShearX, Rotate], got {names!r}. Available: {valid}",
    )
    for name in names:
        _require(
            isinstance(name, str) and name.lower() in by_name,
            f"unknown operation {name!r} in ops.{did_you_mean(str(name), [op.name for op in available])} "
            f"Available: {valid}",
        )
    return tuple(op for op in available if op.name.lower() in {name.lower() for name in names})


def _check_resampling(interpolation: str, fill: float | None) -> None:
    _require(
        interpolation in ("nearest", "bilinear"),
        f"interpolation must be nearest or bilinear, got {interpolation!r}."
        + did_you_mean(str(interpolation), ["nearest", "bilinear"]),
    )
    _require(
        fill is None or (is_number(fill) and 0 <= fill <= 1),
        f"fill must be null (black, as torchvision's fill=None) or a pixel value from 0 to 1, got {fill!r}",
    )


# Upper bounds: each operation slot (num_ops, mixture_width x chain_depth) is a pass over the batch, and the
# magnitude tables have num_magnitude_bins columns per image; a typo's 100000 would take minutes per batch or all
# the memory. torchvision's defaults are 2 ops, 3 chains and 31 bins.
MOST_PASSES, MOST_BINS = 16, 1000


def _check_bins(num_magnitude_bins: int) -> None:
    _require(
        is_whole(num_magnitude_bins) and 2 <= num_magnitude_bins <= MOST_BINS,
        f"num_magnitude_bins must be a whole number from 2 to {MOST_BINS} (torchvision's default 31), "
        f"got {num_magnitude_bins!r}",
    )


def _check_passes(key: str, value: int, least: int) -> None:
    _require(
        is_whole(value) and least <= value <= MOST_PASSES,
        f"{key} must be a whole number from {least} to {MOST_PASSES} (each is a pass over every batch), got {value!r}",
    )


@AUGMENTATIONS.register("randaugment")
def randaugment(
    num_ops: int = 2,
    magnitude: int = 9,
    num_magnitude_bins: int = 31,
    interpolation: str = "nearest",
    fill: float | None = None,
    ops: Sequence[str] | None = None,
) -> RandAugment:
    """torchvision's RandAugment: num_ops random operations per image at magnitude bin `magnitude`."""
    _check_passes("num_ops", num_ops, 0)
    _check_bins(num_magnitude_bins)
    _require(
        is_whole(magnitude) and 0 <= magnitude < num_magnitude_bins,
        f"magnitude must be a whole number from 0 to {num_magnitude_bins - 1} (a bin of num_magnitude_bins="
        f"{num_magnitude_bins}: 0 the weakest, {num_magnitude_bins - 1} the strongest), got {magnitude!r}",
    )
    _check_resampling(interpolation, fill)
    return RandAugment(num_ops, magnitude, num_magnitude_bins, _chosen_ops(RANDAUGMENT_OPS, ops), interpolation, fill)


@AUGMENTATIONS.register("trivialaugment")
def trivialaugment(
    num_magnitude_bins: int = 31,
    interpolation: str = "nearest",
    fill: float | None = None,
    ops: Sequence[str] | None = None,
) -> TrivialAugment:
    """torchvision's TrivialAugmentWide: one random operation per image at a random magnitude bin."""
    _check_bins(num_magnitude_bins)
    _check_resampling(interpolation, fill)
    return TrivialAugment(num_magnitude_bins, _chosen_ops(TRIVIALAUGMENT_OPS, ops), interpolation, fill)


@AUGMENTATIONS.register("augmix")
def augmix(
    severity: int = 3,
    mixture_width: int = 3,
    chain_depth: int = -1,
    alpha: float = 1.0,
    all_ops: bool = True,
    interpolation: str = "bilinear",
    fill: float | None = None,
    ops: Sequence[str] | None = None,
) -> AugMix:
    """torchvision's AugMix: chains of random operations mixed with the original image."""
    _require(
        is_whole(severity) and 1 <= severity <= AUGMIX_SEVERITY_BINS,
        f"severity must be a whole number from 1 to {AUGMIX_SEVERITY_BINS}, got {severity!r}",
    )
    _check_passes("mixture_width", mixture_width, 1)
    _require(
        is_whole(chain_depth) and (chain_depth == -1 or 1 <= chain_depth <= MOST_PASSES),
        f"chain_depth must be -1 (1 to 3 operations, drawn per chain) or a whole number of operations from 1 to "
        f"{MOST_PASSES}, got {chain_depth!r}",
    )
    _require(is_number(alpha) and alpha > 0, f"alpha must be a number above 0, got {alpha!r}")
    _check_resampling(interpolation, fill)
    available = AUGMIX_ALL_OPS if all_ops else AUGMIX_OPS
    return AugMix(severity, mixture_width, chain_depth, alpha, _chosen_ops(available, ops), interpolation, fill)
