"""A small residual network sized for 28- and 32-pixel images (Fashion-MNIST, MNIST, CIFAR).

ResNet-18's 7x7 stride-2 stem and max-pool throw away three quarters of a 28-pixel
image before the first residual block; here a 3x3 stem keeps the full resolution, and
three stages of residual blocks (ResNet-18's block, cnntrain.models.resnet.Residual)
work at 28, 14 and 7 pixels, each stage after the first halving the side with a strided
block. Global average pooling and one linear layer end it, so any input from 8 pixels
works. `widths` sets the channels per stage and `blocks` the residual blocks per stage:
the default (32, 64, 128) x 1 has 308,074 parameters and costs 37 M multiply-adds per
28-pixel image (`cnntrain-info model=resnet_small`), about 90 times LeNet's and a ninth
of ResNet-18's at 96 pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from cnntrain.errors import ConfigError
from cnntrain.models.catalog import MODELS
from cnntrain.models.resnet import Residual


@MODELS.register("resnet_small")
def resnet_small(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    widths: Sequence[int] = (32, 64, 128),
    blocks: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """3x3 stem, one stage of `blocks` residual blocks per width (the first at full size), pool, linear."""
    del input_size  # the global average pool makes the layers size-independent
    widths = list(widths)
    if not widths or any(not isinstance(w, int) or w < 1 for w in widths) or blocks < 1:
        raise ConfigError(
            f"model.widths must be a list of positive whole numbers and model.blocks at least 1, "
            f"got widths={widths}, blocks={blocks}."
        )
    parts: list[tuple[str, nn.Module]] = [
        (
            "stem",
            nn.Sequential(
                nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
            ),
        )
    ]
    width = widths[0]
    for i, out_channels in enumerate(widths):
        stage = [
            Residual(width if b == 0 else out_channels, out_channels, stride=2 if i > 0 and b == 0 else 1)
            for b in range(blocks)
        ]
        parts.append((f"stage{i + 1}", nn.Sequential(*stage)))
        width = out_channels
    parts += [
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("dropout", nn.Dropout(dropout)),
        ("fc", nn.Linear(width, num_classes)),
    ]
    return nn.Sequential(OrderedDict(parts))
