"""ResNet-18 as in the book: a 7x7 stem, four stages of two residual blocks
(64/128/256/512 channels), global average pooling and one linear layer; 96x96 input
(any size the stem accepts works: the global pool makes the layers size-independent).

Two settings pick between the book's block and torchvision's; they differ only in
parameters that do not change what the network can compute:
- `conv_bias`: the book's convs carry a bias; torchvision's do not, because the
  BatchNorm right after each conv subtracts the mean and adds its own shift, which
  makes a conv bias redundant.
- `shortcut_bn`: torchvision follows the 1x1 projection shortcut with a BatchNorm; the
  book uses the bare 1x1 conv.
The defaults (`conv_bias=False, shortcut_bn=True`) give exactly torchvision's
resnet18 parameter count (11,689,512 at 3 channels / 1000 classes);
`conv_bias=True, shortcut_bn=False` is the book's network.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnntrain.models.catalog import MODELS


class Residual(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input (projected by a 1x1 conv when the
    stride or the width changes), then ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, conv_bias: bool = False, shortcut_bn: bool = True
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=conv_bias)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # The sum needs matching shapes: a strided 1x1 conv resizes and rewidens the input.
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=conv_bias)
            ]
            if shortcut_bn:
                layers.append(nn.BatchNorm2d(out_channels))
            self.shortcut = nn.Sequential(*layers)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


def resnet_stage(
    in_channels: int, out_channels: int, num_blocks: int, first_stage: bool, conv_bias: bool, shortcut_bn: bool
) -> nn.Sequential:
    """`num_blocks` residual blocks; every stage but the first halves the side in its first block."""
    blocks = []
    for i in range(num_blocks):
        stride = 2 if i == 0 and not first_stage else 1
        blocks.append(Residual(in_channels, out_channels, stride, conv_bias, shortcut_bn))
        in_channels = out_channels
    return nn.Sequential(*blocks)


@MODELS.register("resnet18")
def resnet18(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 96, conv_bias: bool = False, shortcut_bn: bool = True
) -> nn.Module:
    """ResNet-18 (torchvision-equal parameters by default; see the module docstring)."""
    del input_size  # the global average pool makes the layers size-independent
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=conv_bias),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    # Named like the book's b1..b5 (b1 = stem, b2..b5 = the four stages).
    parts: list[tuple[str, nn.Module]] = [("b1", stem)]
    width = 64
    for i, out_channels in enumerate((64, 128, 256, 512)):
        parts.append(
            (
                f"b{i + 2}",
                resnet_stage(width, out_channels, 2, first_stage=i == 0, conv_bias=conv_bias, shortcut_bn=shortcut_bn),
            )
        )
        width = out_channels
    parts += [
        ("pool", nn.AdaptiveAvgPool2d((1, 1))),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(width, num_classes)),
    ]
    return nn.Sequential(OrderedDict(parts))
