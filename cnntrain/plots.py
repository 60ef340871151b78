"""Pictures of training: curves.png in every run folder and sweep.png after a multirun.

Matplotlib is imported only when a picture is drawn (it costs ~0.5 s to import), and
only its object-oriented API is used (`Figure` + the Agg canvas), never pyplot: pyplot
would pick or change the process-wide backend, which is the user's business (e.g. in a
notebook that calls `train(cfg)`). Files are written to a temporary name and then
`os.replace`d, so a run killed mid-write never leaves a broken PNG.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnntrain.run_folder import write_atomically
from cnntrain.trainer import Callback, EpochMetrics, Trainer

CURVES_DPI = 100


def new_figure(width: float, height: float, layout: str | None = None):
    """A matplotlib Figure drawn by the Agg canvas, without touching pyplot's global state.

    `layout="constrained"` fits labels automatically but doubles the drawing time
    (measured: 0.3 s of 0.45 s per curves.png), so the per-epoch plot sets margins itself.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=CURVES_DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: Path) -> None:
    """Write `figure` as a PNG to `path` atomically (temporary file, then os.replace)."""
    write_atomically(path, lambda f: figure.savefig(f, format="png"))


def figure_to_array(figure):
    """The figure's pixels as an (H, W, 3) uint8 numpy array (what TensorBoard's add_image takes)."""
    import numpy as np

    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


# --- curves.png -------------------------------------------------------------------------------


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """metrics.csv rows as numbers (every column is numeric; an empty cell, an optional column a row
    lacks, is left out)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(f)]


def plot_curves(rows: Sequence[dict[str, float]], path: Path, title: str = "") -> None:
    """Loss (left) and accuracy (right), train and validation, against epoch; written to `path`."""
    epochs = [int(row["epoch"]) for row in rows]
    figure = new_figure(10, 4)
    if title:
        figure.suptitle(title, fontsize=10)
    loss_axes, acc_axes = figure.subplots(1, 2)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9 if title else 0.95, wspace=0.22)
    for axes, metric, label in ((loss_axes, "loss", "loss"), (acc_axes, "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "--s")):
            axes.plot(
                epochs,
                [row[f"{split}_{metric}"] for row in rows],
                style,
                markersize=4,
                label=f"{'validation' if split == 'val' else 'train'} {label}",
            )
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend()
        # Whole epochs only: a 3-epoch run should not show ticks at 1.5 and 2.5.
        axes.xaxis.get_major_locator().set_params(integer=True)
    best = max(rows, key=lambda row: row["val_acc"])
    acc_axes.annotate(
        f"best {best['val_acc']:.4f}",
        (int(best["epoch"]), best["val_acc"]),
        textcoords="offset points",
        xytext=(0, -14),
        ha="center",
        fontsize=8,
    )
    save_figure(figure, path)


class CurvesPlot(Callback):
    """Redraws curves.png from metrics.csv after the first epoch, then at most every
    `min_seconds_between` seconds, and at the end of training with every epoch.

    Drawing takes 0.2-0.5 s; short epochs (LeNet's are 2 s on a CPU) would otherwise spend
    a tenth of the run on pictures nobody looks at between two epochs. An interrupted run's
    picture can lack the epochs of its last `min_seconds_between` seconds (metrics.csv has
    them; a resume redraws). It reads the file rather than keeping its own list so that the
    picture always shows what metrics.csv holds, earlier epochs of a resumed run included.
    It must come after `MetricsWriter` in the trainer's callbacks.
    """

    def __init__(self, metrics_csv: Path, path: Path, title: str = "", min_seconds_between: float = 20.0):
        self.metrics_csv = Path(metrics_csv)
        self.path = Path(path)
        self.title = title
        self.min_seconds_between = min_seconds_between
        self._drawn_at = -math.inf
        self._pending: EpochMetrics | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        self._pending = metrics
        if time.monotonic() - self._drawn_at >= self.min_seconds_between:
            self._draw()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._pending is not None:
            self._draw()

    def _draw(self) -> None:
        rows = read_metrics_csv(self.metrics_csv) if self.metrics_csv.exists() else [self._pending.as_dict()]
        plot_curves(rows, self.path, self.title)
        self._drawn_at, self._pending = time.monotonic(), None


# --- sweep.png --------------------------------------------------------------------------------


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def swept_parameters(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Override keys whose value differs between jobs -> each job's value ('' where unset)."""
    values = [dict(o.split("=", 1) for o in row["override_list"] if "=" in o) for row in rows]
    keys = sorted({key for job in values for key in job})
    columns = {key: [job.get(key, "") for job in values] for key in keys}
    return {key: column for key, column in columns.items() if len(set(column)) > 1}


METRIC_LABELS = {"best_val_acc": "best validation accuracy"}
LINE_HEIGHT = 0.22  # inches per listed failure under the sweep plot
DRAWN = ("completed", "pruned")  # jobs with a score to draw; a pruned one's is its best before the pruner stopped it


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path, metric: str = "best_val_acc") -> None:
    """One panel per swept parameter: its value against `metric`; pruned jobs hollow, failed jobs marked and listed.

    A parameter whose values are all numbers gets a numeric axis (logarithmic when they
    span more than a factor of 20, as learning rates do); others are categories.
    """
    params = swept_parameters(rows) or {"job": [str(row["job"]) for row in rows]}
    failed = [row for row in rows if row["status"] not in DRAWN]
    completed = [row[metric] for row in rows if row["status"] in DRAWN and row.get(metric) is not None]
    best_row = best_of(rows, metric)
    lines = [f"job {row['job']} {row['status']}: {row['error']}" for row in failed[:8]]
    if len(failed) > 8:
        lines.append(f"... and {len(failed) - 8} more (see sweep.csv)")
    panels = len(params)
    figure = new_figure(max(4.5 * panels, 6), 4.2 + LINE_HEIGHT * len(lines), layout="constrained")
    axes_list = figure.subplots(1, panels, sharey=True, squeeze=False)[0]
    floor = min(completed, default=0.0)
    for axes, (key, column) in zip(axes_list, params.items()):
        _plot_parameter(axes, key, column, rows, metric, best_row, floor)
    label = METRIC_LABELS.get(metric, metric)
    axes_list[0].set_ylabel(label)
    title = f"sweep: {len(rows)} jobs, " + ", ".join(
        f"{sum(row['status'] == status for row in rows)} {status}"
        for status in sorted({row["status"] for row in rows if row["status"] != "completed"} | {"failed"})
    )
    if best_row is not None:
        best = best_row[metric]
        ties = [
            str(row["job"])
            for row in rows
            if row is not best_row and row["status"] == "completed" and row.get(metric) == best
        ]
        title += f"; best: job {best_row['job']}, {best:.4f} (star)"
        if ties:  # the star goes to one job, as best.yaml does; the others are named so the tie is not hidden
            title += f", tied with job{'s' if len(ties) > 1 else ''} {', '.join(ties)}"
    figure.suptitle(title, fontsize=10)
    if lines:
        # The failures' first lines, under the panels (the layout leaves them that strip).
        strip = LINE_HEIGHT * len(lines) / figure.get_figheight()
        figure.get_layout_engine().set(rect=(0, strip, 1, 1 - strip))
        width = int(figure.get_figwidth() * 14)  # characters of 8-point monospace that fit across
        figure.text(
            0.01,
            0.01,
            "\n".join(shorten(line, width) for line in lines),
            fontsize=8,
            color="tab:red",
            va="bottom",
            ha="left",
            family="monospace",
        )
    save_figure(figure, path)


