"""Checking a composed config: every name and setting, before any data is loaded.

`check_config` returns a `CheckedConfig`: the registry entries with their checked
settings, the built augmentations, the logger settings and the user's callbacks. A
typo costs a second here, not a dataset parse; and build.py builds from exactly
these checked values, so nothing is checked twice or built from unchecked input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnntrain.config import as_plain, settings_of
from cnntrain.data import DATASETS, LOADER_KEYS
from cnntrain.data.augment import Augmentation, build_augmentations
from cnntrain.distributed import STRATEGIES
from cnntrain.errors import ConfigError
from cnntrain.finetune import check_freeze
from cnntrain.loggers import check_logger
from cnntrain.models import MODEL_KEYS, MODELS
from cnntrain.models.init import check_init_scheme
from cnntrain.optim import OPTIMIZER_KEYS, OPTIMIZERS, SCHEDULERS
from cnntrain.registry import Component, did_you_mean, is_number, is_whole
from cnntrain.speed_switches import PRECISIONS
from cnntrain.trainer import Callback
from cnntrain.user_code import current_folder_on_path, import_user_modules

PROGRESS_MODES = ("auto", "bar", "plain", "none")
EARLY_STOPPING_METRICS = ("val_loss", "val_acc", "train_loss", "train_acc")
LIMIT_KEYS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
TTA_MODES = ("hflip",)  # trainer.tta (Trainer.evaluation_logits)
TTA_CHOICES = ("run", "none", *TTA_MODES)  # cnntrain-eval/-predict tta=: run (the run's trainer.tta), none, or a mode


def resolve_tta(choice: str, run_tta: str | None) -> str | None:
    """cnntrain-eval's and cnntrain-predict's tta= (run, none or a mode) -> the mode to use, None for none."""
    if choice not in TTA_CHOICES:
        raise ConfigError(f"Unknown test-time augmentation '{choice}' (tta=).{did_you_mean(choice, TTA_CHOICES)} Use "
                          f"tta=run (what the run used: its trainer.tta), tta=none (no augmentation) or tta=hflip "
                          f"(the mean of each image's and its mirror's probabilities).")
    return run_tta if choice == "run" else None if choice == "none" else choice


def tta_line(tta: str | None, run_tta: str | None) -> str | None:
    """What cnntrain-eval and cnntrain-predict say of the test-time augmentation they used (`tta`, resolved)
    against the run's trainer.tta; nothing when neither asks for one."""
    if tta != run_tta:
        return f"test-time augmentation: {tta or 'none'} (the run used trainer.tta={run_tta or 'null'})"
    return f"test-time augmentation: {tta} (the run's trainer.tta)" if tta else None


@dataclass
class CheckedConfig:
    """A config whose names and settings have been checked; what `build_training` builds from."""

    cfg: DictConfig
    dataset: Component
    optimizer: Component
    scheduler: Component
    augment: list  # data.augment as plain values (saved with checkpoints, for prediction)
    augmentations: list[Augmentation]
    logger: dict[str, Any]
    callbacks: list[Callback] = field(default_factory=list)  # the user's, from config and from Python
    mixup: dict[str, float] | None = None  # trainer.mixup's settings (data/mixing.py); None: no MixUp / CutMix

    @property
    def limits(self) -> dict[str, int | float]:
        """The quick-look settings in force (trainer.limit_*_batches, data.subset); {} for a full run."""
        trainer = self.cfg.trainer
        limits = {key: trainer.get(key) for key in LIMIT_KEYS}
        limits["subset"] = self.cfg.data.get("subset")
        return {key: value for key, value in limits.items() if value is not None}

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.data.get("eval_batch_size") or 2 * self.cfg.data.batch_size


