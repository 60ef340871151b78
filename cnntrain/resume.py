"""`cnntrain resume=<run folder>`: continue a run in its own folder from checkpoints/last.pt.

The run's config comes from its last checkpoint (what it really trained with). Only
settings that do not change what is being trained may be overridden: more epochs,
the display, the device, where the data lives. The model, data, optimizer and
schedule stay, so the resumed run ends exactly where the uninterrupted one would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cnntrain.checkpoint import load_checkpoint
from cnntrain.cli import REGISTRY_GROUPS, config_dir
from cnntrain.errors import ConfigError

# Dotted prefixes a resume may change.
MAY_CHANGE = ("trainer.epochs", "trainer.progress", "trainer.log_every", "trainer.early_stopping", "device",
              "logger", "data.root", "data.download", "data.workers", "data.cache_limit_mb", "data.eval_batch_size")
# Group choices (model=alexnet) name a config file; on resume they are compared with the run's `name`.
GROUP_KEYS = {**{group: f"{group}.name" for group in REGISTRY_GROUPS}, "device": "device.type"}
# Schedules laid out over the run's length: more epochs would run past their end.
LENGTH_BOUND_SCHEDULERS = ("cosine", "onecycle")


def resume_config(run_dir: Path, overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """(config to continue with, last checkpoint) for the run in `run_dir`."""
    if not run_dir.is_dir():
        raise ConfigError(f"Cannot resume: {run_dir} is not a folder. Give a run folder, "
                          f"e.g. resume=outputs/2026-11-23/10-00-00-000000_lenet_fashion_mnist.")
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        raise ConfigError(f"Cannot resume {run_dir}: it has no checkpoints/last.pt, so no epoch of it finished. "
                          f"Start the run again instead.")
    checkpoint = load_checkpoint(last)
    if "history" not in checkpoint:
        raise ConfigError(f"Cannot resume {run_dir}: its checkpoint was written by an older cnntrain without "
                          f"the state a resume needs. Start the run again.")
    cfg = OmegaConf.create(checkpoint["config"])
    saved_epochs = cfg.trainer.epochs
    for override in overrides:
        apply_override(cfg, override, run_dir)
    if cfg.trainer.epochs != saved_epochs and cfg.scheduler.name in LENGTH_BOUND_SCHEDULERS:
        raise ConfigError(f"Cannot change trainer.epochs on resume: scheduler={cfg.scheduler.name} spreads its "
                          f"learning-rate curve over the run's {saved_epochs} epochs. "
                          f"Start a new run for a longer one.")
    return cfg, checkpoint


def apply_override(cfg: DictConfig, override: str, run_dir: Path) -> None:
    """Apply `key=value` to the resumed config if it may change; one that keeps the value is fine."""
    key, sep, raw = override.lstrip("+").partition("=")
    if not sep:
        raise ConfigError(f"Unexpected argument '{override}' with resume=: give key=value overrides.")
    if key == "logger":  # a group choice that may change: take the whole file, as Hydra would
        cfg.logger = OmegaConf.load(_group_file("logger", raw))
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
    if not any(key == prefix or key.startswith(prefix + ".") for prefix in MAY_CHANGE):
        was = f" (the run has {key}={current})" if current is not missing else ""
        raise ConfigError(
            f"Cannot resume with {key}={raw}{was}: a resumed run keeps its model, data, optimizer and "
            f"schedule, so that it ends as the uninterrupted run would. Start a new run to train something "
            f"different. A resume may change: {', '.join(MAY_CHANGE)}.")
    OmegaConf.update(cfg, key, value, force_add=True)


def _group_file(group: str, choice: str) -> Path:
    path = config_dir() / group / f"{choice}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"Unknown {group} '{choice}' ({group}={choice}). Available: {choices}")
    return path


def finished_message(run_dir: Path, cfg: DictConfig, checkpoint: dict[str, Any]) -> str | None:
    """What to say when the run has nothing left to do (its summary says completed), else None."""
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    if summary.get("status") != "completed":
        return None
    stopped = checkpoint.get("stop_reason")
    if not stopped and checkpoint["epoch"] < cfg.trainer.epochs:
        return None
    how = f"stopped early ({stopped})" if stopped else f"trained all {checkpoint['epoch']} epochs"
    return (f"Run {run_dir} is already finished: it {how}; best val acc {summary['best_val_acc']:.4f}, "
            f"test acc {summary['test_acc']:.4f}. Nothing to do. To train it for longer: "
            f"cnntrain resume={run_dir} trainer.epochs={checkpoint['epoch'] + 10}")


def resume(run_dir: Path | str, overrides: list[str] = ()) -> dict[str, Any]:
    """Continue the run in `run_dir`; returns its summary (the existing one when it was finished)."""
    from cnntrain.run import train

    run_dir = Path(run_dir)
    cfg, checkpoint = resume_config(run_dir, list(overrides))
    message = finished_message(run_dir, cfg, checkpoint)
    if message:
        print(message)
        return json.loads((run_dir / "summary.json").read_text())
    for stale in (run_dir / "checkpoints").glob("*.tmp"):  # left by a kill in the middle of a save
        stale.unlink()
    return train(cfg, run_dir=run_dir, resume_from=checkpoint)
