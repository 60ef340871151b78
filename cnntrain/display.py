"""What the user sees of a run: `Reporter` (the console and train.log), the epoch line, the live
progress bar (`ProgressDisplay`) and the early time estimate (`TimeEstimate`).

`Reporter` is the one way text reaches the user: it prints on the console (rich,
plain when stdout is not a terminal) and writes the same text to the run's train.log.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cnntrain.process import lost_console
from cnntrain.trainer import Callback, EpochMetrics, StepProgress, Trainer


class Reporter:
    """Prints to the console and appends the same text to a log file.

    Lines may come from two threads (interruptions.StopOnSignals answers a signal from its own);
    a console that went away (process.ConsoleStream) leaves the log file with every line, and a
    note in it saying when and why the console stopped getting them.
    """

    def __init__(self, log_file: Path | None = None, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self._file = open(log_file, "a", encoding="utf-8") if log_file else None
        self._lock = threading.RLock()
        self._console_lost_noted = False

    def line(self, text: str, style: str | None = None) -> None:
        with self._lock:
            if not self.quiet:
                self.console.print(text, style=style, highlight=False, soft_wrap=True, markup=False)
            self._note_lost_console()
            self._write(text)

    def _note_lost_console(self) -> None:
        """Once: the console went away (a closed pipe or terminal), so from here on only this file has the output."""
        lost = lost_console()
        if lost and not self._console_lost_noted:
            self._console_lost_noted = True
            self._write(
                f"(the console went away at {time.strftime('%H:%M:%S')}: {lost}; this file goes on "
                f"with everything the run says)"
            )

    def renderable(self, item: Any) -> None:
        """A rich table or panel: rendered on the console, and as plain text in the log."""
        with self._lock:
            if not self.quiet:
                self.console.print(item)
            self._note_lost_console()
            if self._file:
                buffer = io.StringIO()
                Console(file=buffer, width=120, no_color=True, highlight=False).print(item)
                self._write(buffer.getvalue().rstrip("\n"))

    def log_only(self, text: str) -> None:
        self._write(text)

    def _write(self, text: str) -> None:
        with self._lock:
            if self._file:
                try:
                    self._file.write(text + "\n")
                    self._file.flush()
                except OSError:  # a full disk: the console still shows it, and the error is reported there
                    self._file = None

    def close(self) -> None:
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None


def format_epoch(metrics: EpochMetrics, epochs: int, end_lr: float | None = None, balanced: bool = False) -> str:
    """The epoch's line. Its lr is the one its first step used (metrics.csv's `lr`), followed by
    `->` and the lr after its last step when a per-step schedule moved it (`end_lr`; one-cycle's warm-up
    in fmnist_fast's first epoch: `lr 0.00016->0.003745`), so a start value is never passed off as the epoch's.
    `balanced`: the validation's balanced accuracy and macro-F1 too (class_balance.shows_balanced_figures)."""
    lr = f"lr {metrics.lr:.4g}"
    if end_lr is not None and not math.isclose(end_lr, metrics.lr, rel_tol=1e-6, abs_tol=0.0):
        lr += f"->{end_lr:.4g}"
    figures = ""
    if balanced and metrics.val_balanced_acc is not None:
        figures = f" bal.acc {metrics.val_balanced_acc:.4f} macro-F1 {metrics.val_macro_f1:.4f}"
    return (
        f"epoch {metrics.epoch:>{len(str(epochs))}}/{epochs}  "
        f"train loss {metrics.train_loss:.4f} acc {metrics.train_acc:.4f}  "
        f"val loss {metrics.val_loss:.4f} acc {metrics.val_acc:.4f}{figures}  "
        f"{lr}  {metrics.epoch_seconds:.1f}s  {metrics.train_examples_per_s:,.0f} ex/s"
        + (f"  stage {metrics.stage}" if metrics.stage is not None else "")
    )


def epoch_end_lr(trainer: Trainer) -> float | None:
    """The lr after the epoch's last step when a per-step schedule sets it (one-cycle, warm-up, cosine by
    step), read at on_epoch_end; None for an epoch schedule or none, whose lr held all epoch (by
    on_epoch_end an epoch schedule has already moved it to the next epoch's)."""
    schedule = getattr(trainer, "schedule", None)
    return trainer.current_lr() if schedule is not None and schedule.interval == "step" else None


def format_duration(seconds: float) -> str:
    """1:02:03 style (h:mm:ss), or m:ss under an hour."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_step_seconds(seconds: float) -> str:
    """A step's time with figures that are not all zeros: 0.25 s, 4.2 ms, 0.31 ms."""
    if seconds >= 0.01:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.2g} ms" if seconds < 0.001 else f"{seconds * 1000:.1f} ms"


