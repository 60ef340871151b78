"""The callbacks of a run: the display, metrics.csv, checkpoints, the loggers, early stopping, the
second stage of a fine-tuning, then the user's; built from the run's `TrainingParts` (build.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnntrain.callbacks import Checkpointer, EarlyStopping, MetricsWriter, ProgressDisplay, Reporter, TimeEstimate
from cnntrain.checkpoint import training_checkpoint
from cnntrain.checkpoint_policy import check_measured
from cnntrain.class_balance import shows_balanced_figures
from cnntrain.contention import SlowdownWatch, ThreadGovernor
from cnntrain.finetune import TwoStageFinetune, scaled_optimizer
from cnntrain.inspector import smallest_input_size
from cnntrain.loggers import logger_callbacks
from cnntrain.model_setup import forward_for
from cnntrain.run_folder import RunFolder
from cnntrain.time_budget import TimeBudget
from cnntrain.trainer import Callback

if TYPE_CHECKING:  # build.py imports this module: the type only, for the signatures
    from cnntrain.build import TrainingParts


@dataclass
class RunCallbacks:
    """The callbacks of a run; the display and checkpointer are also kept by name for the run's messages."""

    display: ProgressDisplay
    checkpointer: Checkpointer
    all: list[Callback]
    finetune: TwoStageFinetune | None = None
    governor: ThreadGovernor | None = None  # trainer.threads=auto on a CPU
    budget: TimeBudget | None = None  # trainer.time_limit's (time_budget.py)

    def threads_summary(self, setting: str | int, source: str) -> dict:
        """summary.json's "threads": the governor's record, or the fixed count (and OMP_NUM_THREADS when auto
        took it from there)."""
        if self.governor is not None:
            return self.governor.summary()
        import torch

        from_omp = {"from": source} if setting == "auto" and source == "OMP_NUM_THREADS" else {}
        return {"setting": setting, "threads": torch.get_num_threads(), **from_omp}


def build_callbacks(
    parts: TrainingParts, folder: RunFolder, reporter: Reporter, budget_start: tuple[float, str] | None = None
) -> RunCallbacks:
    """Display, metrics.csv, checkpoints, loggers, early stopping, the time limit, then the user's callbacks.
    `budget_start`: (time.monotonic, what it is) trainer.time_limit counts from (process.budget_start)."""
    checked, trainer = parts.checked, parts.checked.trainer
    live = parts.group.writes and (
        trainer.progress == "bar" or (trainer.progress == "auto" and reporter.console.is_terminal)
    )
    watched = (trainer.checkpoint.monitor, trainer.early_stopping.metric)
    display = ProgressDisplay(reporter, live=live, balanced=shows_balanced_figures(parts.balance.summary(), watched))
    run_info = parts.run_info()
    check_measured("trainer.checkpoint.monitor", trainer.checkpoint.monitor, len(parts.spec.classes))
    checkpointer = Checkpointer(
        folder,
        lambda trainer: training_checkpoint(trainer, run_info),
        every_minutes=trainer.checkpoint_every_minutes,
        policy=trainer.checkpoint,
    )
    estimate = TimeEstimate(reporter, lambda: quicker_options(parts))
    # In a distributed run only rank 0 writes metrics.csv, plots and logs (its reporter alone prints).
    writes = parts.group.writes
    budget = time_budget(parts, reporter, budget_start)
    governor = thread_governor(parts, reporter)
    callbacks = [
        *([budget] if budget else []),  # first: its on_epoch_end comes right after validation (time_budget.py)
        *([governor] if governor else []),
        display,
        *([estimate] if trainer.time_limit is None else []),  # a time limit says its own plan
        *([SlowdownWatch(say_notice(reporter), parts.device.type, budgeted=budget is not None)] if writes else []),
        *([MetricsWriter(folder.metrics_csv)] if writes else []),
        checkpointer,
        *trial_pruning(parts, reporter),  # before the loggers: they see a pruned run's summary.json entry
        *(
            logger_callbacks(
                checked.logger,
                folder,
                parts.spec.classes,
                parts.transform.mean,
                parts.transform.std,
                f"{checked.model.name} on {parts.spec.name}",
                reporter.line,
            )
            if writes
            else []
        ),
    ]
    stopping = trainer.early_stopping
    if stopping.patience:
        check_measured("trainer.early_stopping.metric", stopping.metric, len(parts.spec.classes))
        callbacks.append(EarlyStopping(stopping.metric, stopping.patience, stopping.min_delta, stopping.mode))
    finetune = two_stage_finetune(parts, folder, checkpointer, reporter)
    if finetune:
        callbacks.append(finetune)  # after the checkpointer: its after_epoch_end reloads the best.pt just written
    return RunCallbacks(display, checkpointer, callbacks + checked.callbacks, finetune, governor, budget)


