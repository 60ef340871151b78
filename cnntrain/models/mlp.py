"""Fully connected baselines: a 2-hidden-layer MLP and softmax regression."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnntrain.models.catalog import MODELS


@MODELS.register("mlp")
def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.25,
) -> nn.Module:
    """The tutorials' Fashion-MNIST MLP: 784-256-128-10, ReLU, dropout after each hidden layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * input_size * input_size
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("softmax")
def softmax_regression(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """Multinomial logistic regression: one linear layer on the flattened image."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, num_classes))
