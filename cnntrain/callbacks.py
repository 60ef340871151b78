"""Trainer callbacks that keep the run folder: metrics.csv, checkpoints, early stopping.

A resumed run hands the trainer the finished epochs' metrics (`trainer.history`);
the callbacks rebuild their state from it (best epoch, rows of metrics.csv, epochs
without improvement), so nothing else needs saving for them. The console display and
`Reporter` are display.py's (importable from here too, as they were).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from cnntrain.checkpoint import save_checkpoint
from cnntrain.display import (
    ProgressDisplay,
    Reporter,
    TimeEstimate,
    epoch_end_lr,
    format_duration,
    format_epoch,
    format_step_seconds,
)
from cnntrain.metrics import OPTIONAL_METRICS
from cnntrain.process import interrupts_held
from cnntrain.run_folder import RunFolder, write_atomically
from cnntrain.trainer import Callback, EpochMetrics, Trainer

# display.py's names, importable from here as before the split.
__all__ = [
    "Checkpointer",
    "EarlyStopping",
    "MetricsWriter",
    "ProgressDisplay",
    "Reporter",
    "TimeEstimate",
    "epoch_end_lr",
    "epochs_without_improvement",
    "format_duration",
    "format_epoch",
    "format_step_seconds",
    "metric_columns",
]


METRIC_COLUMNS = [f.name for f in fields(EpochMetrics)]  # every column metrics.csv can have, in order


def metric_columns(rows: list[dict]) -> list[str]:
    """metrics.csv's columns for `rows`: the required EpochMetrics fields and the optional ones
    (val_top5, ...) that some row has, in the fields' order."""
    present = {key for row in rows for key in row}
    return [name for name in METRIC_COLUMNS if name in present or name not in OPTIONAL_METRICS]


class MetricsWriter(Callback):
    """Keeps metrics.csv equal to the run's history: one row per finished epoch.

    At the start it writes the rows of `trainer.history` (none for a new run, the
    finished epochs for a resumed one: no duplicate or missing row, whatever was in
    the file when the run was killed); then it appends a flushed row per epoch.
    The columns come from the rows (`metric_columns`): a row bringing a column the file
    lacks (val_top5 at a run's first epoch, or after a resume of an older run) has the
    file rewritten with it, so that every row has the same columns (empty where a row
    lacks one).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] | None = None  # the file's header

    def on_fit_start(self, trainer: Trainer) -> None:
        self._write_all([m.as_dict() for m in trainer.history])

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        row = metrics.as_dict()
        if self.path.exists() and self.columns is None:  # a file this writer did not start
            with open(self.path, newline="", encoding="utf-8") as f:
                self.columns = next(csv.reader(f), [])
        if not self.path.exists() or set(row) - set(self.columns):
            self._write_all([*self._rows_on_disk(), row])
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow(row)

    def _rows_on_disk(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _write_all(self, rows: list[dict]) -> None:
        self.columns = metric_columns(rows)

        def write_rows(f) -> None:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

        write_atomically(self.path, write_rows, binary=False)


class Checkpointer(Callback):
    """Saves checkpoints/last.pt every epoch and best.pt when validation accuracy improves.

    Inside an epoch, last.pt is also saved every `every_minutes` (None: never) and when
    the trainer is asked to stop (Ctrl-C, SIGTERM), between two optimizer steps, so a
    long epoch interrupted loses at most those minutes. Whether a step is saved is decided
    in `on_train_step` (every rank of a distributed run at the same point); the checkpoints
    are written in `after_train_step` / `after_epoch_end`, once every callback's hooks of that
    step or epoch end ran: their state (`state_dict()`) and a stop reason set then (early
    stopping) are in it.
    """

    def __init__(self, folder: RunFolder, make_state: Callable[[Trainer], dict], every_minutes: float | None = None):
        self.folder = folder
        self.make_state = make_state
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.best: EpochMetrics | None = None
        self.saved = (0, 0)  # what last.pt holds: (finished epochs, steps done of the next epoch)
        self._last_save = time.monotonic()
        self._save_step: int | None = None  # the step on_train_step decided to save, written in after_train_step

    def on_fit_start(self, trainer: Trainer) -> None:
        self.best = max(trainer.history, key=lambda m: m.val_acc, default=None)
        self.saved = (trainer.history[-1].epoch if trainer.history else 0, 0)
        self._last_save = time.monotonic()

    def on_train_step(self, trainer: Trainer, step: int, steps: int) -> None:
        self._save_step = None
        if step == steps or not trainer.between_optimizer_steps:
            return  # the epoch's end is saved with its metrics; mid-group gradients cannot be saved
        # Every rank of a distributed run decides together (and takes the state together: it sums their counters).
        due = self.every_seconds is not None and trainer.group.any(
            time.monotonic() - self._last_save >= self.every_seconds, trainer.device
        )
        if due or trainer.stop_requested:
            self._save_step = step

    def after_train_step(self, trainer: Trainer, step: int, steps: int) -> None:
        if self._save_step != step:
            return
        self._save_step = None
        state = self.make_state(trainer)  # rank 0 saves it
        with interrupts_held():  # a second Ctrl-C now waits for last.pt and `saved` to agree
            if trainer.group.writes:
                save_checkpoint(state, self.folder.last_checkpoint)
            self.saved = (self.saved[0], step)
        self._last_save = time.monotonic()

    def save_last(self, trainer: Trainer) -> None:
        """Rewrite last.pt with the trainer as it is now (e.g. after fine-tuning's switch to stage two)."""
        if trainer.group.writes:
            save_checkpoint(self.make_state(trainer), self.folder.last_checkpoint)

    def after_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        improved = self.best is None or metrics.val_acc > self.best.val_acc
        if improved:
            self.best = metrics
        with interrupts_held():  # a second Ctrl-C now waits for last.pt and `saved` to agree
            if trainer.group.writes:
                state = self.make_state(trainer)
                if improved:
                    save_checkpoint(state, self.folder.best_checkpoint)
                # last.pt after best.pt: a run killed in between resumes from the epoch before and redoes this one.
                save_checkpoint(state, self.folder.last_checkpoint)
            self.saved = (metrics.epoch, 0)
        self._last_save = time.monotonic()


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
                f"{self.patience})"
            )
