"""`model=torchvision model.arch=<name>`: any torchvision classifier, fitted to the dataset.

The builder makes the architecture only (weights come from `cnntrain.pretrained`,
which loads torchvision's or a file's into it): torchvision's network with its
classifier layer replaced for the dataset's classes and, for images that are not
RGB, its first convolution taking the dataset's channel count. `head=concat_pool`
puts the tutorials' transfer-learning head on networks that end in `avgpool` + `fc`
(the ResNet family, RegNet, GoogLeNet, Inception): adaptive average and max pooling
concatenated, then BN-Dropout-Linear(512)-ReLU-BN-Dropout-Linear(classes).

The replaced layers are the model's head (`HEAD_ATTRIBUTE` names it): what
`model.freeze=backbone` leaves trainable and what a weights file for other classes
does not fill.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from cnntrain.errors import ConfigError
from cnntrain.models.catalog import MODELS
from cnntrain.registry import did_you_mean

# The attribute naming a model's head (a dotted module name), set by builders that know it.
HEAD_ATTRIBUTE = "cnntrain_head"
IMAGENET_CLASSES = 1000
HEADS = ("linear", "concat_pool")
# Auxiliary classifiers only help training from scratch on ImageNet; they are left out here.
NO_AUX_LOGITS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


@functools.cache
def classifier_names() -> tuple[str, ...]:
    """Every torchvision image classifier (`torchvision.models.list_models` of the classification module)."""
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    names = classifier_names()
    if arch not in names:
        raise ConfigError(
            f"Unknown torchvision classifier '{arch}' (model.arch).{did_you_mean(str(arch), names)} "
            f"Available: {', '.join(names)}"
        )


class ConcatPool(nn.Module):
    """Adaptive average and max pooling to 1x1, concatenated along the channels (twice the features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([nn.functional.adaptive_avg_pool2d(x, 1), nn.functional.adaptive_max_pool2d(x, 1)], dim=1)


def concat_pool_head(features: int, num_classes: int, dropout: float, hidden: int = 512) -> nn.Sequential:
    """The tutorials' head on the concatenated pools (2 x `features` inputs)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.BatchNorm1d(2 * features),
        nn.Dropout(dropout),
        nn.Linear(2 * features, hidden),
        nn.ReLU(),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(get_module(model, parent), child, module)


def last_classifier_layer(model: nn.Module, outputs: int) -> str:
    """The name of the last Linear (or 1x1 Conv, SqueezeNet's) layer with `outputs` outputs: the classifier."""
    found = [
        name
        for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) and module.out_features == outputs)
        or (isinstance(module, nn.Conv2d) and module.out_channels == outputs)
    ]
    if not found:
        raise ConfigError(
            f"Cannot find the classifier layer of this torchvision model (no layer with {outputs} "
            f"outputs); use another model.arch."
        )
    return found[-1]


def replace_classifier(model: nn.Module, num_classes: int) -> str:
    """Swap the ImageNet classifier layer for a fresh one with `num_classes` outputs; returns its name."""
    name = last_classifier_layer(model, IMAGENET_CLASSES)
    old = get_module(model, name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(
            old.in_channels,
            num_classes,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=old.bias is not None,
        )
    set_module(model, name, new)
    return name


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The stem: the first 2-D convolution in the model's module order (every torchvision classifier's input layer)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ConfigError("This model has no 2-D convolution to take the images' channels.")


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Make the stem take `in_channels` channels instead of 3 (pretrained weights are adapted on loading)."""
    name, conv = first_conv(model)
    if conv.in_channels == in_channels:
        return
    set_module(
        model,
        name,
        nn.Conv2d(
            in_channels,
            conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        ),
    )


@MODELS.register("torchvision")
def torchvision_model(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    arch: str = "resnet18",
    head: str = "linear",
    head_dropout: float = 0.5,
    transform_input: bool = False,
) -> nn.Module:
    """torchvision's `arch`, its classifier replaced for `num_classes` and its stem for `in_channels`.

    `transform_input` (googlenet, inception_v3): convert ImageNet-normalised input to the [-1, 1]
    scale their ImageNet weights were trained on, as torchvision does when it loads those weights
    (set for you with model.weights=<torchvision name> on RGB data: pretrained.implied_settings).
    """
    import torchvision.models

    del input_size  # torchvision's classifiers pool globally; the input check in model_setup.py tells what is too small
    check_arch(arch)
    if head not in HEADS:
        raise ConfigError(
            f"Unknown model.head '{head}'.{did_you_mean(str(head), HEADS)} Use linear (replace the "
            f"classifier layer) or concat_pool (the tutorials' transfer-learning head)."
        )
    options = dict(NO_AUX_LOGITS.get(arch, {}))
    if arch in NO_AUX_LOGITS:
        options["transform_input"] = transform_input
    elif transform_input:
        raise ConfigError(f"model.transform_input is a setting of googlenet and inception_v3, not of {arch}.")
    model = torchvision.models.get_model(arch, weights=None, **options)
    if head == "concat_pool":
        fc = getattr(model, "fc", None)
        if not isinstance(fc, nn.Linear) or not hasattr(model, "avgpool"):
            raise ConfigError(
                f"model.head=concat_pool needs a network that ends in avgpool + fc (resnet*, "
                f"resnext*, wide_resnet*, regnet*, googlenet, inception_v3); {arch} does not. "
                f"Use model.head=linear."
            )
        model.avgpool = ConcatPool()
        model.fc = concat_pool_head(fc.in_features, num_classes, head_dropout)
        head_name = "fc"
    else:
        head_name = replace_classifier(model, num_classes)
    adapt_input_channels(model, in_channels)
    setattr(model, HEAD_ATTRIBUTE, head_name)
    return model
