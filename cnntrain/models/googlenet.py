"""GoogLeNet as in the book: a stem, nine Inception blocks in three groups separated by
stride-2 max pools, global average pooling and one linear layer; 96x96 input (the
paper's 224 works too: the global pool makes the layers independent of the size).

An Inception block runs four branches side by side on the same input and concatenates
their outputs along channels: 1x1 conv; 1x1 reduce then 3x3; 1x1 reduce then 5x5;
3x3 max pool then 1x1. The 1x1 "reduce" convs keep the 3x3 and 5x5 convs cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from cnntrain.models.catalog import MODELS


class Inception(nn.Module):
    """Four parallel branches; output channels c1 + c2[1] + c3[1] + c4, same side as input."""

    def __init__(self, in_channels: int, c1: int, c2: Sequence[int], c3: Sequence[int], c4: int):
        super().__init__()
        # Every branch pads so all four keep the input's side and can be concatenated.
        self.branch1 = nn.Sequential(nn.Conv2d(in_channels, c1, kernel_size=1), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels, c2[0], kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.branch3 = nn.Sequential(
            nn.Conv2d(in_channels, c3[0], kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2),
            nn.ReLU(),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(in_channels, c4, kernel_size=1),
            nn.ReLU(),
        )
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], dim=1)


def _pool() -> nn.MaxPool2d:
    # Stride-2 pool with padding 1: halves the side (rounding up), 96 -> 48 -> 24 ...
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def _stage(in_channels: int, specs: Sequence[tuple]) -> tuple[list[nn.Module], int]:
    """Inception blocks from (c1, c2, c3, c4) specs, chained; returns them and the width."""
    blocks = []
    for c1, c2, c3, c4 in specs:
        block = Inception(in_channels, c1, c2, c3, c4)
        blocks.append(block)
        in_channels = block.out_channels
    return blocks, in_channels


@MODELS.register("googlenet")
def googlenet(num_classes: int = 10, in_channels: int = 1, input_size: int = 96) -> nn.Module:
    """The book's GoogLeNet (no auxiliary classifiers, no BatchNorm), for 96x96 input."""
    del input_size  # the global average pool makes the layers size-independent
    b1 = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
        nn.ReLU(),
        _pool(),
    )
    b2 = nn.Sequential(
        nn.Conv2d(64, 64, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(64, 192, kernel_size=3, padding=1),
        nn.ReLU(),
        _pool(),
    )
    # The paper's channel numbers (3a-3b, 4a-4e, 5a-5b): c1, (c2 reduce, c2), (c3 reduce, c3), c4.
    stage3, width = _stage(
        192,
        [
            (64, (96, 128), (16, 32), 32),
            (128, (128, 192), (32, 96), 64),
        ],
    )
    b3 = nn.Sequential(*stage3, _pool())
    stage4, width = _stage(
        width,
        [
            (192, (96, 208), (16, 48), 64),
            (160, (112, 224), (24, 64), 64),
            (128, (128, 256), (24, 64), 64),
            (112, (144, 288), (32, 64), 64),
            (256, (160, 320), (32, 128), 128),
        ],
    )
    b4 = nn.Sequential(*stage4, _pool())
    stage5, width = _stage(
        width,
        [
            (256, (160, 320), (32, 128), 128),
            (384, (192, 384), (48, 128), 128),
        ],
    )
    b5 = nn.Sequential(*stage5, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    # Named like the book's b1..b5, so layers read "b3.0 (Inception)" in the inspector.
    return nn.Sequential(
        OrderedDict(
            [
                ("b1", b1),
                ("b2", b2),
                ("b3", b3),
                ("b4", b4),
                ("b5", b5),
                ("fc", nn.Linear(width, num_classes)),
            ]
        )
    )
