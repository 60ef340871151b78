"""AlexNet: the book's variant (96/256/384/384/256 channels, 224x224 input), a lighter
one without the second 4096-wide layer, and the torchvision layout.

All three are `Sequential(features, flatten, classifier)` so layer names read like
torchvision's ("features.5", "classifier.1") in the inspector and in error messages.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cnntrain.models.catalog import MODELS


def conv_out(side: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a conv or pool layer (floor mode), the formula PyTorch uses."""
    return (side + 2 * padding - kernel) // stride + 1


def _tutorial_features(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        # A wide 11x11 window with stride 4 shrinks the 224 image fast, as in the paper.
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _tutorial_side(input_size: int) -> int:
    """Side of the last feature map of `_tutorial_features` (5 at 224, hence 256*5*5 = 6400)."""
    side = conv_out(input_size, 11, stride=4, padding=1)
    side = conv_out(side, 3, stride=2)
    side = conv_out(side, 3, stride=2)  # the 5x5 and 3x3 convs keep the size (padding)
    side = conv_out(side, 3, stride=2)
    # An input too small for the conv stack makes this <= 0. Clamp so the model still
    # builds: the forward then fails inside `features`, where
    # `inspector.check_input_size` can name the layer and suggest a size that works.
    return max(side, 1)


def _assemble(features: nn.Module, classifier: nn.Sequential, pool: nn.Module | None = None) -> nn.Sequential:
    parts: list[tuple[str, nn.Module]] = [("features", features)]
    if pool is not None:
        parts.append(("avgpool", pool))
    parts += [("flatten", nn.Flatten()), ("classifier", classifier)]
    return nn.Sequential(OrderedDict(parts))


def _tutorial_alexnet(
    num_classes: int, in_channels: int, input_size: int, dropout: float, hidden_layers: int
) -> nn.Module:
    """The book's conv stack, then `hidden_layers` 4096-wide Linear-ReLU-Dropout blocks, then the output."""
    width = 256 * _tutorial_side(input_size) ** 2
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, 4096), nn.ReLU(), nn.Dropout(dropout)]
        width = 4096
    classifier = nn.Sequential(*layers, nn.Linear(width, num_classes))
    return _assemble(_tutorial_features(in_channels), classifier)


@MODELS.register("alexnet")
def alexnet(num_classes: int = 10, in_channels: int = 1, input_size: int = 224, dropout: float = 0.5) -> nn.Module:
    """The book's AlexNet: 5 convs, then 4096-4096-classes linears with dropout."""
    return _tutorial_alexnet(num_classes, in_channels, input_size, dropout, hidden_layers=2)


@MODELS.register("alexnet_small")
def alexnet_small(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 224, dropout: float = 0.5
) -> nn.Module:
    """The book's AlexNet without the second 4096-wide layer (~17M fewer parameters)."""
    return _tutorial_alexnet(num_classes, in_channels, input_size, dropout, hidden_layers=1)


@MODELS.register("alexnet_tv")
def alexnet_tv(num_classes: int = 10, in_channels: int = 3, input_size: int = 224, dropout: float = 0.5) -> nn.Module:
    """torchvision's AlexNet layout: 64/192/384/256/256 channels, adaptive 6x6 pooling,
    dropout *before* each hidden linear. Same parameter count as torchvision's at 3
    channels / 1000 classes. `input_size` is accepted for the common builder signature
    only: the adaptive pool makes the classifier independent of it."""
    del input_size
    features = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    classifier = nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    # Adaptive pooling fixes the classifier input at 256x6x6 whatever the image size
    # (down to the smallest size the conv stack accepts, 63).
    return _assemble(features, classifier, pool=nn.AdaptiveAvgPool2d((6, 6)))
