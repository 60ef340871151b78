"""Trainer callbacks: console display, metrics.csv, checkpoints.

`Reporter` is the one way text reaches the user: it prints on the console (rich,
plain when stdout is not a terminal) and writes the same text to the run's train.log.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cnntrain.checkpoint import save_checkpoint
from cnntrain.trainer import Callback, EpochMetrics, StepProgress, Trainer

log = logging.getLogger("cnntrain")


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
    """Appends one row per epoch to metrics.csv (flushed, so a crash keeps finished epochs)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        is_new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            if is_new:
                writer.writeheader()
            writer.writerow(metrics.as_dict())


class Checkpointer(Callback):
    """Saves checkpoints/last.pt every epoch and best.pt when validation accuracy improves."""

    def __init__(self, folder: Path, make_state: Callable[[Trainer, EpochMetrics], dict]):
        self.folder = Path(folder)
        self.make_state = make_state
        self.best: EpochMetrics | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        state = self.make_state(trainer, metrics)
        save_checkpoint(state, self.folder / "last.pt")
        if self.best is None or metrics.val_acc > self.best.val_acc:
            self.best = metrics
            save_checkpoint(state, self.folder / "best.pt")
