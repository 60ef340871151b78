"""A small three-conv CNN for 32x32 CIFAR-10 images, as in the CIFAR tutorial:
16/32/64 channels, each conv followed by ReLU and a 2x2 max pool, then a 512-wide
hidden linear layer with dropout."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnntrain.models.catalog import MODELS


@MODELS.register("cifar_cnn")
def cifar_cnn(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, dropout: float = 0.3) -> nn.Module:
    """Conv(16)/Conv(32)/Conv(64) with pools, Dropout, Linear(1024, 512), Dropout, Linear."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    # Three halvings: 32 -> 4, so 64 * 4 * 4 = 1024 inputs to the first linear. Clamped
    # at 1 so a too-small input still builds and fails in the pool that collapses.
    side = max(input_size // 8, 1)
    classifier = nn.Sequential(
        # The tutorial drops out the flattened features as well as the hidden layer.
        nn.Dropout(dropout),
        nn.Linear(64 * side * side, 512),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(512, num_classes),
    )
    return nn.Sequential(
        OrderedDict(
            [
                ("features", features),
                ("flatten", nn.Flatten()),
                ("classifier", classifier),
            ]
        )
    )