def check_config(cfg: DictConfig, callbacks: list[Callback] = ()) -> CheckedConfig:
    """Every name and setting checked, before any data is loaded (ConfigError naming the key otherwise).

    `callbacks` are user callbacks given from Python; those the config lists are created here.
    """
    import_user_modules(cfg.get("imports"))
    check_finite_numbers(cfg)
    MODELS.check_settings(cfg.model.name, settings_of(cfg.model, MODEL_KEYS))
    check_init_scheme(cfg.model.get("init", "default"))
    check_starting_weights(cfg)
    augment = as_plain(cfg.data.get("augment")) or []
    checked = CheckedConfig(
        cfg=cfg,
        dataset=DATASETS.checked(cfg.data.name, settings_of(cfg.data, LOADER_KEYS)),
        optimizer=OPTIMIZERS.checked(cfg.optimizer.name, settings_of(cfg.optimizer, OPTIMIZER_KEYS)),
        scheduler=SCHEDULERS.checked(cfg.scheduler.name, settings_of(cfg.scheduler)),
        augment=list(augment),
        augmentations=build_augmentations(augment),
        logger=check_logger(cfg.get("logger")),
    )
    check_trainer_settings(cfg)
    checked.mixup = mixup_settings(cfg.trainer.get("mixup"))
    check_data_settings(cfg, checked.eval_batch_size)
    check_optimizer_and_schedule(checked)
    checked.callbacks = config_callbacks(cfg.get("callbacks")) + check_callbacks(callbacks, "callbacks=")
    return checked


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


MAX_COUNT = 2**31 - 1