def best_of(rows: Sequence[dict[str, Any]], metric: str = "best_val_acc") -> dict[str, Any] | None:
    """The completed job with the highest `metric`, the first of equals: the one the sweep table and
    best.yaml name (sweep_jobs.best_job), so the star and the title agree with them on a tie."""
    done = [row for row in rows if row["status"] == "completed" and row.get(metric) is not None]
    return max(done, key=lambda row: row[metric]) if done else None


def shorten(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def _plot_parameter(axes, key: str, column: list[str], rows, metric: str, best_row, floor: float) -> None:
    numbers = [_number(value) for value in column]
    numeric = all(number is not None for number in numbers)
    if numeric:
        x = numbers
        if min(x) > 0 and max(x) / min(x) > 20:
            from matplotlib.ticker import NullFormatter

            axes.set_xscale("log")
            # matplotlib's labelled minor ticks overlap on a short axis: label a grid's few values
            # themselves, and only the powers of ten for a search's many.
            axes.xaxis.set_minor_formatter(NullFormatter())
            values = sorted(set(x))
            if len(values) <= 8:
                axes.set_xticks(values, [format(v, "g") for v in values])
    else:
        categories = sorted(set(column), key=lambda value: (_number(value) is None, _number(value) or 0, value))
        x = [categories.index(value) for value in column]
        axes.set_xticks(
            range(len(categories)),
            [value or "(unset)" for value in categories],
            rotation=30 if max(map(len, categories)) > 6 else 0,
            ha="right",
        )
    for xi, row in zip(x, rows):
        value = row.get(metric)
        if row["status"] in DRAWN and value is not None:
            is_best = row is best_row  # one star, even when other jobs tie with it
            axes.plot(
                xi,
                value,
                "*" if is_best else "o",
                color="tab:green" if is_best else "tab:blue",
                markersize=13 if is_best else 7,
                fillstyle="none" if row["status"] == "pruned" else "full",  # stopped early: its best so far
            )
            axes.annotate(str(row["job"]), (xi, value), textcoords="offset points", xytext=(5, 4), fontsize=7)
        else:
            # A failed job has no metric: a red x at the bottom of the panel, with its job number
            # (its error is listed under the panels).
            axes.plot(xi, floor, "x", color="tab:red", markersize=10, markeredgewidth=2)
            axes.annotate(
                str(row["job"]), (xi, floor), textcoords="offset points", xytext=(5, 4), fontsize=7, color="tab:red"
            )
    axes.set_xlabel(key)
    axes.grid(True, alpha=0.3)
