"""Trainer callbacks that keep the run folder: metrics.csv, checkpoints (checkpointer.py), early stopping.

A resumed run hands the trainer the finished epochs' metrics (`trainer.history`);
metrics.csv and early stopping rebuild their state from it (rows, epochs without
improvement); the Checkpointer keeps its own (the top-k files) in the checkpoints. The
console display and `Reporter` are display.py's, the Checkpointer checkpointer.py's
(importable from here too, as they were).
"""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path

from cnntrain.checkpointer import Checkpointer
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
from cnntrain.run_folder import write_atomically
from cnntrain.trainer import Callback, EpochMetrics, Trainer

# display.py's and checkpointer.py's names, importable from here as before the split.
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


def epochs_without_improvement(values: list[float | None], minimize: bool, min_delta: float) -> tuple[int, int]:
    """(epochs since the best value, index of the best value) for a metric's per-epoch values.

    A value counts as better only when it beats the best so far by more than `min_delta`. Epochs without a value
    (None: trained before the metric existed, in a run resumed with early stopping on it) are skipped.
    """
    measured = [i for i, value in enumerate(values) if value is not None]
    if not measured:
        return 0, len(values) - 1
    best_index = measured[0]
    for i in measured[1:]:
        value = values[i]
        gain = values[best_index] - value if minimize else value - values[best_index]
        if gain > min_delta:
            best_index = i
    return len(values) - 1 - best_index, best_index


class EarlyStopping(Callback):
    """Ends training when `metric` has not improved by more than `min_delta` for `patience` epochs.
    `mode`: max or min (trainer.checkpoint.mode's when it follows the checkpoint's monitor); None: min for
    losses, max otherwise."""

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0, mode: str | None = None):
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.minimize = mode == "min" if mode else "loss" in metric

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
