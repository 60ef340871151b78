"""LeNet with batch normalization (the book's chapter on BatchNorm): the tutorial
LeNet's sigmoid + average-pool layout, with a BatchNorm after every conv and every
hidden linear, placed before the activation. Like the book's BNLeNet the first conv has
no padding, so a 28x28 image ends as 16x4x4 = 256 features (not LeNet's 400)."""

from __future__ import annotations

from torch import nn

from cnntrain.models.catalog import MODELS
from cnntrain.models.lenet import _feature_side


@MODELS.register("lenet_bn")
def lenet_bn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """BN-LeNet: Conv-BN-Sigmoid-AvgPool x2, then Linear-BN-Sigmoid x2, Linear."""
    # Clamped at 1 so a too-small input still builds and fails in the layer that
    # collapses, where `inspector.check_input_size` can name it.
    side = max(_feature_side(input_size, first_padding=0), 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5),
        nn.BatchNorm2d(6),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.BatchNorm2d(16),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.BatchNorm1d(120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.BatchNorm1d(84),
        nn.Sigmoid(),
        # No BatchNorm on the output: it would fight the loss over the logits' scale.
        nn.Linear(84, num_classes),
    )