def check_trainer_settings(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    for key in ("trainer.epochs", "trainer.log_every", "data.batch_size", "trainer.accumulate_grad_batches"):
        # The upper bound: torch counts steps and batch sizes in 32-bit integers in places; beyond it a
        # value means nothing a run could do (trainer.epochs=99999999999999999999 trained on and on).
        _require(OmegaConf.select(cfg, key, default=1), key, f"a positive whole number up to {MAX_COUNT:,}",
                 lambda v: _is_count(v) and v <= MAX_COUNT)
    if trainer.progress not in PROGRESS_MODES:
        raise ConfigError(f"trainer.progress must be one of {', '.join(PROGRESS_MODES)}, "
                          f"got '{trainer.progress}'.")
    _require(trainer.get("label_smoothing", 0.0), "trainer.label_smoothing", "a number from 0 up to (not) 1",
             lambda v: is_number(v) and 0 <= v < 1)
    _require(trainer.get("grad_clip_norm"), "trainer.grad_clip_norm", "null (off) or a positive number",
             lambda v: v is None or _is_positive_number(v))
    _require(trainer.get("ema"), "trainer.ema", "null (off) or the decay of the weights' moving average, a number "
             "between 0 and 1 (both excluded) such as 0.999", lambda v: v is None or (is_number(v) and 0 < v < 1))
    _require(trainer.get("ema_warmup", True), "trainer.ema_warmup", "true or false", lambda v: isinstance(v, bool))
    _require(trainer.get("tta"), "trainer.tta", f"null (off) or one of {', '.join(TTA_MODES)} (hflip: evaluate "
             f"each image and its mirror image, averaging their probabilities)", lambda v: v is None or v in TTA_MODES)
    _require(trainer.get("compile", False), "trainer.compile", "true or false", lambda v: isinstance(v, bool))
    _require(trainer.get("strategy", "auto"), "trainer.strategy", f"one of {', '.join(STRATEGIES)}",
             lambda v: v in STRATEGIES)
    _require(trainer.get("sync_batchnorm", False), "trainer.sync_batchnorm", "true or false",
             lambda v: isinstance(v, bool))
    _require(trainer.get("channels_last", "auto"), "trainer.channels_last", "auto, true or false",
             lambda v: v in ("auto", True, False))
    _require(trainer.get("precision", 32), "trainer.precision", "one of 32, bf16, fp16",
             lambda v: str(v).lower() in PRECISIONS)
    for key in LIMIT_KEYS:
        _require(trainer.get(key), f"trainer.{key}", "null (all batches), a whole number of batches >= 1, or a "
                 "fraction of them in (0, 1] such as 0.1", _is_batch_limit)
    _require(cfg.data.get("subset"), "data.subset", "null (all training images) or a whole number >= 1",
             lambda v: v is None or _is_count(v))
    _require(trainer.get("checkpoint_every_minutes"), "trainer.checkpoint_every_minutes",
             "null (only at epoch ends) or a number of minutes > 0", lambda v: v is None or _is_positive_number(v))
    stopping = trainer.get("early_stopping") or {}
    _require(stopping, "trainer.early_stopping", "a section with patience, metric and min_delta",
             lambda v: hasattr(v, "get"))
    _require(stopping.get("patience"), "trainer.early_stopping.patience", "null (off) or a positive whole number",
             lambda v: v is None or _is_count(v))
    _require(stopping.get("metric", "val_loss"), "trainer.early_stopping.metric",
             f"one of {', '.join(EARLY_STOPPING_METRICS)}", lambda v: v in EARLY_STOPPING_METRICS)
    _require(stopping.get("min_delta", 0.0), "trainer.early_stopping.min_delta", "a number >= 0",
             lambda v: is_number(v) and v >= 0)


# trainer.mixup's settings and their defaults (timm's Mixup: mixup_alpha, cutmix_alpha, prob, switch_prob).
MIXUP_DEFAULTS = {"alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5}


def mixup_settings(section) -> dict[str, float] | None:
    """trainer.mixup checked: its settings for a `data.mixing.BatchMixer`, or None when it mixes nothing
    (null, both alphas 0, or prob 0)."""
    section = as_plain(section)
    if section is None:
        return None
    _require(section, "trainer.mixup", "a section such as {alpha: 0.2, cutmix_alpha: 1.0, prob: 1.0, switch_prob: "
             "0.5} (or null: off)", lambda v: isinstance(v, dict))
    for key in section:
        if key not in MIXUP_DEFAULTS:
            raise ConfigError(f"trainer.mixup has no setting '{key}'.{did_you_mean(str(key), MIXUP_DEFAULTS)} "
                              f"It takes {', '.join(MIXUP_DEFAULTS)}.")
    settings = {**MIXUP_DEFAULTS, **section}
    _require(settings["alpha"], "trainer.mixup.alpha", "a number >= 0 (MixUp's Beta(alpha, alpha); 0: no MixUp; "
             "0.2 to 1 are usual)", lambda v: is_number(v) and v >= 0)
    _require(settings["cutmix_alpha"], "trainer.mixup.cutmix_alpha", "a number >= 0 (CutMix's Beta(alpha, alpha); "
             "0: no CutMix; 1.0 is usual)", lambda v: is_number(v) and v >= 0)
    _require(settings["prob"], "trainer.mixup.prob", "a number from 0 to 1 (the share of training batches mixed)",
             lambda v: is_number(v) and 0 <= v <= 1)
    _require(settings["switch_prob"], "trainer.mixup.switch_prob", "a number from 0 to 1 (with alpha and "
             "cutmix_alpha both above 0: the share of the mixed batches that use CutMix)",
             lambda v: is_number(v) and 0 <= v <= 1)
    if settings["alpha"] == settings["cutmix_alpha"] == 0 or settings["prob"] == 0:
        return None
    return {key: float(value) for key, value in settings.items()}


def check_starting_weights(cfg: DictConfig) -> None:
    """model.weights, model.freeze and the finetune section: their kinds, and that they fit together."""
    _require(cfg.model.get("weights"), "model.weights", "null, a torchvision weights name (DEFAULT), a weights "
             "file or a cnntrain run folder", lambda v: v is None or (isinstance(v, str) and v.strip() != ""))
    check_freeze(cfg.model.get("freeze"))
    finetune = cfg.get("finetune") or {}
    unfreeze_at = finetune.get("unfreeze_at")
    if unfreeze_at is None:
        return
    epochs = cfg.trainer.epochs
    _require(unfreeze_at, "finetune.unfreeze_at", f"null (one stage) or a whole number of epochs from 1 to "
             f"{epochs - 1} (trainer.epochs={epochs})", lambda v: _is_count(v) and v < epochs)
    _require(finetune.get("lr_scale", 0.01), "finetune.lr_scale", "a number > 0 (e.g. 0.01)", _is_positive_number)
    _require(finetune.get("keep_norm_statistics", False), "finetune.keep_norm_statistics", "true or false",
             lambda v: isinstance(v, bool))
    if cfg.model.get("freeze") in (None, "none", 0):
        raise ConfigError(f"finetune.unfreeze_at={unfreeze_at} unfreezes what model.freeze froze, but nothing is "
                          f"frozen. Add model.freeze=backbone (train the head first), or drop finetune.unfreeze_at.")


# One batch of input images above this is a typo, not a plan (float32, before any activation).
MAX_BATCH_INPUT_BYTES = 8 * 2**30


def check_data_settings(cfg: DictConfig, eval_batch_size: int) -> None:
    """The seed and the data settings every dataset shares, before any data loads."""
    _require(cfg.get("seed"), "seed", "a whole number from 0 to 2**63 - 1",
             lambda v: is_whole(v) and 0 <= v < 2**63)
    data = cfg.data
    _require(data.get("resize"), "data.resize", "null (the model's input size) or a whole number of pixels >= 1",
             lambda v: v is None or _is_count(v))
    _require(data.get("eval_batch_size"), "data.eval_batch_size", "null (2 x batch_size) or a whole number >= 1",
             lambda v: v is None or _is_count(v))
    size = data.get("resize") or cfg.model.get("input_size") or 0
    batch = max(data.batch_size, eval_batch_size)
    needed = batch * size * size * 4  # one grey float32 batch: a lower bound for any model
    if needed > MAX_BATCH_INPUT_BYTES:
        key = "data.resize" if data.get("resize") else "model.input_size"
        raise ConfigError(f"{key}={size} would need at least {needed / 2**30:,.0f} GiB for one batch of "
                          f"{batch} input images alone, before the model's activations. Use a size of a few "
                          f"hundred pixels at most.")


def check_optimizer_and_schedule(checked: CheckedConfig) -> None:
    """Build the optimizer and the schedule on one dummy parameter and take a step, so that torch's
    own checks (lr < 0, a string for lr, momentum < 0, a step_size of 0, ...) answer now, naming the settings."""
    import torch

    cfg = checked.cfg
    parameter = torch.zeros(1, requires_grad=True)
    try:
        optimizer = checked.optimizer.build(params=[parameter])
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        raise ConfigError(f"optimizer={checked.optimizer.name} cannot take its settings "
                          f"({_settings_text('optimizer', checked.optimizer.settings)}): {err}") from None
    for key, usual in (("momentum", 0.9), ("alpha", 0.99)):  # torch takes any value >= 0; from 1 up, the
        value = checked.optimizer.settings.get(key)       # updates grow without end (or never average)
        if is_number(value) and not 0 <= value < 1:
            raise ConfigError(f"optimizer.{key} must be a number from 0 up to (not) 1 ({usual} is usual), got {value}.")
    try:
        schedule = checked.scheduler.build(optimizer=optimizer, epochs=cfg.trainer.epochs, steps_per_epoch=1)
        lowest = _lowest_lr(optimizer, schedule, cfg.trainer.epochs)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, IndexError) as err:
        raise ConfigError(f"scheduler={checked.scheduler.name} cannot take its settings "
                          f"({_settings_text('scheduler', checked.scheduler.settings)}): "
                          f"{type(err).__name__}: {err}") from None
    if lowest < 0:
        raise ConfigError(f"scheduler={checked.scheduler.name} would set a negative learning rate ({lowest:.3g}) "
                          f"with its settings ({_settings_text('scheduler', checked.scheduler.settings)}) and "
                          f"optimizer.lr={optimizer.defaults['lr']}.")


def _lowest_lr(optimizer, schedule, epochs: int) -> float:
    """The lowest learning rate the schedule sets over a run of `epochs` one-step epochs (its shape
    is the same at any number of steps per epoch)."""
    lowest = optimizer.param_groups[0]["lr"]
    if schedule is None:
        return lowest
    for _ in range(min(epochs, 1000)):
        optimizer.step()
        schedule.scheduler.step(*([1.0] if schedule.monitor else []))
        lowest = min(lowest, optimizer.param_groups[0]["lr"])
    return lowest


def _settings_text(section: str, settings: dict[str, Any]) -> str:
    return ", ".join(f"{section}.{key}={value!r}" for key, value in settings.items()) or "none"


def _is_count(value) -> bool:
    return is_whole(value) and value >= 1


def _is_positive_number(value) -> bool:
    return is_number(value) and value > 0


def _is_batch_limit(value) -> bool:
    return value is None or _is_count(value) or (isinstance(value, float) and 0 < value <= 1)


def _require(value, key: str, expected: str, is_valid) -> None:
    if not is_valid(value):
        raise ConfigError(f"{key} must be {expected}, got {value!r}.")


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
            raise ConfigError(f"callbacks[{i}] must be a mapping with a _target_ key naming a Callback class, "
                              f"got {entry!r}. Example: callbacks='[{{_target_: my_callbacks.Recorder}}]'.")
        try:
            with current_folder_on_path():  # a callback module beside the user's config, as for `imports`
                created.append(instantiate(entry))
        except InstantiationException as err:
            raise ConfigError(f"Cannot create callbacks[{i}] ({entry['_target_']}): {err}") from err
    return check_callbacks(created, "callbacks")


def check_callbacks(callbacks, where: str) -> list[Callback]:
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise ConfigError(f"{type(callback).__name__} ({where}) is not a cnntrain Callback: subclass "
                              f"cnntrain.Callback and override the hooks you need.")
    return list(callbacks)
