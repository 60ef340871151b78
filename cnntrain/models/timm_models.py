"""`model=timm model.arch=<name>`: any model of timm (`timm.list_models()`), fitted to the dataset.

timm's `create_model(num_classes=, in_chans=)` sizes the classifier for the dataset's classes and
the stem for its channels; models that only take one input size (ViTs, fixed_input_size in timm's
pretrained config) are built for the run's input size. The builder makes the architecture only:
starting weights (a timm pretrained name or a file) come from `cnntrain.timm_weights` through
`cnntrain.pretrained`, as for `model=torchvision`.

The classifier layer is the model's head (`HEAD_ATTRIBUTE`): what `model.freeze=backbone` leaves
trainable and what weights for other classes do not fill. `TIMM_OPTIONS` keeps the keyword
arguments the model was created with, so that pretrained weights are loaded into the same model.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from cnntrain.errors import ConfigError
from cnntrain.models.catalog import MODELS
from cnntrain.models.torchvision_models import HEAD_ATTRIBUTE
from cnntrain.registry import did_you_mean

TIMM_OPTIONS = "cnntrain_timm_options"
INSTALL_HINT = "pip install 'cnntrain[timm]'"


def import_timm():
    """The timm package, or a one-line ConfigError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model=timm needs the timm package, which is not installed: {INSTALL_HINT}") from None
    return timm


@functools.cache
def timm_names() -> tuple[str, ...]:
    """Every architecture timm can build (without pretrained tags)."""
    return tuple(import_timm().list_models())


def check_arch(arch: str) -> None:
    names = timm_names()
    if arch in names:
        return
    base, _, tag = str(arch).partition(".")
    if tag and base in names:
        raise ConfigError(
            f"model.arch={arch} names weights too: give the architecture and the weights apart, "
            f"model.arch={base} model.weights={arch}."
        )
    if not str(arch).strip():
        raise ConfigError("model=timm needs model.arch=<a timm model>, e.g. model.arch=resnet18.")
    lower = str(arch).lower()  # timm's names are lower case; its list_models filter is case-sensitive
    raise ConfigError(
        f"Unknown timm model '{arch}' (model.arch).{did_you_mean(lower, names)} timm has {len(names)} "
        f"models; list them with python -c \"import timm; print(timm.list_models('{lower[:4]}*'))\"."
    )


def fixed_input_size(arch: str) -> bool:
    """Whether the model only takes the input size it was built for (ViTs: position embeddings)."""
    cfg = import_timm().models.get_pretrained_cfg(arch)
    return bool(cfg and cfg.fixed_input_size)


def classifier_name(model: nn.Module) -> str:
    """The dotted name of the model's classifier layer (timm's `get_classifier()`; the first of a pair)."""
    classifier = model.get_classifier()
    if isinstance(classifier, (tuple, list)):  # distilled models have two heads; the first is the classifier
        classifier = classifier[0]
    return next(name for name, module in model.named_modules() if module is classifier)


def check_patch_multiple(model: nn.Module, arch: str, img_size: int | None) -> None:
    """A fixed-size model that cuts images into patches (ViTs) takes sides that are a multiple of the patch.
    (The input-size check after the build would look for a working size with this very model, built for
    the wrong one, and name none that fits.)"""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if img_size is None or not patch or img_size % patch[0] == 0:
        return
    fitting = -(-img_size // patch[0]) * patch[0]
    raise ConfigError(
        f"model.arch={arch} cuts images into {patch[0]}-pixel patches, so its input size must be a multiple of "
        f"{patch[0]}, got {img_size}. Set data.resize={fitting} (or another multiple of {patch[0]})."
    )


def timm_options(arch: str, num_classes: int, in_channels: int, input_size: int, **settings: Any) -> dict[str, Any]:
    """The keyword arguments of `timm.create_model` for this build (None settings: the arch's default)."""
    options = {"num_classes": num_classes, "in_chans": in_channels}
    if fixed_input_size(arch):
        options["img_size"] = input_size
    options.update({key: value for key, value in settings.items() if value is not None})
    return options


@MODELS.register("timm")
def timm_model(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    arch: str = "resnet18",
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
) -> nn.Module:
    """timm's `arch` for `num_classes` classes and `in_channels` channels, freshly initialised.

    `drop_rate`: dropout before the classifier; `drop_path_rate`: stochastic depth (the models that
    have it: ViTs, ConvNeXts, EfficientNets, ...); None keeps the arch's default.
    """
    timm = import_timm()
    check_arch(arch)
    options = timm_options(
        arch, num_classes, in_channels, input_size, drop_rate=drop_rate, drop_path_rate=drop_path_rate
    )
    try:
        model = timm.create_model(arch, pretrained=False, **options)
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError) as err:
        shown = ", ".join(f"{key}={value}" for key, value in options.items())
        raise ConfigError(
            f"timm cannot build {arch} with {shown}: {str(err).strip() or type(err).__name__}. Check "
            f"model.drop_rate / model.drop_path_rate, or give another input size (data.resize)."
        ) from None
    check_patch_multiple(model, arch, options.get("img_size"))
    setattr(model, HEAD_ATTRIBUTE, classifier_name(model))
    setattr(model, TIMM_OPTIONS, options)
    return model
