"""VGG: repeated blocks of 3x3 convs followed by a 2x2 max pool, then a 4096-4096
classifier with dropout. `arch` lists the blocks as [num_convs, channels]; `ratio`
divides every conv width the way the book does to make VGG-11 trainable on small
hardware (`(n, c // ratio)` per block). As in the book the two hidden linears stay
4096 wide whatever the ratio.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from cnntrain.errors import ConfigError
from cnntrain.models.catalog import MODELS

# VGG-11 (configuration "A" of the paper): 8 convs + 3 linears.
VGG11_ARCH: tuple[tuple[int, int], ...] = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """`num_convs` x (3x3 conv, padding 1, ReLU) then a 2x2 max pool that halves the side."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def _scaled_arch(arch: Sequence[Sequence[int]], ratio: int) -> list[tuple[int, int]]:
    if ratio < 1:
        raise ConfigError(f"model.ratio must be a positive integer, got {ratio}.")
    blocks = []
    for block in arch:
        if len(block) != 2:
            raise ConfigError(f"model.arch entries must be [num_convs, channels] pairs, got {list(block)}.")
        num_convs, channels = int(block[0]), int(block[1])
        if num_convs < 1 or channels // ratio < 1:
            raise ConfigError(
                f"model.arch block {list(block)} with model.ratio={ratio} leaves no convs or "
                f"no channels; use a smaller ratio or wider blocks."
            )
        blocks.append((num_convs, channels // ratio))
    if not blocks:
        raise ConfigError("model.arch is empty; give at least one [num_convs, channels] block.")
    return blocks


@MODELS.register("vgg")
def vgg(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 224,
    arch: Sequence[Sequence[int]] = VGG11_ARCH,
    ratio: int = 1,
    dropout: float = 0.5,
) -> nn.Module:
    """VGG with any block list (default VGG-11) and channel `ratio` (the book trains 4)."""
    blocks = _scaled_arch(arch, ratio)
    features = []
    channels = in_channels
    for num_convs, out_channels in blocks:
        features.append(vgg_block(num_convs, channels, out_channels))
        channels = out_channels
    # Each block halves the side (floor), so 224 -> 7 after the five VGG-11 blocks.
    # Clamp at 1 so a too-small input still builds; the forward then fails in the pool
    # that collapses, and `inspector.check_input_size` reports it.
    side = max(input_size // 2 ** len(blocks), 1)
    classifier = nn.Sequential(
        nn.Linear(channels * side * side, 4096),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(4096, num_classes),
    )
    return nn.Sequential(
        OrderedDict(
            [
                ("features", nn.Sequential(*features)),
                ("flatten", nn.Flatten()),
                ("classifier", classifier),
            ]
        )
    )


@MODELS.register("vgg11")
def vgg11(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 224, ratio: int = 1, dropout: float = 0.5
) -> nn.Module:
    """The VGG-11 preset at full width (~129M parameters at 224); `ratio` still
    available to shrink it."""
    return vgg(num_classes, in_channels, input_size, arch=VGG11_ARCH, ratio=ratio, dropout=dropout)
