"""Which epochs a run keeps (trainer.checkpoint): the metrics an epoch can be judged by, better or worse, the
k best of a run's epochs and the names of the files that keep them.

No files are written here: the Checkpointer (checkpointer.py) writes what these decide, and trainer_checks.py
checks the settings against `MONITORABLE`.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields

from cnntrain.errors import ConfigError
from cnntrain.metrics import EpochMetrics
from cnntrain.settings import CheckpointSettings

# EpochMetrics' fields that say nothing of how good the weights are.
NOT_MONITORABLE = ("epoch", "lr", "epoch_seconds", "train_examples_per_s", "stage")
# Every per-epoch figure metrics.csv can have, read from EpochMetrics so that a column added there is a choice here.
MONITORABLE = tuple(f.name for f in fields(EpochMetrics) if f.name not in NOT_MONITORABLE)
MODES = ("auto", "max", "min")

# checkpoints/epoch=007-val_acc=0.9123.pt (a top-k file) and checkpoints/epoch=010.pt (every_n_epochs).
TOP_K_FILE = re.compile(r"epoch=(\d+)-[A-Za-z0-9_]+=[-+0-9.eEnaif]+\.pt")
EVERY_N_FILE = re.compile(r"epoch=(\d+)\.pt")


def resolved_mode(monitor: str, mode: str) -> str:
    """max or min for `monitor`: auto is min for losses, max for accuracies and scores."""
    if mode != "auto":
        return mode
    return "min" if "loss" in monitor else "max"


def score(value: float | None, mode: str) -> float:
    """A number that is higher the better `value` is; a missing or NaN value is the worst there is."""
    if value is None or math.isnan(value):
        return -math.inf
    return value if mode == "max" else -value


def monitored(metrics: EpochMetrics, monitor: str) -> float:
    """The epoch's value of `monitor`; a metric this run does not measure is a ConfigError saying so."""
    value = getattr(metrics, monitor)
    if value is None:
        raise ConfigError(
            f"trainer.checkpoint.monitor={monitor}: this run does not measure {monitor} (its metrics.csv has no "
            f"such column). "
            f"Choose one it has, e.g. trainer.checkpoint.monitor=val_acc."
        )
    return float(value)


def check_measured(key: str, metric: str, classes: int) -> None:
    """Refuse, before training, a metric (`key`'s) this data will not have: top-5 accuracy needs more than 5
    classes."""
    if metric == "val_top5" and classes <= 5:
        raise ConfigError(
            f"{key}=val_top5, but this data has {classes} classes: top-5 accuracy is measured with more than 5. "
            f"Choose another, e.g. {key}=val_acc."
        )


def is_better(value: float, than: float, mode: str) -> bool:
    """Whether `value` beats `than` (strictly: of equal epochs the first stays the best)."""
    return score(value, mode) > score(than, mode)


def top_k(entries: list[tuple[int, float]], policy: CheckpointSettings) -> list[tuple[int, float]]:
    """The (epoch, value) entries to keep: the save_top_k best (all for -1), best first, earlier first among
    equals."""
    ranked = sorted(entries, key=lambda entry: (-score(entry[1], policy.mode), entry[0]))
    return ranked if policy.save_top_k < 0 else ranked[: policy.save_top_k]


def top_k_file_name(epoch: int, monitor: str, value: float) -> str:
    """epoch=007-val_acc=0.9123.pt: the epoch and its monitored value, sorted by epoch in a listing."""
    return f"epoch={epoch:03d}-{monitor}={value:.4f}.pt"


def every_n_file_name(epoch: int) -> str:
    """epoch=010.pt: the checkpoint trainer.checkpoint.every_n_epochs keeps."""
    return f"epoch={epoch:03d}.pt"


def keeps_top_k_files(policy: CheckpointSettings) -> bool:
    """Whether epochs' files are kept besides best.pt (save_top_k 1 keeps best.pt only)."""
    return policy.save_top_k != 1
