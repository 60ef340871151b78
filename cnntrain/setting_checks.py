"""The checks of the trainer, data, model and fine-tuning settings: each reads its keys from the raw
config once, refuses a bad value by name (ConfigError) and returns them typed (settings.py).

check_config (checks.py) calls them in order; `check_trainer_settings` is also what a resume
checks its overrides with.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnntrain.config import as_plain, settings_of
from cnntrain.distributed import STRATEGIES
from cnntrain.errors import ConfigError
from cnntrain.evaluator import TTA_MODES
from cnntrain.finetune import check_freeze
from cnntrain.models import MODEL_KEYS, MODELS
from cnntrain.models.init import check_init_scheme
from cnntrain.pretrained import weights_preprocessing
from cnntrain.registry import did_you_mean, is_number, is_whole
from cnntrain.settings import (
    FALLBACKS,
    DataSettings,
    EarlyStopping,
    FinetuneSettings,
    ModelPlan,
    TrainerSettings,
    setting,
)
from cnntrain.speed_switches import PRECISIONS

PROGRESS_MODES = ("auto", "bar", "plain", "none")
EARLY_STOPPING_METRICS = ("val_loss", "val_acc", "train_loss", "train_acc")
LIMIT_KEYS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
MAX_COUNT = 2**31 - 1
COUNT_KEYS = ("trainer.epochs", "trainer.log_every", "data.batch_size", "trainer.accumulate_grad_batches")


def check_counts(cfg: DictConfig) -> dict[str, int]:
    """trainer.epochs, log_every, accumulate_grad_batches and data.batch_size, by dotted key."""
    counts = {}
    for key in COUNT_KEYS:
        # The upper bound: torch counts steps and batch sizes in 32-bit integers in places; beyond it a
        # value means nothing a run could do (trainer.epochs=99999999999999999999 trained on and on).
        value = OmegaConf.select(cfg, key, default=FALLBACKS[key]) if key in FALLBACKS else _needed(cfg, key)
        counts[key] = _require(
            value, key, f"a positive whole number up to {MAX_COUNT:,}", lambda v: _is_count(v) and v <= MAX_COUNT
        )
    return counts


def _needed(cfg: DictConfig, key: str):
    """A key every config has (no fallback): one removed with ~ raises omegaconf's error naming it, which
    run.py answers ("The config has no usable ...")."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_trainer_settings(cfg: DictConfig, counts: dict[str, int] | None = None) -> TrainerSettings:
    """The trainer section checked and typed (`counts`: check_counts's, when already checked)."""
    counts = counts or check_counts(cfg)
    trainer = cfg.trainer

    def get(key: str, expected: str, is_valid):
        return _require(setting(trainer, f"trainer.{key}"), f"trainer.{key}", expected, is_valid)

    progress = trainer.progress
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"trainer.progress must be one of {', '.join(PROGRESS_MODES)}, got '{progress}'.")
    label_smoothing = get("label_smoothing", "a number from 0 up to (not) 1", lambda v: is_number(v) and 0 <= v < 1)
    clip = get("grad_clip_norm", "null (off) or a positive number", lambda v: v is None or _is_positive_number(v))
    ema = get(
        "ema",
        "null (off) or the decay of the weights' moving average, a number between 0 and 1 (both "
        "excluded) such as 0.999",
        lambda v: v is None or (is_number(v) and 0 < v < 1),
    )
    ema_warmup = get("ema_warmup", "true or false", _is_bool)
    tta = get(
        "tta",
        f"null (off) or one of {', '.join(TTA_MODES)} (hflip: evaluate each image and its mirror "
        f"image, averaging their probabilities)",
        lambda v: v is None or v in TTA_MODES,
    )
    compile_ = get("compile", "true or false", _is_bool)
    strategy = get("strategy", f"one of {', '.join(STRATEGIES)}", lambda v: v in STRATEGIES)
    sync_batchnorm = get("sync_batchnorm", "true or false", _is_bool)
    channels_last = get("channels_last", "auto, true or false", lambda v: v in ("auto", True, False))
    precision = get("precision", "one of 32, bf16, fp16", lambda v: str(v).lower() in PRECISIONS)
    limits = {
        key: get(
            key,
            "null (all batches), a whole number of batches >= 1, or a fraction of them in (0, 1] such as 0.1",
            _is_batch_limit,
        )
        for key in LIMIT_KEYS
    }
    every = get(
        "checkpoint_every_minutes",
        "null (only at epoch ends) or a number of minutes > 0",
        lambda v: v is None or _is_positive_number(v),
    )
    return TrainerSettings(
        epochs=counts["trainer.epochs"],
        log_every=counts["trainer.log_every"],
        accumulate_grad_batches=counts["trainer.accumulate_grad_batches"],
        progress=progress,
        label_smoothing=float(label_smoothing),
        grad_clip_norm=clip,
        ema=ema,
        ema_warmup=ema_warmup,
        tta=tta,
        compile=compile_,
        strategy=strategy,
        sync_batchnorm=sync_batchnorm,
        channels_last=channels_last,
        precision=precision,
        batch_limits={key: value for key, value in limits.items() if value is not None},
        checkpoint_every_minutes=every,
        early_stopping=check_early_stopping(setting(trainer, "trainer.early_stopping")),
        mixup=mixup_settings(setting(trainer, "trainer.mixup")),
    )


