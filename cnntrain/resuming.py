"""`cnntrain resume=<run folder>`: continue a run in its own folder from checkpoints/last.pt.

The run's config comes from its last checkpoint (what it really trained with). Only
settings that do not change what is being trained may be overridden: more epochs,
the display, the device, where the data lives. The model, data, optimizer and
schedule stay, so the resumed run ends exactly where the uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cnntrain.checkpoint import RunCheckpoint
from cnntrain.errors import ConfigError
from cnntrain.interruptions import resume_command
from cnntrain.opened_run import RunArgument, apply_override, open_run
from cnntrain.run import RunResult, run
from cnntrain.run_folder import RunFolder
from cnntrain.trainer import EpochMetrics
from cnntrain.trainer_checks import check_trainer_settings
from cnntrain.user_code import import_user_modules

# Dotted prefixes a resume may change.
MAY_CHANGE = (
    "trainer.epochs",
    "trainer.progress",
    "trainer.log_every",
    "trainer.early_stopping",
    "trainer.checkpoint_every_minutes",
    "trainer.time_limit",  # a new budget: the time already used counts, the rest is fitted again
    "device",
    "logger",
    "callbacks",
    "data.root",
    "data.labels",  # the label file moved, as data.root is for moved images
    "data.download",
    "data.workers",
    "data.cache_limit_mb",
    "data.eval_batch_size",
    "trainer.checkpoint.every_n_epochs",  # not monitor, mode, save_top_k: the kept files were chosen by them
    "trainer.deterministic",
)
# How a resume names its run, for open_run's messages: it always continues checkpoints/last.pt.
RESUME = RunArgument(key="resume=", use="cnntrain resume={}", choose=False)
# Schedules laid out over the run's length: more epochs would run past their end.
LENGTH_BOUND_SCHEDULERS = ("cosine", "onecycle")


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """(config to continue with, last checkpoint) for the run in `run_dir`."""
    given, overrides = imports_override(overrides)
    # Its modules are imported when the run is built (check_config), as at the start of any run.
    opened = open_run(run_dir, "last", given, RESUME, import_modules=False)
    checkpoint = opened.checkpoint.state
    if "history" not in checkpoint:
        raise ConfigError(
            f"Cannot resume {run_dir}: its checkpoint was written by an older cnntrain without "
            f"the state a resume needs. Start the run again."
        )
    cfg = opened.config()  # a resume trains: its loggers, model.weights and data.download stay
    saved_epochs = cfg.trainer.epochs
    for override in overrides:
        apply_override(cfg, override, run_dir, MAY_CHANGE)
    budgeted = "TimeBudget" in checkpoint.get("callbacks", {})
    if check_trainer_settings(cfg).time_limit is None and budgeted:
        raise ConfigError(
            f"Cannot resume {run_dir} without a time limit: its learning-rate schedule is fitted to the steps "
            f"its trainer.time_limit allowed. Give it one (trainer.time_limit=5m: the time already used counts "
            f"against it), or start a new run."
        )
    if cfg.trainer.epochs != saved_epochs and cfg.scheduler.name in LENGTH_BOUND_SCHEDULERS:
        raise ConfigError(
            f"Cannot change trainer.epochs on resume: scheduler={cfg.scheduler.name} spreads its "
            f"learning-rate curve over the run's {saved_epochs} epochs. "
            f"Start a new run for a longer one."
        )
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


def finished_message(run_dir: Path, cfg: DictConfig, checkpoint: dict[str, Any]) -> str | None:
    """What to say when the run has nothing left to do (its summary says completed), else None."""
    summary = RunFolder(run_dir).read_summary()
    if summary.get("status") != "completed":
        return None
    stopped = checkpoint.get("stop_reason")
    if not stopped and checkpoint["epoch"] < cfg.trainer.epochs:
        return None
    how = f"stopped early ({stopped})" if stopped else f"trained all {checkpoint['epoch']} epochs"
    scores = "".join(
        f", {label} {summary[key]:.4f}"
        for key, label in (("best_val_acc", "best val acc"), ("test_acc", "test acc"))
        if isinstance(summary.get(key), (int, float))
    )
    longer = (
        "trainer.early_stopping.patience=null (or a larger patience)"
        if stopped
        else f"trainer.epochs={checkpoint['epoch'] + 10}"
    )
    return (
        f"Run {run_dir} is already finished: it {how}{scores}. Nothing to do. To train it for longer: "
        f"{resume_command(RunFolder(run_dir), cfg)} {longer}"
    )


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


# Overrides that lift a saved stop: the run trains on past an early stop (or a callback's stop_reason).
LIFTS_THE_STOP = ("trainer.epochs", "trainer.early_stopping", "trainer.time_limit")


def _lifts_the_stop(overrides) -> bool:
    return any(override.lstrip("+~").partition("=")[0].startswith(LIFTS_THE_STOP) for override in overrides)


def _resumable(run_dir: Path | str, overrides) -> tuple[RunFolder, DictConfig, dict[str, Any] | None]:
    """(folder, config, last checkpoint); the checkpoint is None when the run had finished (said on stdout)."""
    folder = RunFolder(run_dir)
    cfg, checkpoint = resume_config(folder.path, list(overrides))
    if checkpoint.get("stop_reason") and _lifts_the_stop(overrides):
        checkpoint["stop_reason"] = None  # a new patience or more epochs: the saved stop no longer holds
    message = finished_message(folder.path, cfg, checkpoint)
    if message:
        print(message)
        return folder, cfg, None
    return folder, cfg, checkpoint


def _continue(folder: RunFolder, cfg: DictConfig, checkpoint: dict[str, Any], callbacks):
    folder.remove_stale_temp_files()
    return run(cfg, run_dir=folder.path, resume_from=checkpoint, callbacks=callbacks)
