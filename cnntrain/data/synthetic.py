"""A generated dataset for smoke runs and tests: seeded, tiny, and learnable.

Each class gets a random smooth prototype image; samples are the prototype plus
noise, so a model can reach high accuracy in a few steps and a broken training
loop shows up as chance-level accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnntrain.data.catalog import DATASETS, ImageData, ImageSet
from cnntrain.errors import ConfigError
from cnntrain.registry import is_number, is_whole


def _make_split(prototypes: torch.Tensor, size: int, noise: float, generator: torch.Generator) -> ImageSet:
    labels = torch.arange(size) % len(prototypes)
    labels = labels[torch.randperm(size, generator=generator)]
    images = prototypes[labels] + noise * torch.randn(prototypes[labels].shape, generator=generator)
    return ImageSet((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)


def _check_settings(**settings) -> None:
    """Each setting's type and range, named as data.<key>, before anything is generated."""
    rules = {
        "num_classes": ("a whole number >= 2", lambda v: is_whole(v) and v >= 2),
        "channels": ("1 (grey) or 3 (RGB)", lambda v: v in (1, 3) and is_whole(v)),
        "image_size": ("a whole number of pixels >= 4", lambda v: is_whole(v) and v >= 4),
        "train_size": ("a whole number >= 2", lambda v: is_whole(v) and v >= 2),
        "test_size": ("a whole number >= 1", lambda v: is_whole(v) and v >= 1),
        "noise": ("a number >= 0", lambda v: is_number(v) and v >= 0),
        "seed": ("a whole number", is_whole),
    }
    for key, value in settings.items():
        expected, is_valid = rules[key]
        if not is_valid(value):
            raise ConfigError(f"data.{key} must be {expected}, got {value!r}.")


@DATASETS.register("synthetic")
def synthetic(
    num_classes: int = 10,
    channels: int = 1,
    image_size: int = 28,
    train_size: int = 512,
    test_size: int = 256,
    noise: float = 0.25,
    seed: int = 0,
) -> ImageData:
    """Class prototypes (coarse random on/off blocks, upsampled) plus Gaussian noise."""
    _check_settings(
        num_classes=num_classes,
        channels=channels,
        image_size=image_size,
        train_size=train_size,
        test_size=test_size,
        noise=noise,
        seed=seed,
    )
    generator = torch.Generator().manual_seed(seed)
    # Binary coarse patterns: classes differ in whole blocks, easy to tell apart.
    coarse = (torch.rand(num_classes, channels, 4, 4, generator=generator) > 0.5).float()
    prototypes = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return ImageData(
        classes=[f"class_{i}" for i in range(num_classes)],
        train=_make_split(prototypes, train_size, noise, generator),
        test=_make_split(prototypes, test_size, noise, generator),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        source=f"generated with data.seed={seed}",
    )
