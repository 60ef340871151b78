"""A fast convolution-pooling network for small images, after airbench's CIFAR-10 network.

Keller Jordan's airbench (github.com/KellerJordan/cifar10-airbench) trains to 94% on
CIFAR-10 in seconds with a plain stack: a stem convolution, then blocks of
conv -> max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU, global max-pooling and a
bias-free linear layer scaled down (airbench's 1/9). Pooling right after each block's
first convolution means the second convolution of every block works at half the side: on
a 28-pixel image the default (stem 32, widths 32, 64, 128) costs 19.6 M multiply-adds, about
half of resnet_small's 37 M, and trains about twice as fast on a CPU at a similar parameter
count (297k). Sizes: any input from 8 pixels (three halvings, then the global pool).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from cnntrain.errors import ConfigError
from cnntrain.models.catalog import MODELS


class ScaledLinear(nn.Linear):
    """A linear layer whose output is multiplied by a constant: airbench's head divides the
    logits by 9, which keeps the early, large max-pooled features from saturating the softmax."""

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU: the second conv at half the side."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(out_channels),
        nn.GELU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.GELU(),
    )


@MODELS.register("airnet")
def airnet(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    widths: Sequence[int] = (32, 64, 128),
    stem: int = 32,
    logit_scale: float = 1 / 9,
) -> nn.Module:
    """Stem conv, one conv_block per width, global max-pool, a bias-free linear head x logit_scale."""
    del input_size  # the global pool makes the layers size-independent
    widths = list(widths)
    if not widths or any(not isinstance(w, int) or w < 1 for w in [stem, *widths]):
        raise ConfigError(
            f"model.widths must be a list of positive whole numbers and model.stem a positive whole "
            f"number, got widths={widths}, stem={stem}."
        )
    parts: list[tuple[str, nn.Module]] = [
        (
            "stem",
            nn.Sequential(
                nn.Conv2d(in_channels, stem, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.GELU()
            ),
        )
    ]
    width = stem
    for i, out_channels in enumerate(widths):
        parts.append((f"block{i + 1}", conv_block(width, out_channels)))
        width = out_channels
    parts += [
        ("pool", nn.AdaptiveMaxPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", ScaledLinear(width, num_classes, logit_scale)),
    ]
    return nn.Sequential(OrderedDict(parts))
