"""trainer.time_limit's arithmetic, without torch: the setting read (`parse_time_limit`) and the plan that
fits the training steps into the time left (`fit_plan`), as pure functions that the tests check exactly.

The callback that measures a run and applies the plan is time_budget.py's.

The plan counts loader batches (what a step's time is measured over, data loading included); the
schedule is fitted to the optimizer steps they make (`Plan.optimizer_steps`: with
trainer.accumulate_grad_batches=N, N batches are one optimizer step).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from cnntrain.errors import ConfigError
from cnntrain.registry import is_number

# Each unit's spellings and its seconds: 2m, 2min, 90s, 90sec, 1h, 1hour, 1h30m, 2.5m.
UNITS = {
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "hours": 3600,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*")
EXAMPLES = "90s, 2m, 2.5m or 1h30m"


@dataclass(frozen=True)
class TimeLimit:
    """trainer.time_limit read: `seconds`, and `text` as the user wrote it (what messages show)."""

    seconds: float
    text: str


def parse_time_limit(value) -> TimeLimit | None:
    """trainer.time_limit: None (no limit), or a time with its unit ("2m", "90s", "1h30m", "2.5min").

    A bare number is refused: 120 could be seconds or minutes, and guessing wrong costs a whole run."""
    key = "trainer.time_limit"
    if value is None:
        return None
    if is_number(value):
        if value <= 0:
            raise ConfigError(f"{key} must be a time above zero such as {EXAMPLES} (null: no limit), got {value}.")
        shown = int(value) if float(value).is_integer() else value
        raise ConfigError(f"{key}={shown} has no unit: write {shown}s, 2m or 1h.")
    text = str(value).strip().lower() if isinstance(value, str) else None
    seconds = _seconds(text) if text else None
    if seconds is None:
        raise ConfigError(
            f"{key} must be null (no limit) or a time with its unit such as {EXAMPLES} "
            f"(units: s/sec, m/min, h/hour), got {value!r}."
        )
    if seconds <= 0:
        raise ConfigError(f"{key} must be a time above zero such as {EXAMPLES} (null: no limit), got {value!r}.")
    return TimeLimit(seconds, str(value).strip())


def _seconds(text: str) -> float | None:
    """The seconds `text` says ("1h30m" -> 5400), None when it is not parts of a number and a unit."""
    position, total, seen = 0, 0.0, set()
    while position < len(text):
        match = _PART.match(text, position)
        if not match or match.group(2) not in UNITS or UNITS[match.group(2)] in seen:
            return None
        seen.add(UNITS[match.group(2)])  # each unit once: "1m1m" is a slip, not 2 minutes
        total += float(match.group(1)) * UNITS[match.group(2)]
        position = match.end()
    return total if seen else None


@dataclass(frozen=True)
class Costs:
    """What the rest of a run costs, measured: a training step (a loader batch, its data included), an
    epoch's end (its validation, checkpoints and plots) and the end of the run (the test, best.pt
    reloaded, the last files)."""

    step_seconds: float
    epoch_end_seconds: float
    final_seconds: float


@dataclass(frozen=True)
class Position:
    """Where training is: `batch` batches done of epoch `epoch`, of `batches_per_epoch` (after
    trainer.limit_train_batches); at most `max_epochs` (trainer.epochs); `accumulate` batches a step."""

    epoch: int
    batch: int
    batches_per_epoch: int
    max_epochs: int
    accumulate: int = 1


@dataclass(frozen=True)
class Plan:
    """The fitted run: `epochs` epochs, the last of them `last_epoch_batches` long (a whole epoch's
    batches when it is not cut short)."""

    epochs: int
    last_epoch_batches: int
    batches_per_epoch: int
    accumulate: int = 1

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in a whole epoch (a short last group of batches still steps)."""
        return -(-self.batches_per_epoch // self.accumulate)

    @property
    def last_epoch_steps(self) -> int:
        return -(-self.last_epoch_batches // self.accumulate)

    @property
    def optimizer_steps(self) -> int:
        """The run's optimizer steps from its first: what the schedule is fitted to."""
        return (self.epochs - 1) * self.steps_per_epoch + self.last_epoch_steps

    @property
    def partial(self) -> bool:
        return self.last_epoch_batches < self.batches_per_epoch

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """ "2 epochs + 330 steps", "3 epochs", "0.83 of an epoch"."""
        whole = self.epochs - 1 if self.partial else self.epochs
        epochs = f"{whole} epoch{'s' if whole != 1 else ''}"
        steps = self.last_epoch_steps
        if whole == 0:
            return f"{steps / self.steps_per_epoch:.2f} of an epoch"
        return f"{epochs} + {steps:,} step{'s' if steps != 1 else ''}" if self.partial else epochs


class LeastOfRecent:
    """An epoch end's cost: the least of its last `keep` measurements, by name (curves.png is drawn at some
    ends only: counted at every epoch to come, one such spike would take whole epochs off the plan)."""

    def __init__(self, keep: int):
        self.keep = keep
        self._values: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> float:
        recent = self._values.setdefault(name, [])
        recent[:] = [*recent, value][-self.keep :]
        return min(recent)


class PaceCheck:
    """The step time inside an epoch, looked at every `every` seconds over at least `min_steps` steps: an
    epoch that is long against the budget (fmnist_fast's one epoch on a slow CPU) is refitted before it
    ends, when the machine got faster or slower (contention.SlowdownWatch compares paces with it too).
    `restart` at an epoch's start: validation is not a step's time."""

    def __init__(self, every: float, min_steps: int = 1):
        self.every, self.min_steps = every, min_steps
        self._since: tuple[int, float] | None = None

    @property
    def started(self) -> bool:
        """Whether a look is under way (False after `restart`, until the next `due`)."""
        return self._since is not None

    def restart(self) -> None:
        self._since = None

    def due(self, steps: int, now: float) -> bool:
        if self._since is None:
            self._since = (steps, now)
        return now - self._since[1] >= self.every and steps - self._since[0] >= self.min_steps

    def take(self, steps: int, now: float) -> float:
        """The seconds a step took since the last look (or the epoch's first step); the next look starts here."""
        first, began = self._since
        self._since = (steps, now)
        return (now - began) / max(1, steps - first)


def fit_plan(time_left: float, costs: Costs, at: Position) -> Plan:
    """The most batches that fit in `time_left` seconds from `at`, each epoch's end and the run's end
    included, up to trainer.epochs. The epoch being trained always ends (at least where it is now,
    rounded up to a whole optimizer step): a budget already spent still validates, tests and saves.

    For each number of epoch ends still to come (the current epoch's included), the batches affordable
    after paying for those ends and the run's end, within what that many epoch ends can hold: the best
    of them is the plan. The loop stops at the first count that cannot reach its last epoch.
    """
    per_epoch, ahead = at.batches_per_epoch, at.batches_per_epoch - at.batch
    best = (1, 0)  # (epoch ends to come, batches to train): at least, end the current epoch now
    for ends in range(1, at.max_epochs - at.epoch + 2):
        spare = time_left - costs.final_seconds - ends * costs.epoch_end_seconds
        affordable = math.floor(spare / costs.step_seconds) if spare > 0 else -1
        first = 0 if ends == 1 else ahead + (ends - 2) * per_epoch + 1  # one batch into the last epoch
        if affordable < first:
            break
        best = (ends, min(affordable, ahead + (ends - 1) * per_epoch))
    ends, batches = best
    last = at.batch + batches if ends == 1 else batches - ahead - (ends - 2) * per_epoch
    return Plan(at.epoch + ends - 1, _whole_steps(last, at, ends == 1), per_epoch, at.accumulate)


def _whole_steps(last: int, at: Position, current: bool) -> int:
    """The last epoch's batches rounded down to whole optimizer steps (not below what the current epoch
    has done, rounded up; at least one step), and never above an epoch."""
    if last >= at.batches_per_epoch:
        return at.batches_per_epoch
    lowest = -(-at.batch // at.accumulate) * at.accumulate if current else at.accumulate
    return min(at.batches_per_epoch, max(last // at.accumulate * at.accumulate, lowest, 1))
