"""Trainer callbacks: console display, metrics.csv, checkpoints, early stopping.

A resumed run hands the trainer the finished epochs' metrics (`trainer.history`);
the callbacks rebuild their state from it (best epoch, rows of metrics.csv, epochs
without improvement), so nothing else needs saving for them.

`Reporter` is the one way text reaches the user: it prints on the console (rich,
plain when stdout is not a terminal) and writes the same text to the run's train.log.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cnntrain.checkpoint import save_checkpoint
from cnntrain.run_folder import RunFolder
from cnntrain.trainer import Callback, EpochMetrics, StepProgress, Trainer


class Reporter:
    """Prints to the console and appends the same text to a log file."""

    def __init__(self, log_file: Path | None = None, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self._file = open(log_file, "a", encoding="utf-8") if log_file else None

    def line(self, text: str, style: str | None = None) -> None:
        if not self.quiet:
            self.console.print(text, style=style, highlight=False, soft_wrap=True)
        self._write(text)

    def renderable(self, item: Any) -> None:
        """A rich table or panel: rendered on the console, and as plain text in the log."""
        if not self.quiet:
            self.console.print(item)
        if self._file:
            buffer = io.StringIO()
            Console(file=buffer, width=120, no_color=True, highlight=False).print(item)
            self._write(buffer.getvalue().rstrip("\n"))

    def log_only(self, text: str) -> None:
        self._write(text)

    def _write(self, text: str) -> None:
        if self._file:
            self._file.write(text + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def format_epoch(metrics: EpochMetrics, epochs: int) -> str:
    return (f"epoch {metrics.epoch:>{len(str(epochs))}}/{epochs}  "
            f"train loss {metrics.train_loss:.4f} acc {metrics.train_acc:.4f}  "
            f"val loss {metrics.val_loss:.4f} acc {metrics.val_acc:.4f}  "
            f"lr {metrics.lr:.4g}  {metrics.epoch_seconds:.1f}s  {metrics.train_examples_per_s:,.0f} ex/s")


class ProgressDisplay(Callback):
    """A live rich bar per epoch on a terminal; one line per epoch everywhere."""

    def __init__(self, reporter: Reporter, live: bool):
        self.reporter = reporter
        self.live = live and not reporter.quiet
        self.progress: Progress | None = None
        self.task = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}  "
                           "{task.fields[speed]:,.0f} ex/s"),
                TimeRemainingColumn(), console=self.reporter.console, transient=True,
            )
            self.progress.start()

    def on_epoch_start(self, trainer: Trainer, epoch: int, steps: int) -> None:
        if self.progress:
            self.task = self.progress.add_task("train", total=steps, epoch=f"{epoch}/{trainer.epochs}",
                                               loss=float("nan"), acc=float("nan"), speed=0.0)

    def on_train_progress(self, trainer: Trainer, progress: StepProgress) -> None:
        if self.progress:
            self.progress.update(self.task, completed=progress.step, loss=progress.loss, acc=progress.acc,
                                 speed=progress.examples_per_s)

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        if self.progress:
            self.progress.remove_task(self.task)
        self.reporter.line(format_epoch(metrics, trainer.epochs))

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


METRIC_COLUMNS = [f.name for f in fields(EpochMetrics)]


class MetricsWriter(Callback):
    """Keeps metrics.csv equal to the run's history: one row per finished epoch.

    At the start it writes the rows of `trainer.history` (none for a new run, the
    finished epochs for a resumed one: no duplicate or missing row, whatever was in
    the file when the run was killed); then it appends a flushed row per epoch.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, trainer: Trainer) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(m.as_dict() for m in trainer.history)
        os.replace(tmp, self.path)

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        is_new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if is_new:
                writer.writeheader()
            writer.writerow(metrics.as_dict())


class Checkpointer(Callback):
    """Saves checkpoints/last.pt every epoch and best.pt when validation accuracy improves."""

    def __init__(self, folder: RunFolder, make_state: Callable[[Trainer, EpochMetrics], dict]):
        self.folder = folder
        self.make_state = make_state
        self.best: EpochMetrics | None = None
        self.saved_epoch = 0  # the epoch last.pt holds

    def on_fit_start(self, trainer: Trainer) -> None:
        self.best = max(trainer.history, key=lambda m: m.val_acc, default=None)
        self.saved_epoch = trainer.history[-1].epoch if trainer.history else 0

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        state = self.make_state(trainer, metrics)
        if self.best is None or metrics.val_acc > self.best.val_acc:
            self.best = metrics
            save_checkpoint(state, self.folder.best_checkpoint)
        # last.pt after best.pt: a run killed in between resumes from the epoch before and redoes this one.
        save_checkpoint(state, self.folder.last_checkpoint)
        self.saved_epoch = metrics.epoch


def epochs_without_improvement(values: list[float], minimize: bool, min_delta: float) -> tuple[int, int]:
    """(epochs since the best value, index of the best value) for a metric's per-epoch values.

    A value counts as better only when it beats the best so far by more than `min_delta`.
    """
    best_index = 0
    for i, value in enumerate(values[1:], 1):
        gain = values[best_index] - value if minimize else value - values[best_index]
        if gain > min_delta:
            best_index = i
    return len(values) - 1 - best_index, best_index


class EarlyStopping(Callback):
    """Ends training when `metric` has not improved by more than `min_delta` for `patience` epochs."""

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0):
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.minimize = "loss" in metric

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        values = [getattr(m, self.metric) for m in trainer.history]
        stale, best_index = epochs_without_improvement(values, self.minimize, self.min_delta)
        if stale >= self.patience:
            best = trainer.history[best_index]
            trainer.stop_reason = (
                f"early stopping: {self.metric} has not improved by more than {self.min_delta:g} for {stale} epochs "
                f"(best {getattr(best, self.metric):.4f} at epoch {best.epoch}; trainer.early_stopping.patience="
                f"{self.patience})")
