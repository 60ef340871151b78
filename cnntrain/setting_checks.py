"""The checks of the data, model-plan, seed and fine-tuning settings, and the one way every setting check
refuses a value (`require`, with the predicates `is_count`, `is_bool`, `is_positive_number`): each check reads
its keys from the raw config once, refuses a bad value by name (ConfigError) and returns them typed
(settings.py). The trainer section's checks are in trainer_checks.py.

check_config (checks.py) calls them in order, after the trainer's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from omegaconf import DictConfig

from cnntrain.config import as_plain, settings_of
from cnntrain.data.sampling import SAMPLERS
from cnntrain.errors import ConfigError
from cnntrain.finetune import check_freeze
from cnntrain.models import MODEL_KEYS, MODELS
from cnntrain.models.init import check_init_scheme
from cnntrain.pretrained import weights_preprocessing
from cnntrain.registry import did_you_mean, is_count, is_number, is_whole
from cnntrain.settings import DataSettings, FinetuneSettings, ModelPlan, setting


def require(value, key: str, expected: str, is_valid):
    """`value` when `is_valid(value)`; ConfigError naming `key` and what it takes otherwise."""
    if not is_valid(value):
        raise ConfigError(f"{key} must be {expected}, got {value!r}.")
    return value


def is_bool(value) -> bool:
    return isinstance(value, bool)


def is_positive_number(value) -> bool:
    return is_number(value) and value > 0


def check_model_plan(model: DictConfig, resize: int | None) -> ModelPlan:
    """The model section checked: builder settings, init, model.weights (torchvision or timm weights' preprocessing
    resolved here, once) and model.freeze; with data.resize, the plan the build follows."""
    settings = settings_of(model, MODEL_KEYS)
    MODELS.check_settings(model.name, settings)
    init = setting(model, "model.init")
    check_init_scheme(init)
    weights = require(
        setting(model, "model.weights"),
        "model.weights",
        "null, a torchvision or timm weights name (DEFAULT), a weights file or a cnntrain run folder",
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
    )
    freeze = setting(model, "model.freeze")
    check_freeze(freeze)
    return ModelPlan(
        name=model.name,
        settings=settings,
        init=init,
        native_size=require(
            setting(model, "model.input_size"),
            "model.input_size",
            "null (the data's size) or a whole number of pixels >= 1",
            lambda v: v is None or is_count(v),
        ),
        resize=resize,
        weights=weights,
        freeze=freeze,
        weights_prep=weights_preprocessing(model.name, settings, weights),
    )


def check_finetune(section, freeze: Any, epochs: int) -> FinetuneSettings:
    """The finetune section checked against model.freeze and trainer.epochs."""
    unfreeze_at = setting(section, "finetune.unfreeze_at")
    if unfreeze_at is None:
        return FinetuneSettings(
            None, setting(section, "finetune.lr_scale"), setting(section, "finetune.keep_norm_statistics")
        )
    require(
        unfreeze_at,
        "finetune.unfreeze_at",
        f"null (one stage) or a whole number of epochs from 1 to {epochs - 1} (trainer.epochs={epochs})",
        lambda v: is_count(v) and v < epochs,
    )
    lr_scale = require(
        setting(section, "finetune.lr_scale"), "finetune.lr_scale", "a number > 0 (e.g. 0.01)", is_positive_number
    )
    keep = require(
        setting(section, "finetune.keep_norm_statistics"), "finetune.keep_norm_statistics", "true or false", is_bool
    )
    if freeze in (None, "none", 0):
        raise ConfigError(
            f"finetune.unfreeze_at={unfreeze_at} unfreezes what model.freeze froze, but nothing is "
            f"frozen. Add model.freeze=backbone (train the head first), or drop finetune.unfreeze_at."
        )
    return FinetuneSettings(unfreeze_at, lr_scale, keep)


def check_seed(cfg: DictConfig) -> int:
    return require(
        cfg.get("seed"), "seed", "a whole number from 0 to 2**63 - 1", lambda v: is_whole(v) and 0 <= v < 2**63
    )


def check_data_settings(data: DictConfig, batch_size: int, augment: list) -> DataSettings:
    """The data settings every dataset shares, before any data loads (`batch_size`: checked by
    trainer_checks.check_counts)."""
    resize = require(
        setting(data, "data.resize"),
        "data.resize",
        "null (the model's input size) or a whole number of pixels >= 1",
        lambda v: v is None or is_count(v),
    )
    eval_batch_size = require(
        setting(data, "data.eval_batch_size"),
        "data.eval_batch_size",
        "null (2 x batch_size) or a whole number >= 1",
        lambda v: v is None or is_count(v),
    )
    subset = require(
        setting(data, "data.subset"),
        "data.subset",
        "null (all training images) or a whole number >= 1",
        lambda v: v is None or is_count(v),
    )
    check_label_file_settings(data)
    sampler = setting(data, "data.sampler")
    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(
            f"data.sampler must be null (each epoch a seeded shuffle of the training images) or balanced (each "
            f"epoch as many draws, with replacement, every class equally likely), got {sampler!r}."
            f"{did_you_mean(str(sampler), SAMPLERS)}"
        )
    return DataSettings(
        name=data.name,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size or 2 * batch_size,
        val_fraction=data.val_fraction,
        resize=resize,
        normalize=setting(data, "data.normalize"),
        subset=subset,
        augment=augment,
        sampler=sampler,
    )


def check_label_file_settings(data: DictConfig) -> None:
    """data.labels and data.classes (data=csv, data=image_folder), where the dataset has them: a file name,
    and null or a list of distinct class names. Whether the file exists is the dataset's to say."""
    require(data.get("labels"), "data.labels", "null or the path of a label file", lambda v: v is None or is_text(v))
    classes = as_plain(data.get("classes"))
    require(
        classes,
        "data.classes",
        "null (the labels in the label file, sorted) or a list of at least 2 class names, e.g. [cat, dog]",
        lambda v: v is None or (isinstance(v, list) and len(v) >= 2 and all(is_text(n) or is_whole(n) for n in v)),
    )
    repeated = sorted(name for name, count in Counter(map(str, classes or ())).items() if count > 1)
    if repeated:
        raise ConfigError(f"data.classes lists {', '.join(repeated)} more than once; list each class once.")


def is_text(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


# One batch of input images above this is a typo, not a plan (float32, before any activation).
MAX_BATCH_INPUT_BYTES = 8 * 2**30


def check_batch_memory(data: DataSettings, plan: ModelPlan) -> None:
    """One batch of input images at the plan's input size must fit in memory, with room to spare."""
    size = plan.input_size() or 0
    batch = max(data.batch_size, data.eval_batch_size)
    needed = batch * size * size * 4  # one grey float32 batch: a lower bound for any model
    if needed > MAX_BATCH_INPUT_BYTES:
        raise ConfigError(
            f"{plan.size_key}={size} would need at least {needed / 2**30:,.0f} GiB for one batch of "
            f"{batch} input images alone, before the model's activations. Use a size of a few "
            f"hundred pixels at most."
        )
