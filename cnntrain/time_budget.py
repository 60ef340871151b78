"""trainer.time_limit: `TimeBudget`, the callback that fits a run's steps to a time and keeps it on time.

1. Warm-up: the first WARMUP_STEPS steps a process trains are not timed (allocator, oneDNN's caches).
2. Measure: the steady step time over at least MIN_STEPS steps and WINDOW_SECONDS (at most WINDOW_SHARE
   of the budget), from one step's end to the next (data loading in it); then a few validation batches
   (with trainer.tta, as validation runs), per example.
3. Fit: time_plan.fit_plan on the time left -> `trainer.epochs` and `trainer.last_epoch_batches`; the
   schedule is rebuilt for the fitted optimizer steps and brought to the step already taken
   (`rebuild_schedule`): one-cycle and cosine anneal to their end at the plan's last step.
4. Inside an epoch every REFIT_EVERY s (or share of the budget), and at every epoch's end: the step time
   (and at the end, validation, checkpoints, plots) measured again; when the plan would end past the
   budget, or well inside it, the rest is fitted again. The learning rate then jumps by the difference
   of the two schedules at this step (small: both are at nearly the same share of their length).
5. Last resort, at every step: when the time left is only what the epoch's end and the run's end need,
   the epoch ends at its next optimizer step, is validated, and the run tests and ends as completed.

Its `state_dict` (in every checkpoint) holds the plan, what was measured and the time used: a resumed
run counts the time already used, measures its steps again and fits what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from cnntrain.display import format_step_seconds
from cnntrain.time_fitting import rebuild_schedule, time_evaluation
from cnntrain.time_plan import Costs, LeastOfRecent, PaceCheck, Plan, Position, TimeLimit, fit_plan
from cnntrain.trainer import Callback, EpochMetrics, Trainer

WARMUP_STEPS, MIN_STEPS = 3, 5  # steps not timed; the fewest timed before the first fit
WINDOW_SECONDS, WINDOW_SHARE = 1.5, 0.03  # the timing window: this long, at most this share of the budget
MARGIN_SECONDS, MARGIN_SHARE = 1.5, 0.02  # kept free of any plan: the clock's noise, the interpreter's exit
FILES_GUESS = 0.2  # an epoch end's checkpoints and plots, until the first is measured
END_FILES = 1.5  # the run's end (best.pt reloaded, summary, plots) as a multiple of an epoch end's files
REFIT_SHARE = 0.03  # refit when the end moves by more than this share of the budget (a step varies ~10%)
RECENT = 3  # an epoch end's costs: the least of the last RECENT measurements (one slow plot is not a trend)
REFIT_EVERY, REFIT_EVERY_SHARE = 5.0, 0.1  # inside an epoch, the step time is looked at again this often


class TimeBudget(Callback):
    """Fits the run to `limit` (a time_plan.TimeLimit) counted from `start` (time.monotonic; `counted_from`
    says what that was). `new_schedule(optimizer, epochs)` builds the configured schedule (build.py's);
    `test_examples`: what the final test evaluates; `clock`: injectable for tests."""

    def __init__(
        self,
        limit: TimeLimit,
        start: float,
        counted_from: str,
        max_epochs: int,
        test_examples: int,
        new_schedule: Callable,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit, self.start, self.counted_from = limit, start, counted_from
        self.max_epochs, self.test_examples = max_epochs, test_examples
        self.new_schedule, self.say, self.clock = new_schedule, say, clock
        self.plan: Plan | None = None
        self.measured: dict[str, float] = {"files_seconds": FILES_GUESS}
        self.refits: list[dict[str, Any]] = []
        self.used_before = 0.0  # the time earlier processes of this run used (a resume)
        self.stop: str | None = None  # how the run ended: "plan", "cut", "trainer.epochs", or its stop reason
        self._steps = 0  # steps this process trained
        self._at: tuple[int, int] = (0, 0)  # (epoch, batches done of it) after the last step
        self._window: tuple[int, float] | None = None  # (steps, time) where the timing window began
        self._measuring = True
        self._last_step_end = 0.0
        self._epoch_timing: tuple[int, float] | None = None  # (steps, time) of this epoch's timed part's start
        self._epoch_began = 0.0
        self._ends_seen = 0  # epoch ends this process measured
        self._timed: list[tuple[int, float]] = []  # (steps, seconds) timed in the last epochs
        self._recent = LeastOfRecent(RECENT)  # an epoch end's costs
        self._validation_end = 0.0  # when the last epoch's validation ended (0: none in this process yet)
        self._pace = PaceCheck(max(REFIT_EVERY, REFIT_EVERY_SHARE * limit.seconds))

    def used(self) -> float:
        return self.clock() - self.start + self.used_before

    def _margin(self) -> float:  # kept free by every plan; the hard stop cuts once half of it is gone
        return MARGIN_SECONDS + MARGIN_SHARE * self.limit.seconds

    def _costs(self, trainer: Trainer) -> Costs:
        per_example = self.measured.get("eval_seconds_per_example", 0.0)
        files = self.measured["files_seconds"]
        return Costs(
            step_seconds=self.measured["step_seconds"],
            epoch_end_seconds=per_example * trainer.val_loader.num_examples + files,
            final_seconds=per_example * self.test_examples + END_FILES * files,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used_before = float(state["used"])
        self._at = tuple(state.get("at", (0, 0)))
        self.plan = Plan(**state["plan"]) if state.get("plan") else None
        self.measured.update(state.get("measured", {}))
        self.refits = list(state.get("refits", []))

    def state_dict(self) -> dict[str, Any]:
        plan = self.plan.as_dict() if self.plan else None
        state = {"used": self.used(), "plan": plan, "measured": dict(self.measured), "refits": list(self.refits)}
        return {**state, "at": list(self._at)}  # (epoch, batches done) at this checkpoint

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.plan is not None:  # a resume: its plan goes on until this process has measured its own steps
            trainer.epochs, trainer.last_epoch_batches = self.plan.epochs, self.plan.last_epoch_batches
            self.say(
                f"time limit {self.limit.text}: {self.used_before:.1f} s of it were used before; the fitted plan "
                f"({self.plan.optimizer_steps:,} steps, {self.plan.text()}) goes on, fitted again to the time left "
                f"now and once this process has timed its steps"
            )
            self._refit_on_resume(trainer)

    def _refit_on_resume(self, trainer: Trainer) -> None:
        """The time left fitted with the steps' time measured before (a new trainer.time_limit takes effect
        here); a budget with nothing left ends the run as completed, tested again."""
        epoch, batch = self._at
        batches = len(trainer.train_loader)
        if "step_seconds" not in self.measured or not epoch:
            return
        at = Position(epoch, batch, batches, self.max_epochs, trainer.options.accumulate)
        self._fit(trainer, at, "resume", epoch_ended=batch >= batches)
        if batch >= batches and trainer.epochs <= epoch:
            self.stop = "plan"
            trainer.stop_reason = f"the time limit ({self.limit.text}): its time was used before this resume"

    def on_epoch_start(self, trainer: Trainer, epoch: int, steps: int) -> None:
        self._epoch_timing, self._epoch_began = None, self.clock()
        self._pace.restart()
        if self._validation_end:  # the last epoch's end after its validation: checkpoints, metrics.csv, plots
            files = max(0.0, self._epoch_began - self._validation_end)
            if self._ends_seen:  # a process's first epoch end pays once for imports (the plots'), the first
                self.measured["files_seconds"] = self._recent.add(
                    "files_seconds", files
                )  # checkpoint: not what the next ones will cost
            self._ends_seen += 1

    def on_train_step(self, trainer: Trainer, step: int, steps: int) -> None:
        now = self._last_step_end = self.clock()
        self._steps += 1
        epoch = trainer.history[-1].epoch + 1 if trainer.history else 1
        self._at = (epoch, step)
        if self._epoch_timing is None or self._steps == WARMUP_STEPS:
            self._epoch_timing = (self._steps, now)  # this epoch's steps are timed from here (after the warm-up)
        if self._measuring:
            self._measure(trainer, epoch, step, now)
        elif trainer.group.any(self._pace.due(self._steps, now), trainer.device):  # the ranks look together
            self.measured["step_seconds"] = self._pace.take(self._steps, now)
            at = Position(epoch, step, len(trainer.train_loader), self.max_epochs, trainer.options.accumulate)
            self._fit(trainer, at, f"epoch {epoch} step {step}")
        self._hard_stop(trainer, epoch, step)

    def _measure(self, trainer: Trainer, epoch: int, step: int, now: float) -> None:
        if self._steps == WARMUP_STEPS:
            self._window = (self._steps, now)
            return
        window = min(WINDOW_SECONDS, WINDOW_SHARE * self.limit.seconds)
        timed, elapsed = (self._steps - self._window[0], now - self._window[1]) if self._window else (0, 0.0)
        done = trainer.group.any(timed >= MIN_STEPS and elapsed >= window, trainer.device)  # ranks decide together
        if not done:
            return
        if trainer.device.type == "cuda":  # steps are queued asynchronously: wait for them before timing
            torch.cuda.synchronize(trainer.device)
            elapsed = self.clock() - self._window[1]
        self.measured["step_seconds"] = elapsed / timed
        self.measured["eval_seconds_per_example"] = time_evaluation(trainer, self.clock)
        self._measuring = False
        at = Position(epoch, step, len(trainer.train_loader), self.max_epochs, trainer.options.accumulate)
        self._fit(trainer, at, "resume" if self.used_before else f"epoch {epoch} step {step}")

    def _hard_stop(self, trainer: Trainer, epoch: int, step: int) -> None:
        """The last resort: end this epoch at its next optimizer step when only its end and the run's are left."""
        needed = self._margin() / 2  # before the first measurement: the margin alone (a start that was slow)
        if "step_seconds" in self.measured:
            costs = self._costs(trainer)
            needed += costs.epoch_end_seconds + costs.final_seconds
        cut = trainer.group.any(self.limit.seconds - self.used() <= needed, trainer.device)
        if not cut or (trainer.epochs == epoch and trainer.epoch_batches(epoch) <= step):
            return
        trainer.epochs, trainer.last_epoch_batches = epoch, step
        self.stop = "cut"
        self.say(
            f"time limit {self.limit.text}: {self.used():.1f} s used; what is left is for validation, the test and "
            f"the run's end, so epoch {epoch} ends at step {step} (validated, then tested as usual)"
        )

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        """Measure the epoch (its steps, its validation); fit the rest again when the plan is off; say why the
        run ends when this epoch is its last. The first callback (run_callbacks.py): this is right after
        validation, and before the epoch's line and checkpoints, which show and hold what it decides."""
        self._validation_end = self.clock()
        if not trainer.stop_reason and metrics.epoch < trainer.epochs and self._measure_epoch(trainer, metrics):
            batches = len(trainer.train_loader)
            at = Position(metrics.epoch, batches, batches, self.max_epochs, trainer.options.accumulate)
            self._fit(trainer, at, f"epoch {metrics.epoch} end", epoch_ended=True)
        if trainer.stop_reason:
            return
        if metrics.epoch >= trainer.epochs and self.stop != "cut" and metrics.epoch >= self.max_epochs:
            self.stop = "trainer.epochs"
        elif metrics.epoch >= trainer.epochs:  # a completed run, ended by its time limit: the summary says so
            self.stop = self.stop or "plan"
            if self.stop == "cut":
                ended = "the epoch was cut short to leave time for validation and the test"
            else:  # trainer.epochs is below its setting: a plan set it
                ended = f"trained the {self.plan.optimizer_steps:,} steps fitted to it ({self.plan.text()})"
            trainer.stop_reason = f"the time limit ({self.limit.text}): {ended}"

    def after_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        reason = trainer.stop_reason  # early stopping or a user's callback, after this one's on_epoch_end
        if reason and not reason.startswith(f"the time limit ({self.limit.text})"):
            self.stop = reason

    def _measure_epoch(self, trainer: Trainer, metrics: EpochMetrics) -> bool:
        """The step time over the last epochs that make WINDOW_SECONDS (short epochs' noise would refit at every
        end), validation per example; False while no step was timed yet (an epoch of one step)."""
        validation = max(0.0, self._validation_end - self._last_step_end)
        per_example = validation / max(1, trainer.val_loader.num_examples)
        self.measured["eval_seconds_per_example"] = self._recent.add("eval_seconds_per_example", per_example)
        if self._epoch_timing and self._steps > self._epoch_timing[0]:
            steps, began = self._epoch_timing
            self._timed.append((self._steps - steps, self._last_step_end - began))
            while len(self._timed) > 1 and sum(seconds for _, seconds in self._timed[1:]) >= WINDOW_SECONDS:
                self._timed.pop(0)
            self.measured["step_seconds"] = sum(t for _, t in self._timed) / sum(n for n, _ in self._timed)
        self._measuring = "step_seconds" not in self.measured
        return not self._measuring

    def _fit(self, trainer: Trainer, at: Position, where: str, epoch_ended: bool = False) -> None:
        costs = self._costs(trainer)
        # At an epoch's end its validation is paid (its files are not yet): the plan counts a whole epoch end.
        paid = costs.epoch_end_seconds - self.measured["files_seconds"] if epoch_ended else 0.0
        left = self.limit.seconds - self.used() - self._margin() + paid
        plan = trainer.group.share(fit_plan(left, costs, at))
        done = (at.epoch - 1) * plan.steps_per_epoch + -(-at.batch // at.accumulate)
        old = self.plan
        moved = abs(plan.optimizer_steps - old.optimizer_steps) * costs.step_seconds if old else 0.0
        if old is not None and moved <= max(self._margin() / 4, REFIT_SHARE * self.limit.seconds):
            return  # on time, near enough: the margin absorbs it (and the lr does not jump for nothing)
        self.plan = plan
        trainer.epochs, trainer.last_epoch_batches = plan.epochs, plan.last_epoch_batches
        epochs_done = at.epoch if epoch_ended else at.epoch - 1
        problem = rebuild_schedule(trainer, self.new_schedule, plan, done, epochs_done)
        self._say_plan(trainer, costs, old, problem, where)

    def _say_plan(self, trainer: Trainer, costs: Costs, old: Plan | None, problem: str | None, where: str) -> None:
        plan, step = self.plan, format_step_seconds(costs.step_seconds)
        validations = plan.epochs - len(trainer.history)
        evaluation = validations * (costs.epoch_end_seconds - self.measured["files_seconds"]) + costs.final_seconds
        schedule = (
            f"; the schedule could not be fitted ({problem}) and keeps its length"
            if problem
            else "; the schedule is fitted to them"
            if trainer.schedule is not None and not trainer.schedule.monitor
            else ""
        )
        reached = " (trainer.epochs, with time to spare)" if plan.epochs == self.max_epochs and not plan.partial else ""
        if old is None:
            self.say(
                f"time limit {self.limit.text}: {plan.optimizer_steps:,} steps fit ({plan.text()}{reached}; "
                f"{step} a step, {evaluation:.{0 if evaluation >= 10 else 1}f} s for validation and test){schedule}"
            )
            return
        self.refits.append(
            {
                "at": where,
                "used_seconds": round(self.used(), 3),
                "step_seconds": costs.step_seconds,
                "fitted_steps": plan.optimizer_steps,
                "fitted_epochs": plan.epochs,
                "last_epoch_steps": plan.last_epoch_steps,
            }
        )
        self.say(
            f"time limit {self.limit.text}: steps take {step} now; refitted from {old.optimizer_steps:,} to "
            f"{plan.optimizer_steps:,} steps ({plan.text()}{reached}){schedule}"
        )

    def summary(self) -> dict[str, Any]:
        """summary.json's "time_limit": the budget, what was measured and fitted, how the run ended."""
        plan, used = self.plan, self.used()
        return {
            "limit": self.limit.text,
            "budget_seconds": self.limit.seconds,
            "counted_from": self.counted_from,
            "used_before_resume_seconds": round(self.used_before, 3),
            "step_seconds": self.measured.get("step_seconds"),
            "eval_seconds_per_example": self.measured.get("eval_seconds_per_example"),
            "epoch_end_files_seconds": self.measured["files_seconds"],
            "fitted_steps": plan.optimizer_steps if plan else None,
            "fitted_epochs": plan.epochs if plan else None,
            "last_epoch_steps": plan.last_epoch_steps if plan else None,
            "refits": self.refits,
            "stop": self.stop,
            "seconds_used": round(used, 3),
            "within_budget": used <= self.limit.seconds,
        }
