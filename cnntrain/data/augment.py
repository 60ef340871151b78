"""Batched data augmentation on the training device (the `data.augment` list).

Each entry of `data.augment` names an augmentation and its settings, e.g.

    augment:
      - {name: random_crop, padding: 4}
      - {name: hflip}

They run on a whole float batch in [0, 1] (after resize, before normalisation), each
image drawing its own random parameters from the loader's seeded generator, so a run
is repeatable and evaluation batches, which get no augmentation, stay deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cnntrain.errors import ConfigError
from cnntrain.registry import Registry, is_number

AUGMENTATIONS = Registry("augmentation", "data.augment[].name")

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=generator.device) * (high - low) + low).to(device)


def _chance(n: int, p: float, generator: torch.Generator, device) -> torch.Tensor:
    """(n, 1, 1, 1) boolean mask: which images of the batch get the transform."""
    return (torch.rand(n, generator=generator, device=generator.device) < p).to(device).view(n, 1, 1, 1)


@AUGMENTATIONS.register("random_crop")
def random_crop(padding: int = 4, fill: float = 0.0) -> Augmentation:
    """Pad each side by `padding` pixels, then crop back to the original size at a random place."""

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        padded = F.pad(x, (padding,) * 4, value=fill)
        top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(x.device)
        left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=generator.device).to(x.device)
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]

    return apply


@AUGMENTATIONS.register("hflip")
def hflip(p: float = 0.5) -> Augmentation:
    """Mirror left-right with probability p."""
    return lambda x, g: torch.where(_chance(len(x), p, g, x.device), x.flip(-1), x)


@AUGMENTATIONS.register("vflip")
def vflip(p: float = 0.5) -> Augmentation:
    """Mirror top-bottom with probability p."""
    return lambda x, g: torch.where(_chance(len(x), p, g, x.device), x.flip(-2), x)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply per-image 2x3 affine matrices (output -> input coordinates), zeros outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@AUGMENTATIONS.register("rotation")
def rotation(degrees: float = 20.0) -> Augmentation:
    """Rotate each image by a random angle in [-degrees, degrees] (corners filled with 0)."""

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        angle = _uniform(len(x), -degrees, degrees, generator, x.device) * math.pi / 180
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return _warp(x, theta)

    return apply


@AUGMENTATIONS.register("random_resized_crop")
def random_resized_crop(scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Augmentation:
    """Crop a random area fraction `scale` with aspect `ratio`, resized back to the batch size.

    Unlike torchvision's version, the box is clipped to the image instead of retried.
    """

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(x)
        area = _uniform(n, scale[0], scale[1], generator, x.device)
        log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, x.device)
        aspect = log_ratio.exp()
        width = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the image side
        height = (area / aspect).sqrt().clamp(max=1.0)
        # Centre anywhere the box still fits, in [-1, 1] grid units.
        cx = (_uniform(n, -1, 1, generator, x.device)) * (1 - width)
        cy = (_uniform(n, -1, 1, generator, x.device)) * (1 - height)
        zero = torch.zeros_like(width)
        theta = torch.stack([torch.stack([width, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1)
        return _warp(x, theta)

    return apply


@AUGMENTATIONS.register("color_jitter")
def color_jitter(brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0) -> Augmentation:
    """Scale brightness, contrast and (3-channel images) saturation by random factors in [1-v, 1+v]."""

    def factors(n, amount, generator, device):
        return _uniform(n, max(0.0, 1 - amount), 1 + amount, generator, device).view(n, 1, 1, 1)

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(x)
        if brightness:
            x = x * factors(n, brightness, generator, x.device)
        if contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factors(n, contrast, generator, x.device) + mean
        if saturation and x.shape[1] == 3:
            grey = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = (x - grey) * factors(n, saturation, generator, x.device) + grey
        return x.clamp(0, 1)

    return apply


# Tries per image for a rectangle that fits (torchvision's RandomErasing makes 10).
ERASING_TRIES = 10


@AUGMENTATIONS.register("random_erasing")
def random_erasing(
    p: float = 0.5, scale: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3), value: float = 0.0
) -> Augmentation:
    """With probability p, fill a random rectangle of the image with `value` (Zhong et al., Random Erasing).

    torchvision.transforms.v2.RandomErasing's semantics and defaults, batched and drawing from the
    loader's generator (torchvision's takes no generator): the rectangle covers a share `scale` of
    the image, with a height/width ratio drawn log-uniformly from `ratio`, sides rounded to whole
    pixels, at a random place where it fits; of 10 tries per image the first that fits is erased
    (none fits: the image stays as it is). It runs before normalisation, so `value` is a pixel value
    in [0, 1] (0: black), one for every channel (torchvision's per-channel values and 'random' noise
    are not offered).
    """
    if not (is_number(p) and 0 <= p <= 1):
        raise ValueError(f"p must be a number from 0 to 1, got {p!r}")
    if len(scale) != 2 or not all(is_number(v) for v in scale) or not 0 <= scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be [min, max] with 0 <= min <= max <= 1 (shares of the image), got {scale!r}")
    if len(ratio) != 2 or not all(is_number(v) for v in ratio) or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be [min, max] with 0 < min <= max (height / width), got {ratio!r}")
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        area = _uniform(n * ERASING_TRIES, scale[0], scale[1], generator, x.device).view(n, ERASING_TRIES) * (h * w)
        aspect = _uniform(n * ERASING_TRIES, *log_ratio, generator, x.device).view(n, ERASING_TRIES).exp()
        heights, widths = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
        fits = (heights < h) & (widths < w)
        first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits
        height, width = heights.gather(1, first), widths.gather(1, first)  # (n, 1)
        # A whole number of pixels from 0 to (side - erased side), as torch.randint(0, side - erased + 1) draws.
        top = torch.minimum((_uniform(n, 0, 1, generator, x.device)[:, None] * (h - height + 1)).floor(), h - height)
        left = torch.minimum((_uniform(n, 0, 1, generator, x.device)[:, None] * (w - width + 1)).floor(), w - width)
        erase = _chance(n, p, generator, x.device).view(n, 1) & fits.any(dim=1, keepdim=True)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= top) & (rows < top + height) & erase  # (n, h)
        in_cols = (cols >= left) & (cols < left + width)  # (n, w)
        return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], value)

    return apply


def augment_entries(entries: Any) -> list:
    """data.augment as a list of entries: a bare entry (data.augment=hflip) is one augmentation, not a
    list of letters; None is none."""
    if isinstance(entries, (str, dict)):
        return [entries]
    return list(entries or [])


def build_augmentations(entries: Sequence[Any] | None) -> list[Augmentation]:
    """Build the `data.augment` list; each entry is {name: ..., setting: value, ...}."""
    built = []
    for i, entry in enumerate(augment_entries(entries)):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(
                f"data.augment[{i}] must be a name or a mapping with a 'name' key, got {entry!r}. "
                f"Example: data.augment='[{{name: random_crop, padding: 4}}, hflip]'. "
                f"Available: {', '.join(AUGMENTATIONS.names())}"
            )
        settings = {k: v for k, v in entry.items() if k != "name"}
        try:
            augmentation = AUGMENTATIONS.build(entry["name"], settings)
        except ValueError as err:  # a setting its builder refuses (random_erasing's scale above 1, ...)
            raise ConfigError(f"data.augment[{i}] ({entry}) cannot run with these settings: {err}") from None
        _try_on_a_sample(augmentation, f"data.augment[{i}] ({entry})")
        built.append(augmentation)
    return built


def _try_on_a_sample(augmentation: Augmentation, where: str) -> None:
    """Run once on a tiny batch, so that a bad setting (a negative padding, a word where a number
    goes) is reported now and named, not as a torch error in the first training step."""
    sample = torch.rand(2, 3, 8, 8)
    try:
        augmentation(sample, torch.Generator().manual_seed(0))
    except (ValueError, TypeError, RuntimeError, IndexError, ZeroDivisionError) as err:
        raise ConfigError(f"{where} cannot run with these settings: {err}") from None
