"""What trainer.time_limit does to a trainer, for time_budget.py: `time_evaluation` (validation's cost per
example, timed on a few batches) and `rebuild_schedule` (the schedule built again for the fitted length
and brought to the step already taken).
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable
from typing import Any

from cnntrain.errors import ConfigError
from cnntrain.time_plan import Plan

EVAL_BATCHES = 3  # timed after one untimed batch

# A cnntrain.trainer.Trainer (this module is below nothing that needs it imported).
_Trainer = Any


def time_evaluation(trainer: _Trainer, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per validation example, timed over EVAL_BATCHES batches after an untimed first one (as
    validation runs: the trainer's precision, tta, EMA); the model goes back to training mode."""
    sizes: list[int] = []

    def counted(batches):
        for images, labels in batches:
            sizes.append(len(labels))
            yield images, labels

    began = clock()
    trainer.evaluate(counted(itertools.islice(trainer.val_loader, 1)))
    first_done = clock()
    trainer.evaluate(counted(itertools.islice(trainer.val_loader, 1, 1 + EVAL_BATCHES)))
    ended = clock()
    trainer.model.train()
    if len(sizes) > 1:
        return (ended - first_done) / max(1, sum(sizes[1:]))
    return (first_done - began) / max(1, sum(sizes))


def rebuild_schedule(trainer: _Trainer, new_schedule: Callable, plan: Plan, steps_done: int, epochs_done: int):
    """The run's schedule built again for `plan` and stepped to where training is; None, or what refused it.

    A per-step schedule (one-cycle, cosine) gets the fitted optimizer steps (as epochs of the loader's
    steps: possibly fractional) and is stepped `steps_done` times; a per-epoch one (step, multistep,
    exponential) the fitted epochs, stepped `epochs_done` times. A plateau schedule follows validation
    and a constant rate has nothing to fit: both are kept."""
    old = trainer.schedule
    if old is None or old.monitor:
        return None
    by_step = old.interval == "step"
    epochs = plan.optimizer_steps / plan.steps_per_epoch if by_step else plan.epochs
    epochs = int(epochs) if float(epochs).is_integer() else epochs
    groups = trainer.optimizer.param_groups
    lrs = [group["lr"] for group in groups]
    for group in groups:  # the configured lr, which one-cycle takes as its peak by default
        group["lr"] = trainer.optimizer.defaults["lr"]
    try:
        schedule = new_schedule(trainer.optimizer, epochs)
    except (ConfigError, ValueError, ZeroDivisionError) as err:  # cosine's warm-up longer than the fitted run, ...
        for group, lr in zip(groups, lrs):
            group["lr"] = lr  # the old schedule goes on where it was
        return str(err)
    with warnings.catch_warnings():  # torch warns of a scheduler stepped without an optimizer step: wanted here
        warnings.simplefilter("ignore")
        for _ in range(steps_done if by_step else epochs_done):
            schedule.scheduler.step()
    trainer.schedule = schedule
    return None
