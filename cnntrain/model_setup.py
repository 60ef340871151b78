"""The model of a run from its `ModelPlan` (settings.py): built for the data, its input size checked,
the starting weights loaded and frozen as asked, placed on the device with the speed switches.

build.py calls these in the order that fixes the random streams; evaluation.py places a run's
model with `place_model` too, so that its figures come out as the training's did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cnntrain.data import DatasetSpec
from cnntrain.distributed import Group
from cnntrain.errors import ConfigError
from cnntrain.finetune import freeze
from cnntrain.inspector import check_input_size
from cnntrain.models import build_model
from cnntrain.pretrained import implied_settings, load_weights
from cnntrain.settings import ModelPlan, TrainerSettings
from cnntrain.speed_switches import maybe_compile, resolve_precision, use_channels_last


def input_size_for(plan: ModelPlan, spec: DatasetSpec) -> int:
    """The plan's input size (settings.input_size) for this data."""
    size = plan.input_size(spec.image_size[0])
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"data.resize / model.input_size must be a positive whole number, got {size!r}.")
    return size


def model_recipe(plan: ModelPlan, spec: DatasetSpec) -> dict[str, Any]:
    """Everything needed to rebuild the model; saved in every checkpoint."""
    settings = dict(plan.settings)
    settings.update(implied_settings(plan.name, settings, plan.weights, spec.channels))
    return {
        "name": plan.name,
        "settings": settings,
        "num_classes": spec.num_classes,
        "in_channels": spec.channels,
        "input_size": input_size_for(plan, spec),
        "init": plan.init,
    }


def build_checked_model(plan: ModelPlan, spec: DatasetSpec) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model for this data, after checking that an image of the input size gets through it.

    Catches e.g. the 224-pixel AlexNet asked to take 28-pixel images, before training,
    with the layer whose output collapsed and the size to use instead. Fresh weights:
    `load_starting_weights` puts in model.weights.
    """
    recipe = model_recipe(plan, spec)
    size, native = recipe["input_size"], plan.native_size
    try:
        model = build_model(recipe)
    except (RuntimeError, ValueError) as err:  # e.g. a Linear sized from a collapsed feature map
        size_hint = f" at input size {size} (native size: {native})" if native and native != size else ""
        raise ConfigError(
            f"Cannot build model '{recipe['name']}'{size_hint}: {err}. "
            f"Check the model settings, or drop data.resize so it gets its native size."
        ) from err
    check_input_size(model, spec.channels, size, native_size=native)
    return model, recipe


def load_starting_weights(plan: ModelPlan, model: torch.nn.Module, read_weights: bool = True) -> str | None:
    """model.weights into `model`, then model.freeze applied; the line saying what was loaded and frozen."""
    lines = []
    if plan.weights is not None and read_weights:
        lines.append(load_weights(model, str(plan.weights), plan.name, plan.settings))
    if plan.freeze not in (None, "none", 0):
        total = sum(p.numel() for p in model.parameters())
        trainable = freeze(model, plan.freeze)
        lines.append(
            f"frozen: {'the backbone' if plan.freeze == 'backbone' else f'the first {plan.freeze} stages'} "
            f"({total - trainable:,} of {total:,} parameters; {trainable:,} train)"
        )
    return "; ".join(lines) or None


@dataclass
class PlacedModel:
    """A model on its device for a run: in the run's memory format, the callable that computes its logits,
    and the speed switches as they resolved there."""

    model: torch.nn.Module
    forward: Callable  # the model, or torch.compile(model)
    channels_last: bool
    autocast_dtype: torch.dtype | None
    notices: list[str]  # switches that could not be honoured here


def place_model(
    trainer: TrainerSettings, model: torch.nn.Module, device: torch.device, group: Group | None = None
) -> PlacedModel:
    """trainer.channels_last, trainer.precision and trainer.compile resolved for `device`, the model moved
    there: what training and the evaluation of a run's weights (evaluation.py) both run with."""
    channels_last, layout_notice = use_channels_last(trainer.channels_last, device, model)
    autocast_dtype, precision_notice = resolve_precision(trainer.precision, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    forward, compile_notice = forward_for(model, trainer, device, group or Group.single())
    return PlacedModel(
        model,
        forward,
        channels_last,
        autocast_dtype,
        [n for n in (layout_notice, precision_notice, compile_notice) if n],
    )


def forward_for(
    model: torch.nn.Module, trainer: TrainerSettings, device: torch.device, group: Group
) -> tuple[Callable, str | None]:
    """What computes the logits: DistributedDataParallel(model) in a distributed run (it averages the
    gradients of the parameters that train *now*: rebuilt after an unfreeze), compiled when asked."""
    if group.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return maybe_compile(model, trainer.compile, device)
