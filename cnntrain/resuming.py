"""`cnntrain resume=<run folder>`: continue a run in its own folder from checkpoints/last.pt.

The run's config comes from its last checkpoint (what it really trained with). Only
settings that do not change what is being trained may be overridden: more epochs,
the display, the device, where the data lives. The model, data, optimizer and
schedule stay, so the resumed run ends exactly where the uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cnntrain.checkpoint import RunCheckpoint, load_checkpoint
from cnntrain.checks import check_trainer_settings
from cnntrain.user_code import confirmed_imports, import_user_modules
from cnntrain.config import BUILDER_SECTIONS, REGISTRY_GROUPS, dotted_keys, group_file, unknown_key_message
from cnntrain.errors import ConfigError
from cnntrain.interruptions import resume_command
from cnntrain.run import RunResult, run
from cnntrain.run_folder import RunFolder, not_a_run_message
from cnntrain.trainer import EpochMetrics

# Dotted prefixes a resume may change.
MAY_CHANGE = ("trainer.epochs", "trainer.progress", "trainer.log_every", "trainer.early_stopping",
              "trainer.checkpoint_every_minutes", "device", "logger", "callbacks", "data.root", "data.download",
              "data.workers", "data.cache_limit_mb", "data.eval_batch_size")
# Group choices (model=alexnet) name a config file; on resume they are compared with the run's `name`.
GROUP_KEYS = {**{group: f"{group}.name" for group in REGISTRY_GROUPS}, "device": "device.type"}
# Group choices that, where they may change, take their group's whole file (logger=tensorboard).
WHOLE_FILE_GROUPS = ("logger", "data")
# Two spellings of one setting (data.path is image_folder's old name of data.root): the one given now
# replaces the other saved in the run, else the run's old spelling and the new one would name two folders.
SAME_SETTING = {"data.root": "data.path", "data.path": "data.root"}
# Schedules laid out over the run's length: more epochs would run past their end.
LENGTH_BOUND_SCHEDULERS = ("cosine", "onecycle")


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """(config to continue with, last checkpoint) for the run in `run_dir`."""
    if not run_dir.is_dir():
        raise ConfigError(f"Cannot resume: {run_dir} is not a folder. Give a run folder, "
                          f"e.g. resume=outputs/2026-11-23/10-00-00-000000_lenet_fashion_mnist.")
    last = RunFolder(run_dir).last_checkpoint
    if not RunFolder(run_dir).holds_run():  # outputs/<date>: say which runs it holds
        raise ConfigError(not_a_run_message(run_dir, "cnntrain resume={}"))
    if not last.is_file():
        raise ConfigError(f"Cannot resume {run_dir}: it has no checkpoints/last.pt, so no epoch of it finished. "
                          f"Start the run again instead.")
    checkpoint = load_checkpoint(last)
    if "history" not in checkpoint:
        raise ConfigError(f"Cannot resume {run_dir}: its checkpoint was written by an older cnntrain without "
                          f"the state a resume needs. Start the run again.")
    cfg = OmegaConf.create(checkpoint["config"])
    # A run folder is data, never code: callbacks the run was started with are not created from
    # it, and its modules are imported only when the user names them (imports=...) too.
    cfg.callbacks = []
    given, overrides = imports_override(overrides)
    cfg.imports = confirmed_imports(cfg.get("imports"), given, run_dir)
    saved_epochs = cfg.trainer.epochs
    for override in overrides:
        apply_override(cfg, override, run_dir)
    check_trainer_settings(cfg)
    if cfg.trainer.epochs != saved_epochs and cfg.scheduler.name in LENGTH_BOUND_SCHEDULERS:
        raise ConfigError(f"Cannot change trainer.epochs on resume: scheduler={cfg.scheduler.name} spreads its "
                          f"learning-rate curve over the run's {saved_epochs} epochs. "
                          f"Start a new run for a longer one.")
    return cfg, checkpoint


def imports_override(overrides: list[str]) -> tuple[str | None, list[str]]:
    """(the value of an imports=... override, or None; the other overrides)."""
    given, others = None, []
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if key == "imports" and sep:
            given = value
        else:
            others.append(override)
    return given, others


def apply_override(cfg: DictConfig, override: str, run_dir: Path, may_change: tuple[str, ...] = MAY_CHANGE) -> None:
    """Apply `key=value` to the resumed config if it may change; one that keeps the value is fine.

    `may_change`: the dotted prefixes that may change (a resume's; cnntrain-eval's are data and device).
    """
    key, sep, raw = override.lstrip("+").partition("=")
    if not sep:
        raise ConfigError(f"Unexpected argument '{override}' with resume=: give key=value overrides.")
    if key in WHOLE_FILE_GROUPS and key in may_change:  # a choice that may change: its whole file, as Hydra does
        cfg[key] = OmegaConf.load(group_file(key, raw))
        return
    if key == "experiment":
        raise ConfigError(f"experiment={raw} cannot be applied on resume: {run_dir} keeps the settings it "
                          f"was started with.")
    key = GROUP_KEYS.get(key, key)
    value = yaml.safe_load(raw) if raw else None
    missing = object()
    current = OmegaConf.select(cfg, key, default=missing)
    if current is not missing and current == value:
        return
    added = override.startswith("+") and "." in key and key.split(".")[0] in BUILDER_SECTIONS  # its builder checks it
    if current is missing and key not in may_change and not added:  # a typo: force_add below would add it silently
        raise ConfigError(unknown_key_message(key, override, dotted_keys(cfg)))
    if not any(key == prefix or key.startswith(prefix + ".") for prefix in may_change):
        was = f" (the run has {key}={current})" if current is not missing else ""
        raise ConfigError(
            f"Cannot resume with {key}={raw}{was}: a resumed run keeps its model, data, optimizer and "
            f"schedule, so that it ends as the uninterrupted run would. Start a new run to train something "
            f"different. A resume may change: {', '.join(MAY_CHANGE)}.")
    other = SAME_SETTING.get(key)
    if other and OmegaConf.select(cfg, other, default=None) is not None:
        OmegaConf.update(cfg, other, None)
    OmegaConf.update(cfg, key, value, force_add=True)


def finished_message(run_dir: Path, cfg: DictConfig, checkpoint: dict[str, Any]) -> str | None:
    """What to say when the run has nothing left to do (its summary says completed), else None."""
    summary = RunFolder(run_dir).read_summary()
    if summary.get("status") != "completed":
        return None
    stopped = checkpoint.get("stop_reason")
    if not stopped and checkpoint["epoch"] < cfg.trainer.epochs:
        return None
    how = f"stopped early ({stopped})" if stopped else f"trained all {checkpoint['epoch']} epochs"
    scores = "".join(f", {label} {summary[key]:.4f}" for key, label in (("best_val_acc", "best val acc"),
                                                                        ("test_acc", "test acc"))
                     if isinstance(summary.get(key), (int, float)))
    return (f"Run {run_dir} is already finished: it {how}{scores}. Nothing to do. To train it for longer: "
            f"{resume_command(RunFolder(run_dir), cfg)} trainer.epochs={checkpoint['epoch'] + 10}")


def resume(run_dir: Path | str, overrides: list[str] = (), callbacks: list = ()) -> dict[str, Any]:
    """Continue the run in `run_dir`; returns its summary (the existing one when it was finished)."""
    folder, cfg, checkpoint = _resumable(run_dir, overrides)
    if checkpoint is None:
        return folder.read_summary()
    return _continue(folder, cfg, checkpoint, callbacks).summary


def resume_run(run_dir: Path | str, overrides: list[str] = (), callbacks: list = ()):
    """Continue the run in `run_dir` and return its `run.RunResult`; a finished run's result is read from disk.

    `callbacks`: user callbacks for the resumed part (those the run was started with are not restored).
    """
    folder, cfg, checkpoint = _resumable(run_dir, overrides)
    if checkpoint is not None:
        return _continue(folder, cfg, checkpoint, callbacks)
    import_user_modules(cfg.imports)  # the model may be one of the user's (confirmed by resume_config)
    best = RunCheckpoint.read(folder.best_checkpoint)
    history = [EpochMetrics(**row) for row in RunCheckpoint.read(folder.last_checkpoint).state["history"]]
    return RunResult(best.build_model(), folder.read_summary(), history, best.classes)


def _resumable(run_dir: Path | str, overrides) -> tuple[RunFolder, DictConfig, dict[str, Any] | None]:
    """(folder, config, last checkpoint); the checkpoint is None when the run had finished (said on stdout)."""
    folder = RunFolder(run_dir)
    cfg, checkpoint = resume_config(folder.path, list(overrides))
    message = finished_message(folder.path, cfg, checkpoint)
    if message:
        print(message)
        return folder, cfg, None
    return folder, cfg, checkpoint


def _continue(folder: RunFolder, cfg: DictConfig, checkpoint: dict[str, Any], callbacks):
    folder.remove_stale_temp_files()
    return run(cfg, run_dir=folder.path, resume_from=checkpoint, callbacks=callbacks)
