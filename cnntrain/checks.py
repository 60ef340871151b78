"""Checking a composed config: every name and setting, before any data is loaded.

`check_config` returns a frozen `CheckedConfig`: the trainer, data, model and fine-tuning
settings typed (settings.py, checked by setting_checks.py and trainer_checks.py), the registry entries with their
checked settings, the built augmentations, the logger settings and the user's callbacks. A
typo costs a second here, not a dataset parse; and build.py builds from exactly these
checked values, so nothing is checked twice, read twice or built from unchecked input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import DictConfig

from cnntrain.config import as_plain, settings_of
from cnntrain.data import DATASETS, LOADER_KEYS
from cnntrain.data.augment import Augmentation, augment_entries, build_augmentations
from cnntrain.errors import ConfigError
from cnntrain.loggers import check_logger
from cnntrain.optim import OPTIMIZER_KEYS, OPTIMIZERS, SCHEDULERS, check_optimizer_and_schedule
from cnntrain.registry import Component
from cnntrain.setting_checks import (
    check_batch_memory,
    check_data_settings,
    check_finetune,
    check_model_plan,
    check_seed,
)
from cnntrain.settings import DataSettings, FinetuneSettings, ModelPlan, TrainerSettings, setting
from cnntrain.trainer import Callback
from cnntrain.trainer_checks import check_counts, check_trainer_settings
from cnntrain.user_code import current_folder_on_path, import_user_modules


@dataclass(frozen=True)
class CheckedConfig:
    """A config whose names and settings have been checked, as typed settings: what `build_training`
    builds from. `cfg` is kept for what records the config (the run folder, checkpoints, the recipe
    line); nothing builds from it."""

    cfg: DictConfig
    seed: int
    device: str  # device.type: auto, cpu, cuda or mps (build.resolve_device)
    trainer: TrainerSettings
    data: DataSettings
    model: ModelPlan
    finetune: FinetuneSettings
    dataset: Component
    optimizer: Component
    no_decay_bias_norm: bool  # optimizer.no_decay_bias_norm (optim.parameter_groups)
    scheduler: Component
    augmentations: list[Augmentation]
    logger: list[Component]  # the checked loggers (loggers.check_logger), built by build_callbacks
    callbacks: list[Callback] = field(default_factory=list)  # the user's, from config and from Python

    @property
    def augment(self) -> list:
        """data.augment as plain values (saved with checkpoints, for prediction)."""
        return self.data.augment

    @property
    def mixup(self) -> dict[str, float] | None:
        """trainer.mixup's settings (data/mixing.py); None: no MixUp / CutMix."""
        return self.trainer.mixup

    @property
    def limits(self) -> dict[str, int | float]:
        """The quick-look settings in force (trainer.limit_*_batches, data.subset); {} for a full run."""
        subset = {"subset": self.data.subset} if self.data.subset is not None else {}
        return {**self.trainer.batch_limits, **subset}

    @property
    def eval_batch_size(self) -> int:
        return self.data.eval_batch_size


def check_config(cfg: DictConfig, callbacks: list[Callback] = ()) -> CheckedConfig:
    """Every name and setting checked, before any data is loaded (ConfigError naming the key otherwise).

    `callbacks` are user callbacks given from Python; those the config lists are created here.
    """
    import_user_modules(cfg.get("imports"))
    check_finite_numbers(cfg)
    augment = augment_entries(as_plain(setting(cfg.data, "data.augment")))
    components = dict(
        dataset=DATASETS.checked(cfg.data.name, settings_of(cfg.data, LOADER_KEYS)),
        optimizer=OPTIMIZERS.checked(cfg.optimizer.name, settings_of(cfg.optimizer, OPTIMIZER_KEYS)),
        no_decay_bias_norm=setting(cfg.optimizer, "optimizer.no_decay_bias_norm"),
        scheduler=SCHEDULERS.checked(cfg.scheduler.name, settings_of(cfg.scheduler)),
        augmentations=build_augmentations(augment),
        logger=check_logger(cfg.get("logger")),
    )
    counts = check_counts(cfg)
    trainer = check_trainer_settings(cfg, counts)
    seed = check_seed(cfg)
    data = check_data_settings(cfg.data, counts["data.batch_size"], list(augment))
    plan = check_model_plan(cfg.model, data.resize)
    finetune = check_finetune(cfg.get("finetune"), plan.freeze, trainer.epochs)
    check_batch_memory(data, plan)
    check_optimizer_and_schedule(components["optimizer"], components["scheduler"], trainer.epochs)
    user_callbacks = config_callbacks(cfg.get("callbacks")) + check_callbacks(callbacks, "callbacks=")
    return CheckedConfig(
        cfg=cfg,
        seed=seed,
        device=cfg.device.type,
        trainer=trainer,
        data=data,
        model=plan,
        finetune=finetune,
        callbacks=user_callbacks,
        **components,
    )


def check_finite_numbers(cfg: DictConfig) -> None:
    """inf and nan, in any setting of any section (Hydra and YAML read both as numbers), refused by name.

    No setting means anything with them: trainer.mixup.alpha=inf trained as without MixUp,
    optimizer.lr=nan as a NaN loss one step later. Checked here once, for the whole config, so that
    no setting (a builder's, an augmentation's, one added later) can let one through.
    """
    for key, value in _numbers(as_plain(cfg), ""):
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}: no setting takes inf or nan.")


def _numbers(node, key: str):
    """(dotted key, value) for every float in a plain config tree (lists as key[i])."""
    if isinstance(node, dict):
        for name, child in node.items():
            yield from _numbers(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            yield from _numbers(child, f"{key}[{i}]")
    elif isinstance(node, float):
        yield key, node


def config_callbacks(entries) -> list[Callback]:
    """The `callbacks` config list: each entry `{_target_: module.Class, arg: value, ...}`, created once."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    entries = as_plain(entries) or []
    if not isinstance(entries, list):
        raise ConfigError(f"callbacks must be a list of {{_target_: module.Class, ...}} entries, got {entries!r}.")
    created = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ConfigError(
                f"callbacks[{i}] must be a mapping with a _target_ key naming a Callback class, "
                f"got {entry!r}. Example: callbacks='[{{_target_: my_callbacks.Recorder}}]'."
            )
        try:
            with current_folder_on_path():  # a callback module beside the user's config, as for `imports`
                created.append(instantiate(entry))
        except InstantiationException as err:
            raise ConfigError(f"Cannot create callbacks[{i}] ({entry['_target_']}): {err}") from err
    return check_callbacks(created, "callbacks")


def check_callbacks(callbacks, where: str) -> list[Callback]:
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise ConfigError(
                f"{type(callback).__name__} ({where}) is not a cnntrain Callback: subclass "
                f"cnntrain.Callback and override the hooks you need."
            )
    return list(callbacks)
