"""The trainer section's checks: trainer.epochs and the other counts (`check_counts`), every trainer.* setting
(`check_trainer_settings`), trainer.checkpoint, trainer.early_stopping, trainer.mixup and trainer.class_weights;
each refuses a bad value by name (ConfigError, through setting_checks.require) and the section comes back typed
(settings.TrainerSettings).

check_config (checks.py) calls them first; `check_trainer_settings` is also what a resume checks its
overrides with.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnntrain.checkpoint_policy import MODES, MONITORABLE, resolved_mode
from cnntrain.config import as_plain
from cnntrain.distributed import STRATEGIES
from cnntrain.errors import ConfigError
from cnntrain.evaluator import TTA_MODES
from cnntrain.registry import did_you_mean, is_count, is_number, is_whole
from cnntrain.setting_checks import is_bool, is_positive_number, require
from cnntrain.settings import FALLBACKS, CheckpointSettings, EarlyStopping, TrainerSettings, setting
from cnntrain.speed_switches import PRECISIONS
from cnntrain.time_plan import parse_time_limit

PROGRESS_MODES = ("auto", "bar", "plain", "none")
LIMIT_KEYS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")
MAX_COUNT = 2**31 - 1
MAX_THREADS = 1024  # more than any machine's cores: a bigger value is a slip (trainer.threads=20000)
COUNT_KEYS = ("trainer.epochs", "trainer.log_every", "data.batch_size", "trainer.accumulate_grad_batches")


def check_counts(cfg: DictConfig) -> dict[str, int]:
    """trainer.epochs, log_every, accumulate_grad_batches and data.batch_size, by dotted key."""
    counts = {}
    for key in COUNT_KEYS:
        # The upper bound: torch counts steps and batch sizes in 32-bit integers in places; beyond it a
        # value means nothing a run could do (trainer.epochs=99999999999999999999 trained on and on).
        value = OmegaConf.select(cfg, key, default=FALLBACKS[key]) if key in FALLBACKS else _needed(cfg, key)
        counts[key] = require(
            value, key, f"a positive whole number up to {MAX_COUNT:,}", lambda v: is_count(v) and v <= MAX_COUNT
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
        return require(setting(trainer, f"trainer.{key}"), f"trainer.{key}", expected, is_valid)

    progress = trainer.progress
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"trainer.progress must be one of {', '.join(PROGRESS_MODES)}, got '{progress}'.")
    label_smoothing = get("label_smoothing", "a number from 0 up to (not) 1", lambda v: is_number(v) and 0 <= v < 1)
    clip = get("grad_clip_norm", "null (off) or a positive number", lambda v: v is None or is_positive_number(v))
    ema = get(
        "ema",
        "null (off) or the decay of the weights' moving average, a number between 0 and 1 (both "
        "excluded) such as 0.999",
        lambda v: v is None or (is_number(v) and 0 < v < 1),
    )
    ema_warmup = get("ema_warmup", "true or false", is_bool)
    tta = get(
        "tta",
        f"null (off) or one of {', '.join(TTA_MODES)} (hflip: evaluate each image and its mirror "
        f"image, averaging their probabilities)",
        lambda v: v is None or v in TTA_MODES,
    )
    compile_ = get("compile", "true or false", is_bool)
    strategy = get("strategy", f"one of {', '.join(STRATEGIES)}", lambda v: v in STRATEGIES)
    sync_batchnorm = get("sync_batchnorm", "true or false", is_bool)
    channels_last = get("channels_last", "auto, true or false", lambda v: v in ("auto", True, False))
    precision = get("precision", "one of 32, bf16, fp16, auto", lambda v: str(v).lower() in PRECISIONS)
    threads = get(
        "threads",
        f"auto (the cores no other process is using, up to the ones this process may use) or a whole number of "
        f"threads up to {MAX_THREADS}",
        lambda v: v == "auto" or (is_count(v) and v <= MAX_THREADS),
    )
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
        lambda v: v is None or is_positive_number(v),
    )
    checkpoint = check_checkpoint(setting(trainer, "trainer.checkpoint"))
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
        threads=threads,
        batch_limits={key: value for key, value in limits.items() if value is not None},
        checkpoint_every_minutes=every,
        early_stopping=check_early_stopping(setting(trainer, "trainer.early_stopping"), checkpoint),
        mixup=mixup_settings(setting(trainer, "trainer.mixup")),
        time_limit=check_time_limit(cfg),
        checkpoint=checkpoint,
        deterministic=get("deterministic", "true or false", is_bool),
        class_weights=check_class_weights(setting(trainer, "trainer.class_weights")),
    )


def check_time_limit(cfg: DictConfig):
    """trainer.time_limit read (time_plan.parse_time_limit); refused beside finetune.unfreeze_at, whose second
    stage builds its own optimizer and schedule for the epochs after it (a plan it cannot know yet)."""
    limit = parse_time_limit(setting(cfg.trainer, "trainer.time_limit"))
    if limit is not None and setting(cfg.get("finetune"), "finetune.unfreeze_at") is not None:
        raise ConfigError(
            f"trainer.time_limit={limit.text} cannot be combined with finetune.unfreeze_at (the second stage's "
            f"schedule is built for a number of epochs, which the time limit decides while training). Use one "
            f"stage with a time limit, or finetune.unfreeze_at with trainer.epochs."
        )
    return limit


def check_class_weights(value) -> str | tuple[float, ...] | None:
    """trainer.class_weights: null, balanced or a list of positive numbers (its length is checked against the
    data's classes once they are known: class_balance.class_balance)."""
    value = as_plain(value)
    if isinstance(value, str) and value != "balanced":
        raise ConfigError(
            f"trainer.class_weights has no choice '{value}'.{did_you_mean(value, ['balanced'])} It takes null "
            f"(every class weighs the same), balanced (n_images / (n_classes x the class's images)) or a list of "
            f"positive numbers, one per class in the data's class order, such as [1, 1, 5]."
        )
    weights = require(
        value,
        "trainer.class_weights",
        "null, balanced or a list of positive numbers, one per class in the data's class order, such as [1, 1, 5]",
        lambda v: v is None or v == "balanced" or (isinstance(v, list) and v and all(map(is_positive_number, v))),
    )
    return tuple(float(weight) for weight in weights) if isinstance(weights, list) else weights


def check_early_stopping(section, checkpoint: CheckpointSettings | None = None) -> EarlyStopping:
    """trainer.early_stopping checked: patience (None: never), metric (None: the checkpoint's monitor, with its
    mode), min_delta."""
    checkpoint = checkpoint or CheckpointSettings()
    section = section or {}
    require(
        section, "trainer.early_stopping", "a section with patience, metric and min_delta", lambda v: hasattr(v, "get")
    )
    key = "trainer.early_stopping."
    metric = setting(section, key + "metric")
    if metric is not None:
        monitorable_metric(metric, key + "metric", "null (the checkpoint's trainer.checkpoint.monitor) or ")
    return EarlyStopping(
        patience=require(
            setting(section, key + "patience"),
            key + "patience",
            "null (off) or a positive whole number",
            lambda v: v is None or is_count(v),
        ),
        metric=metric or checkpoint.monitor,
        min_delta=require(
            setting(section, key + "min_delta"), key + "min_delta", "a number >= 0", lambda v: is_number(v) and v >= 0
        ),
        mode=resolved_mode(metric, "auto") if metric else checkpoint.mode,
    )


def check_checkpoint(section) -> CheckpointSettings:
    """trainer.checkpoint checked: the metric and mode that choose best.pt, save_top_k, every_n_epochs."""
    section = section or {}
    key = "trainer.checkpoint."
    require(
        section, key[:-1], "a section with monitor, mode, save_top_k and every_n_epochs", lambda v: hasattr(v, "get")
    )
    monitor = monitorable_metric(setting(section, key + "monitor"), key + "monitor")
    mode = setting(section, key + "mode")
    if mode not in MODES:
        raise ConfigError(
            f"trainer.checkpoint.mode must be one of {', '.join(MODES)} (auto: min for losses, max otherwise), "
            f"got {mode!r}.{did_you_mean(str(mode), MODES)}"
        )
    top_k = setting(section, key + "save_top_k")
    if top_k == 0 and not isinstance(top_k, bool):
        raise ConfigError(
            "trainer.checkpoint.save_top_k=0 would keep no best.pt, which the run's test, cnntrain-eval, "
            "cnntrain-predict and model.weights=<run> read. Use 1 (best.pt only); checkpoints/last.pt always holds "
            "the last epoch (cnntrain-eval checkpoint=last)."
        )
    require(
        top_k,
        key + "save_top_k",
        "1 (best.pt only), a whole number k > 1 (also the k best epochs' files) or -1 (every epoch's file)",
        lambda v: (is_whole(v) and v == -1) or (is_count(v) and v <= MAX_COUNT),
    )
    every = require(
        setting(section, key + "every_n_epochs"),
        key + "every_n_epochs",
        "null (off) or a positive whole number N (checkpoints/epoch=NNN.pt every N epochs)",
        lambda v: v is None or (is_count(v) and v <= MAX_COUNT),
    )
    return CheckpointSettings(monitor, resolved_mode(monitor, mode), top_k, every)


def monitorable_metric(name, key: str, also: str = "") -> str:
    """`name` if it is a per-epoch metric of metrics.csv (checkpoint_policy.MONITORABLE), else a ConfigError
    with the closest name and the choices (`also`: what else the key takes, in front of them)."""
    if name not in MONITORABLE:
        raise ConfigError(
            f"{key} must be {also}one of {', '.join(MONITORABLE)} (a per-epoch column of metrics.csv), got "
            f"{name!r}.{did_you_mean(str(name), MONITORABLE)}"
        )
    return name


# trainer.mixup's settings and their defaults (timm's Mixup: mixup_alpha, cutmix_alpha, prob, switch_prob).
MIXUP_DEFAULTS = {"alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5}


def mixup_settings(section) -> dict[str, float] | None:
    """trainer.mixup checked: its settings for a `data.mixing.BatchMixer`, or None when it mixes nothing
    (null, both alphas 0, or prob 0)."""
    section = as_plain(section)
    if section is None:
        return None
    require(
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
    require(
        settings["alpha"],
        "trainer.mixup.alpha",
        "a number >= 0 (MixUp's Beta(alpha, alpha); 0: no MixUp; 0.2 to 1 are usual)",
        lambda v: is_number(v) and v >= 0,
    )
    require(
        settings["cutmix_alpha"],
        "trainer.mixup.cutmix_alpha",
        "a number >= 0 (CutMix's Beta(alpha, alpha); 0: no CutMix; 1.0 is usual)",
        lambda v: is_number(v) and v >= 0,
    )
    require(
        settings["prob"],
        "trainer.mixup.prob",
        "a number from 0 to 1 (the share of training batches mixed)",
        lambda v: is_number(v) and 0 <= v <= 1,
    )
    require(
        settings["switch_prob"],
        "trainer.mixup.switch_prob",
        "a number from 0 to 1 (with alpha and "
        "cutmix_alpha both above 0: the share of the mixed batches that use CutMix)",
        lambda v: is_number(v) and 0 <= v <= 1,
    )
    if settings["alpha"] == settings["cutmix_alpha"] == 0 or settings["prob"] == 0:
        return None
    return {key: float(value) for key, value in settings.items()}


def _is_batch_limit(value) -> bool:
    return value is None or is_count(value) or (isinstance(value, float) and 0 < value <= 1)
