"""LeNet-5: the tutorial variant (sigmoid, average pooling, 28x28 input) and the
classic one (ReLU, max pooling, 32x32 input, first conv unpadded)."""

from __future__ import annotations

from torch import nn

from cnntrain.models.catalog import MODELS


def _feature_side(input_size: int, first_padding: int) -> int:
    """Side length after conv5(pad) -> pool2 -> conv5 -> pool2."""
    side = input_size + 2 * first_padding - 4
    side //= 2
    side -= 4
    return side // 2


def _lenet(
    num_classes: int, in_channels: int, input_size: int, act: type[nn.Module], pool: type[nn.Module], first_padding: int
) -> nn.Sequential:
    # Clamped at 1 so a too-small input still builds and then fails in the layer that
    # collapses, where `inspector.check_input_size` can name it.
    side = max(_feature_side(input_size, first_padding), 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=first_padding),
        act(),
        pool(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        act(),
        pool(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        act(),
        nn.Linear(120, 84),
        act(),
        nn.Linear(84, num_classes),
    )


@MODELS.register("lenet")
def lenet(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """The book's LeNet: sigmoid activations and average pooling, 28x28 input."""
    return _lenet(num_classes, in_channels, input_size, nn.Sigmoid, nn.AvgPool2d, first_padding=2)


@MODELS.register("lenet_classic")
def lenet_classic(num_classes: int = 10, in_channels: int = 1, input_size: int = 32) -> nn.Module:
    """LeCun's LeNet-5 layout with modern ReLU + max pooling, 32x32 input."""
    return _lenet(num_classes, in_channels, input_size, nn.ReLU, nn.MaxPool2d, first_padding=0)