def check_early_stopping(section) -> EarlyStopping:
    """trainer.early_stopping checked: patience (None: never), metric, min_delta."""
    section = section or {}
    _require(
        section, "trainer.early_stopping", "a section with patience, metric and min_delta", lambda v: hasattr(v, "get")
    )
    key = "trainer.early_stopping."
    return EarlyStopping(
        patience=_require(
            setting(section, key + "patience"),
            key + "patience",
            "null (off) or a positive whole number",
            lambda v: v is None or _is_count(v),
        ),
        metric=_require(
            setting(section, key + "metric"),
            key + "metric",
            f"one of {', '.join(EARLY_STOPPING_METRICS)}",
            lambda v: v in EARLY_STOPPING_METRICS,
        ),
        min_delta=_require(
            setting(section, key + "min_delta"), key + "min_delta", "a number >= 0", lambda v: is_number(v) and v >= 0
        ),
    )


# trainer.mixup's settings and their defaults (timm's Mixup: mixup_alpha, cutmix_alpha, prob, switch_prob).
MIXUP_DEFAULTS = {"alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5}


def mixup_settings(section) -> dict[str, float] | None:
    """trainer.mixup checked: its settings for a `data.mixing.BatchMixer`, or None when it mixes nothing
    (null, both alphas 0, or prob 0)."""
    section = as_plain(section)
    if section is None:
        return None
    _require(
        section,
        "trainer.mixup",
        "a section such as {alpha: 0.2, cutmix_alpha: 1.0, prob: 1.0, switch_prob: 0.5} (or null: off)",
        lambda v: isinstance(v, dict),
    )
    for key in section:
        if key not in MIXUP_DEFAULTS:
            raise ConfigError(
                f"trainer.mixup has no setting '{key}'.{did_you_mean(str(key), MIXUP_DEFAULTS)} "
                f"It takes {', '.join(MIXUP_DEFAULTS)}."
            )
    settings = {**MIXUP_DEFAULTS, **section}
    _require(
        settings["alpha"],
        "trainer.mixup.alpha",
        "a number >= 0 (MixUp's Beta(alpha, alpha); 0: no MixUp; 0.2 to 1 are usual)",
        lambda v: is_number(v) and v >= 0,
    )
    _require(
        settings["cutmix_alpha"],
        "trainer.mixup.cutmix_alpha",
        "a number >= 0 (CutMix's Beta(alpha, alpha); 0: no CutMix; 1.0 is usual)",
        lambda v: is_number(v) and v >= 0,
    )
    _require(
        settings["prob"],
        "trainer.mixup.prob",
        "a number from 0 to 1 (the share of training batches mixed)",
        lambda v: is_number(v) and 0 <= v <= 1,
    )
    _require(
        settings["switch_prob"],
        "trainer.mixup.switch_prob",
        "a number from 0 to 1 (with alpha and "
        "cutmix_alpha both above 0: the share of the mixed batches that use CutMix)",
        lambda v: is_number(v) and 0 <= v <= 1,
    )
    if settings["alpha"] == settings["cutmix_alpha"] == 0 or settings["prob"] == 0:
        return None
    return {key: float(value) for key, value in settings.items()}


def check_model_plan(model: DictConfig, resize: int | None) -> ModelPlan:
    """The model section checked: builder settings, init, model.weights (torchvision weights' preprocessing
    resolved here, once) and model.freeze; with data.resize, the plan the build follows."""
    settings = settings_of(model, MODEL_KEYS)
    MODELS.check_settings(model.name, settings)
    init = setting(model, "model.init")
    check_init_scheme(init)
    weights = _require(
        setting(model, "model.weights"),
        "model.weights",
        "null, a torchvision weights name (DEFAULT), a weights file or a cnntrain run folder",
        lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
    )
    freeze = setting(model, "model.freeze")
    check_freeze(freeze)
    return ModelPlan(
        name=model.name,
        settings=settings,
        init=init,
        native_size=setting(model, "model.input_size"),
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
    _require(
        unfreeze_at,
        "finetune.unfreeze_at",
        f"null (one stage) or a whole number of epochs from 1 to {epochs - 1} (trainer.epochs={epochs})",
        lambda v: _is_count(v) and v < epochs,
    )
    lr_scale = _require(
        setting(section, "finetune.lr_scale"), "finetune.lr_scale", "a number > 0 (e.g. 0.01)", _is_positive_number
    )
    keep = _require(
        setting(section, "finetune.keep_norm_statistics"), "finetune.keep_norm_statistics", "true or false", _is_bool
    )
    if freeze in (None, "none", 0):
        raise ConfigError(
            f"finetune.unfreeze_at={unfreeze_at} unfreezes what model.freeze froze, but nothing is "
            f"frozen. Add model.freeze=backbone (train the head first), or drop finetune.unfreeze_at."
        )
    return FinetuneSettings(unfreeze_at, lr_scale, keep)


def check_seed(cfg: DictConfig) -> int:
    return _require(
        cfg.get("seed"), "seed", "a whole number from 0 to 2**63 - 1", lambda v: is_whole(v) and 0 <= v < 2**63
    )


def check_data_settings(data: DictConfig, batch_size: int, augment: list) -> DataSettings:
    """The data settings every dataset shares, before any data loads (`batch_size`: checked by check_counts)."""
    resize = _require(
        setting(data, "data.resize"),
        "data.resize",
        "null (the model's input size) or a whole number of pixels >= 1",
        lambda v: v is None or _is_count(v),
    )
    eval_batch_size = _require(
        setting(data, "data.eval_batch_size"),
        "data.eval_batch_size",
        "null (2 x batch_size) or a whole number >= 1",
        lambda v: v is None or _is_count(v),
    )
    subset = _require(
        setting(data, "data.subset"),
        "data.subset",
        "null (all training images) or a whole number >= 1",
        lambda v: v is None or _is_count(v),
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
    )


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


def _is_count(value) -> bool:
    return is_whole(value) and value >= 1


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def _is_positive_number(value) -> bool:
    return is_number(value) and value > 0


def _is_batch_limit(value) -> bool:
    return value is None or _is_count(value) or (isinstance(value, float) and 0 < value <= 1)


def _require(value, key: str, expected: str, is_valid):
    """`value` when `is_valid(value)`; ConfigError naming `key` and what it takes otherwise."""
    if not is_valid(value):
        raise ConfigError(f"{key} must be {expected}, got {value!r}.")
    return value
