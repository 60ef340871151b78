"""Network in Network: each block is a spatial conv followed by two 1x1 convs (a tiny
per-pixel MLP); there is no fully connected layer at all. The last block outputs one
channel per class and a global average pool turns each channel into a logit, so the
model works at any input size the conv stack accepts.
"""

from __future__ import annotations

from torch import nn

from cnntrain.models.catalog import MODELS


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    """Conv(k, s, p) + ReLU, then two 1x1 Conv + ReLU mixing channels at each pixel."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1),
        nn.ReLU(),
    )


@MODELS.register("nin")
def nin(num_classes: int = 10, in_channels: int = 1, input_size: int = 224, dropout: float = 0.5) -> nn.Module:
    """The book's NiN for 224x224 input: AlexNet-like widths 96/256/384, then a
    num_classes-wide block and global average pooling. `input_size` only documents the
    native size: the global pool makes the layers independent of it."""
    del input_size
    return nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nin_block(96, 256, kernel_size=5, stride=1, padding=2),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nin_block(256, 384, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Dropout(dropout),
        # One output channel per class; note the final ReLU inside the block (as in the
        # book), so logits are non-negative before averaging.
        nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
    )
