"""How a run copes with other processes on its machine: `ThreadGovernor` (trainer.threads=auto) and
`SlowdownWatch` (the one-time notice when training slows down several-fold).

Why a governor: PyTorch's CPU kernels split work among OpenMP threads that wait for each other at the
end of every parallel region, spinning while they wait. When another process takes one of the cores,
the thread it displaces holds every region up while the others spin: measured on 2 cores (AVX2), a
busy `python -c 'while True: pass'` beside a run cut airnet from ~950 to ~55 ex/s, where one thread
alone keeps ~460. Passive waiting (OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT) avoids the collapse but
must be set before torch starts, and on a quiet machine PASSIVE took 45% off a bare LeNet loop's speed
and 10% off airnet's (GOMP_SPINCOUNT=10000: 17% off LeNet's, and under load airnet collapsed anyway);
the thread count can change at any step. So the governor keeps all the cores' threads while nobody
else wants the cores, and gives a core back (one thread fewer) as soon as other processes keep it
busy, taking it again when they stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from cnntrain.cpu import CpuUse, thread_ceiling
from cnntrain.hooks import Callback
from cnntrain.time_plan import PaceCheck


def starting_threads(setting: str | int) -> tuple[int, str]:
    """Set the CPU threads a run starts with and return (them, where the number came from): trainer.threads
    as given, or under auto the ceiling (`cpu.thread_ceiling`), which the governor then lowers while other
    processes are busy."""
    threads, source = thread_ceiling() if setting == "auto" else (int(setting), "trainer.threads")
    torch.set_num_threads(threads)
    return threads, source


def fitting_threads(current: int, ceiling: int, cores: int, others: float) -> int:
    """The thread count for the next interval, given the cores' worth `others` used in the last one.

    A core counts as taken once other processes use half of it (a thread sharing it would hold up the
    rest), and as free again only once they use under a quarter of it: the gap keeps the count from
    going back and forth when a neighbour's use hovers around one threshold."""
    after_half = cores - math.floor(others + 0.5)  # the cores left when each one they half use is theirs
    after_quarter = cores - math.floor(others + 0.75)  # ... when each one they use a quarter of is theirs
    wanted = after_quarter if after_quarter > current else after_half if after_half < current else current
    return min(ceiling, max(1, wanted))