class ProgressDisplay(Callback):
    """A live rich bar per epoch on a terminal; one line per epoch everywhere.

    The bar moves every step (step counter, elapsed time, the epoch's and the run's
    time left): counting steps needs no device sync. Loss and accuracy need one, so
    they change when the trainer reads them (`Trainer.reads_progress`: after steps 1, 2,
    4, 8, ... and then every `log_every` steps) and show `-` only before the first step ends.
    """

    def __init__(self, reporter: Reporter, live: bool, balanced: bool = False):
        self.reporter = reporter
        self.live = live and not reporter.quiet
        self.balanced = balanced  # the epoch line shows the balanced accuracy and macro-F1 too
        self.progress: Progress | None = None
        self.task = None
        self._epoch_started = 0.0
        self._first_step = 0  # steps already done when this process started the epoch (a resumed one)

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[speed]} ex/s"),
                TimeElapsedColumn(),
                TextColumn("epoch left {task.fields[epoch_left]}  run left {task.fields[run_left]}"),
                console=self.reporter.console,
                transient=True,
            )
            self.progress.start()

    def on_epoch_start(self, trainer: Trainer, epoch: int, steps: int) -> None:
        self._epoch_started = time.perf_counter()
        self._first_step = None
        if self.progress:
            self.task = self.progress.add_task(
                "train",
                total=steps,
                epoch=f"{epoch}/{trainer.epochs}",
                loss="-",
                acc="-",
                speed="-",
                epoch_left="-",
                run_left="-",
            )

    def on_train_step(self, trainer: Trainer, step: int, steps: int) -> None:
        if not self.progress:
            return
        if self._first_step is None:  # steps a resumed epoch had done before this process
            self._first_step = step - 1
        elapsed = time.perf_counter() - self._epoch_started
        per_step = elapsed / (step - self._first_step)
        epoch_left = per_step * (steps - step)
        # Later epochs: the last finished one's length (validation included), else this one's pace.
        epoch_seconds = trainer.history[-1].epoch_seconds if trainer.history else per_step * steps
        epochs_after = max(0, trainer.epochs - (trainer.history[-1].epoch + 1 if trainer.history else 1))
        if epochs_after:  # a time limit's plan may end in a part of an epoch (trainer.last_epoch_batches)
            epochs_after += trainer.epoch_batches(trainer.epochs) / len(trainer.train_loader) - 1
        fields = {
            "epoch_left": format_duration(epoch_left),
            "run_left": format_duration(epoch_left + epochs_after * epoch_seconds),
            "speed": f"{(step - self._first_step) * trainer.train_loader.batch_size / elapsed:,.0f}",
        }
        self.progress.update(self.task, completed=step, **fields)

    def on_train_progress(self, trainer: Trainer, progress: StepProgress) -> None:
        if self.progress:
            self.progress.update(self.task, loss=f"{progress.loss:.4f}", acc=f"{progress.acc:.4f}")

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        if self.progress:
            self.progress.remove_task(self.task)
        self.reporter.line(format_epoch(metrics, trainer.epochs, epoch_end_lr(trainer), self.balanced))

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


class TimeEstimate(Callback):
    """One line, early in the first epoch a process trains: the expected time per epoch and for the run
    (none when the run has under WORTH_SAYING_SECONDS to go).

    Timed over a few steps after the first (which pays for warm-up), and at least
    MIN_SECONDS, plus an allowance for
    validation (a forward pass costs about a third of a training step per image). When an
    epoch is expected to take over `long_minutes`, the line says so and names quicker
    options (`quicker_options()`, asked only then).
    """

    TIMED_STEPS = 4
    MIN_SECONDS = 2.0  # a small model's few steps take milliseconds: too short to time
    # Runs whose time to go is shorter than this get no line: they end before it would be of use (and a
    # one- or two-step epoch's "0:00 ... steps of 0.00 s" says nothing).
    WORTH_SAYING_SECONDS = 5.0

    def __init__(self, reporter: Reporter, quicker_options: Callable[[], str], long_minutes: float = 10):
        self.reporter = reporter
        self.quicker_options = quicker_options
        self.long_seconds = long_minutes * 60
        self._done = False
        self._start: tuple[int, float] | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int, steps: int) -> None:
        self._start = None

    def on_train_step(self, trainer: Trainer, step: int, steps: int) -> None:
        if self._done:
            return
        if self._start is None:  # the first step this process ran: warm-up, not timed
            self._start = (step, time.perf_counter())
            return
        first, started = self._start
        timed = step - first
        if (timed < self.TIMED_STEPS or time.perf_counter() - started < self.MIN_SECONDS) and step < steps:
            return
        self._done = True
        if trainer.device.type == "cuda":  # steps are queued asynchronously: wait for them before timing
            torch.cuda.synchronize(trainer.device)
        per_step = (time.perf_counter() - started) / timed
        loader = trainer.train_loader
        validation = per_step / loader.batch_size * trainer.val_loader.num_examples / 3
        epoch_seconds = per_step * steps + validation
        epochs_left = trainer.epochs - len(trainer.history)
        if epoch_seconds * epochs_left < self.WORTH_SAYING_SECONDS:
            return
        line = (
            f"time estimate: about {format_duration(epoch_seconds)} per epoch ({steps} steps of "
            f"{format_step_seconds(per_step)} + validation), {format_duration(epoch_seconds * epochs_left)} for "
            f"the {epochs_left} epoch{'s' if epochs_left != 1 else ''} to go (timed over {timed} "
            f"step{'s' if timed != 1 else ''})"
        )
        self.reporter.line(line)
        if epoch_seconds > self.long_seconds:
            self.reporter.line(
                f"That is a long epoch for this {trainer.device.type}. Quicker: {self.quicker_options()}.",
                style="yellow",
            )