def trial_pruning(parts: TrainingParts, reporter: Reporter) -> list[Callback]:
    """A job of an Optuna search (sweep.trial set by the sweeper): the callback that reports to its trial.
    One process only: a stop decided by rank 0 alone would leave the other ranks of a distributed run waiting."""
    trial = (parts.checked.cfg.get("sweep") or {}).get("trial")
    if trial is None or not parts.group.writes or parts.group.world_size > 1:
        return []
    from omegaconf import OmegaConf

    from cnntrain.trial_pruning import TrialPruning

    return [TrialPruning(OmegaConf.to_container(trial, resolve=True), say_notice(reporter))]


def say_notice(reporter: Reporter):
    return lambda text: reporter.line(text, style="yellow")


def thread_governor(parts: TrainingParts, reporter: Reporter) -> ThreadGovernor | None:
    """trainer.threads=auto on a CPU: the governor that gives cores back to busy neighbours (contention.py)."""
    ceiling, source = parts.threads  # what build.py started the run with (contention.starting_threads)
    if parts.checked.trainer.threads != "auto" or parts.device.type != "cpu":
        return None
    if source == "OMP_NUM_THREADS":  # someone chose the count (the user, a launcher): kept as it is
        return None
    return ThreadGovernor(ceiling, source, say_notice(reporter), reporter.log_only)


def time_budget(parts: TrainingParts, reporter: Reporter, start: tuple[float, str] | None) -> TimeBudget | None:
    """trainer.time_limit's callback, or None without a limit; counted from `start` (default: now)."""
    settings = parts.checked.trainer
    if settings.time_limit is None:
        return None
    began, counted_from = start or (time.monotonic(), "job start")
    return TimeBudget(
        settings.time_limit,
        began,
        counted_from,
        settings.epochs,
        parts.test_loader.num_examples,
        parts.new_schedule,
        say=reporter.line,
    )


def two_stage_finetune(
    parts: TrainingParts, folder: RunFolder, checkpointer: Checkpointer, reporter: Reporter
) -> TwoStageFinetune | None:
    """The second stage of a fine-tuning (finetune.unfreeze_at), or None when the run has one stage."""
    settings = parts.checked.finetune
    if settings.unfreeze_at is None:
        return None
    return TwoStageFinetune(
        settings.unfreeze_at,
        settings.lr_scale,
        folder.best_checkpoint,
        scaled_optimizer(parts.new_optimizer, parts.new_schedule),
        save_last=checkpointer.save_last,
        say=reporter.line,
        keep_norm_statistics=settings.keep_norm_statistics,
        new_forward=lambda model: forward_for(model, parts.checked.trainer, parts.device, parts.group)[0],
    )


def quicker_options(parts: TrainingParts) -> str:
    """What would make this run's epochs shorter, for the long-epoch warning."""
    size, name = parts.recipe["input_size"], parts.recipe["name"]
    smallest = smallest_input_size(parts.model, parts.spec.channels)
    options = []
    if smallest and smallest < size:
        options.append(f"a smaller data.resize (now {size}; the smallest {name} takes is {smallest})")
    options += [
        "a smaller model (e.g. model=lenet_bn or model=resnet18 data.resize=32)",
        "trainer.limit_train_batches=20 or data.subset=2000 for a quick look",
    ]
    if parts.device.type == "cpu":
        options.append("a GPU (device=cuda)")
    return "; ".join(options)