class ThreadGovernor(Callback):
    """trainer.threads=auto on a CPU: train on as many threads as there are cores no other process is using.

    Looks every `INTERVAL` seconds of training (from the training thread: the thread count is a
    property of the thread that runs the parallel regions) and changes the count when two looks in a
    row want the same new one. The first time it gives a core back it says so on the console; later
    changes go to train.log. `summary()` is what summary.json records.
    """

    INTERVAL = 1.0
    RECORDED_CHANGES = 50

    def __init__(
        self,
        ceiling: int,
        source: str,
        say: Callable[[str], None],
        log: Callable[[str], None],
        use: CpuUse | None = None,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ceiling, self.source = ceiling, source
        self.say, self.log = say, log
        self.use = use or CpuUse(clock=clock)
        self.cores = len(self.use.cores)
        self.set_threads, self.clock = set_threads, clock
        self.threads = ceiling
        self.lowest = ceiling
        self.changes: list[dict[str, Any]] = []
        self._told = False
        self._pending: int | None = None  # the count the last look wanted, not yet confirmed
        self._started = clock()
        self._next_look = self._started + self.INTERVAL
        set_threads(ceiling)

    def on_train_step(self, trainer, step: int, steps: int) -> None:
        if self.clock() >= self._next_look:
            self.look()

    def look(self) -> None:
        """Measure what other processes used since the last look and fit the thread count to it."""
        self._next_look = self.clock() + self.INTERVAL
        others = self.use.others_busy()
        if others is None:
            return
        wanted = fitting_threads(self.threads, self.ceiling, self.cores, others)
        if wanted == self.threads:
            self._pending = None
        elif self._pending != wanted:  # one look can be a blip (a kernel thread, a short command): ask twice
            self._pending = wanted
        else:
            self._pending = None
            self._change(wanted, others)

    def _change(self, threads: int, others: float) -> None:
        before, self.threads = self.threads, threads
        self.lowest = min(self.lowest, threads)
        self.set_threads(threads)
        if len(self.changes) < self.RECORDED_CHANGES:
            seconds = round(self.clock() - self._started, 1)
            self.changes.append({"seconds": seconds, "threads": threads, "others_busy_cores": round(others, 2)})
        if threads < before and not self._told:
            self._told = True
            self.say(
                f"notice: other processes are using {others:.1f} of the {self.cores} cores this run may use: "
                f"training on {threads} thread{'s' if threads != 1 else ''} instead of {before} while they do "
                f"(threads that share cores with them wait for each other and can run 10x slower). "
                f"trainer.threads={before} would keep {before}."
            )
        else:
            self.log(f"threads: {threads} (other processes used {others:.1f} of {self.cores} cores)")

    def summary(self) -> dict[str, Any]:
        return {
            "setting": "auto",
            "ceiling": self.ceiling,
            "ceiling_from": self.source,
            "lowest": self.lowest,
            "at_end": self.threads,
            "changes": self.changes,
        }


class SlowdownWatch(Callback):
    """Says once when training steps take `FACTOR` times as long as they did early in the run, with the
    likely cause (other processes busy on the CPU, when /proc can tell) and what to do.

    The pace to compare against is timed like `display.TimeEstimate`'s (from the second step, at least
    `WINDOW` seconds); later windows of `WINDOW` seconds are compared with it. Only training steps are
    timed: a window that spans an epoch's end starts again at the next epoch.
    """

    FACTOR = 3.0
    WINDOW = 3.0
    MIN_STEPS = 4

    def __init__(
        self,
        say: Callable[[str], None],
        device_type: str,
        use: CpuUse | None = None,
        clock: Callable[[], float] = time.perf_counter,
        budgeted: bool = False,
    ):
        self.say, self.device_type = say, device_type
        self.budgeted = budgeted  # trainer.time_limit: the run still ends on time, with fewer steps
        self.use = use if use is not None else CpuUse()
        self.clock = clock
        self.pace: float | None = None  # seconds a step, early in the run
        self.told = False
        self._window = PaceCheck(self.WINDOW, self.MIN_STEPS)
        self._stage: int | None = None

    def on_epoch_start(self, trainer, epoch: int, steps: int) -> None:
        self._window.restart()  # validation happened since the last step: not a training step's time
        stage = getattr(trainer, "stage", None)
        if stage != self._stage:  # a fine-tuning's second stage trains every layer: a new pace, not a slowdown
            self._stage, self.pace = stage, None

    def on_train_step(self, trainer, step: int, steps: int) -> None:
        if self.told:
            return
        now = self.clock()
        if not self._window.started:
            self.use.others_busy()  # others' use is measured over the same windows
        if not self._window.due(step, now):
            return
        per_step = self._window.take(step, now)
        others = self.use.others_busy()
        if self.pace is None:
            self.pace = per_step
        elif per_step >= self.FACTOR * self.pace:
            self.told = True
            self.say(self._message(per_step, others))

    def _message(self, per_step: float, others: float | None) -> str:
        slower = per_step / self.pace
        text = (
            f"notice: training slowed down: a step takes {per_step:.3g} s now against {self.pace:.3g} s earlier "
            f"in the run ({slower:.1f}x), "
            + (
                "so fewer steps fit in trainer.time_limit (the plan is refitted to them). "
                if self.budgeted
                else f"so the time estimate is {slower:.1f}x too short. "
            )
        )
        cores = len(self.use.cores)
        if others is not None and others >= 0.5:
            return text + (
                f"Other processes are using {others:.1f} of the {cores} cores this run may use: pause or stop "
                f"them (see top), or give this run fewer threads than cores (trainer.threads)."
            )
        if self.device_type == "cpu" and others is not None:
            return text + (
                "No other process is busy on its cores: the machine may be throttling (heat, power saving, a "
                "shared virtual machine) or swapping (free -h)."
            )
        return text + "Another process may be using the machine (top; nvidia-smi on a GPU)."
