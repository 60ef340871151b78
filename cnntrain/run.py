"""Running a training: check and build (build.py), fit, test the best checkpoint, write the summary.

`run(cfg)` is what `cnntrain`, `cnntrain.train` and a resume call; it returns a
`RunResult` (the trained model, the summary, the run folder). Any failure, a config
error included, is recorded in summary.json (status "failed" and the message) before
it is raised, so a sweep's table can show it; Ctrl-C is recorded as "interrupted"
with the command that resumes the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.table import Table

from cnntrain.build import RunCallbacks, TrainingParts, build_callbacks, build_training
from cnntrain.checks import check_config
from cnntrain.callbacks import Reporter
from cnntrain.checkpoint import load_checkpoint, restore_training
from cnntrain.errors import RunInterrupted
from cnntrain.run_folder import RunFolder, display_path, provenance
from cnntrain.trainer import Callback, EpochMetrics, Trainer


@dataclass
class RunResult:
    """What a finished training gives back to Python: the model (with the best epoch's weights), its summary."""

    model: torch.nn.Module
    summary: dict[str, Any]
    history: list[EpochMetrics]
    classes: list[str]

    @property
    def run_dir(self) -> Path:
        """The run folder (absolute)."""
        return Path(self.summary["run_dir"])

    @property
    def best_val_acc(self) -> float:
        return self.summary["best_val_acc"]

    @property
    def test_acc(self) -> float:
        return self.summary["test_acc"]


def train(cfg: DictConfig, run_dir: Path | str | None = None, resume_from: dict[str, Any] | None = None,
          callbacks: list[Callback] = ()) -> dict[str, Any]:
    """Train as `cfg` says; returns the summary also written to `<run_dir>/summary.json`."""
    return run(cfg, run_dir, resume_from, callbacks).summary


def run(cfg: DictConfig, run_dir: Path | str | None = None, resume_from: dict[str, Any] | None = None,
        callbacks: list[Callback] = ()) -> RunResult:
    """Train as `cfg` says in `run_dir` (default: Hydra's folder, else a new one under outputs/).

    `resume_from` is the run's last checkpoint when continuing it (see resuming.py);
    `callbacks` are user callbacks, called after the built-in ones.
    """
    folder = RunFolder.for_run(cfg, run_dir)
    folder.save_config_if_missing(cfg)
    reporter = Reporter(folder.train_log, quiet=cfg.trainer.get("progress") == "none")
    started = time.time()
    try:
        checked = check_config(cfg, list(callbacks))  # every name and setting, before any data is loaded
        return _fit_and_test(build_training(checked), folder, reporter, started, resume_from)
    except KeyboardInterrupt as err:
        message = err.message if isinstance(err, RunInterrupted) else interrupted_outside_training(folder)
        reporter.line(message, style="yellow")
        _write_ended_summary(folder, "interrupted", message, started)
        raise
    except Exception as err:  # recorded for the sweep table, then raised to the caller
        reporter.log_only(f"error: {err}")  # the CLI prints it on the console
        _write_ended_summary(folder, "failed", str(err), started)
        raise
    finally:
        reporter.close()


def _fit_and_test(parts: TrainingParts, folder: RunFolder, reporter: Reporter, started: float,
                  resume_from: dict[str, Any] | None) -> RunResult:
    cfg, spec = parts.checked.cfg, parts.spec
    report_start(parts, folder, reporter)
    callbacks = build_callbacks(parts, folder, reporter)
    trainer = parts.trainer(callbacks.all)
    start_epoch = 1
    if resume_from is not None:
        start_epoch = restore_training(resume_from, trainer)
        reporter.line(f"resumed from checkpoints/last.pt: {epochs_text(start_epoch - 1)} done, "
                      f"continuing at epoch {start_epoch} of {cfg.trainer.epochs}")
    history = fit(trainer, start_epoch, callbacks, folder)
    if trainer.stop_reason:
        reporter.line(f"stopped after epoch {history[-1].epoch}: {trainer.stop_reason}")

    best = callbacks.checkpointer.best
    parts.model.load_state_dict(load_checkpoint(folder.best_checkpoint)["state_dict"])
    test_loss, test_acc = trainer.evaluate(parts.test_loader)
    summary = {
        "status": "completed", "run_dir": str(folder), "model": cfg.model.name, "data": cfg.data.name,
        "epochs": len(history), "best_epoch": best.epoch, "best_metric": "val_acc",
        "best_val_acc": best.val_acc, "best_val_loss": best.val_loss,
        "test_loss": test_loss, "test_acc": test_acc, "final_epoch": history[-1].as_dict(),
        "stopped_early": trainer.stop_reason,
        "params": parts.params, "input_size": parts.recipe["input_size"], "train_size": spec.train_size,
        "val_size": spec.val_size,
        # What the speed switches resolved to on this device (the config may say auto).
        "channels_last": parts.channels_last, "precision": parts.precision,
        "test_size": spec.test_size, "val_source": spec.val_source, **provenance(parts.device),
        "wall_seconds": time.time() - started,
        "mean_epoch_seconds": sum(m.epoch_seconds for m in history) / len(history),
    }
    folder.write_summary(summary)
    reporter.renderable(summary_table(summary))
    return RunResult(parts.model, summary, history, list(spec.classes))


def report_start(parts: TrainingParts, folder: RunFolder, reporter: Reporter) -> None:
    """The run's first lines: what trains on what, where the folder is, the switches not honoured."""
    spec, cfg = parts.spec, parts.checked.cfg
    reporter.line(f"cnntrain: {cfg.model.name} on {spec.name} ({spec.train_size:,} train / {spec.val_size:,} val "
                  f"from {spec.val_source} / {spec.test_size:,} test), input {spec.image_size[0]}px -> "
                  f"{parts.recipe['input_size']}px, {parts.params:,} parameters, device {parts.device}")
    reporter.line(f"run folder: {display_path(folder.path)}")
    for notice in parts.notices:
        reporter.line(notice, style="yellow")


def fit(trainer: Trainer, start_epoch: int, callbacks: RunCallbacks, folder: RunFolder) -> list[EpochMetrics]:
    """trainer.fit, with Ctrl-C turned into a message saying what is saved and how to resume."""
    try:
        return trainer.fit(start_epoch)
    except KeyboardInterrupt:
        raise RunInterrupted(interrupted_message(folder, trainer, callbacks.checkpointer.saved_epoch)) from None
    finally:
        callbacks.display.close()


def _write_ended_summary(folder: RunFolder, status: str, message: str, started: float) -> None:
    folder.write_summary({"status": status, "error": message, "run_dir": str(folder),
                          "wall_seconds": time.time() - started})


def resume_command(folder: RunFolder) -> str:
    return f"cnntrain resume={display_path(folder.path)}"


def interrupted_outside_training(folder: RunFolder) -> str:
    """Ctrl-C while loading data or testing: what is on disk says whether there is something to resume."""
    if folder.last_checkpoint.is_file():
        return f"Interrupted. Resume with: {resume_command(folder)}"
    return "Interrupted before the first epoch finished; there is nothing to resume, start the run again."


def epochs_text(last: int) -> str:
    return "epoch 1" if last == 1 else f"epochs 1-{last}"


def interrupted_message(folder: RunFolder, trainer: Trainer, saved: int) -> str:
    """Ctrl-C during training; `saved` is the epoch last.pt holds (0: none)."""
    where = f"Interrupted during epoch {saved + 1} of {trainer.epochs}."
    if not saved:
        return f"{where} No epoch had finished, so there is nothing to resume; start the run again."
    return (f"{where} checkpoints/last.pt holds {epochs_text(saved)} (the unfinished epoch is redone on resume). "
            f"Resume with: {resume_command(folder)}")


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="cnntrain result", show_header=True, header_style="bold")
    for column in ("best epoch", "val acc", "test acc", "time"):
        table.add_column(column)
    table.add_column("run folder", overflow="fold")
    table.add_row(f"{summary['best_epoch']}/{summary['epochs']}", f"{summary['best_val_acc']:.4f}",
                  f"{summary['test_acc']:.4f}", f"{summary['wall_seconds']:.1f}s", display_path(summary["run_dir"]))
    return table
