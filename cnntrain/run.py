"""Running a training: check and build (build.py), fit, test the best checkpoint, write the summary.

`run(cfg)` is what `cnntrain`, `cnntrain.train` and a resume call; it returns a
`RunResult` (the trained model, the summary, the run folder). Any failure, a config
error included, is recorded in summary.json (status "failed" and the message) before
it is raised, so a sweep's table can show it; Ctrl-C is recorded as "interrupted"
with the command that resumes the run. What the run says at its start and end (its first
lines, the result table and its notices) is run_report.py's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cnntrain.build import TrainingParts, build_training
from cnntrain.checkpoint import check_resumed_classes, load_checkpoint, restore_training
from cnntrain.checks import check_config
from cnntrain.display import Reporter
from cnntrain.distributed import from_rank_zero, join_group, launched_by_torchrun, lost_peer, process_rank
from cnntrain.errors import CnnTrainError, ConfigError, RunInterrupted
from cnntrain.hooks import exceptions_told
from cnntrain.interruptions import (
    StopOnSignals,
    continue_text,
    file_error_message,
    interrupted_message,
    interrupted_outside_training,
    lost_process_message,
    resume_command,
    saved_text,
)
from cnntrain.process import budget_start, console_may_go_away
from cnntrain.run_callbacks import RunCallbacks, build_callbacks
from cnntrain.run_folder import RunFolder, provenance
from cnntrain.run_report import chosen_on_test_notice, report_end, report_start
from cnntrain.speed_switches import nondeterministic_message
from cnntrain.trainer import Callback, EpochMetrics, Trainer


@dataclass
class RunResult:
    """What a finished training gives back to Python: the model (with the best epoch's weights), its summary."""

    model: torch.nn.Module
    summary: dict[str, Any]
    history: list[EpochMetrics]
    classes: list[str]

    @property
    def run_dir(self) -> Path:
        """The run folder (absolute)."""
        return Path(self.summary["run_dir"])

    @property
    def best_val_acc(self) -> float:
        return self.summary["best_val_acc"]

    @property
    def test_acc(self) -> float:
        return self.summary["test_acc"]


def train(
    cfg: DictConfig,
    run_dir: Path | str | None = None,
    resume_from: dict[str, Any] | None = None,
    callbacks: list[Callback] = (),
    command_line: list[str] | None = None,
) -> dict[str, Any]:
    """Train as `cfg` says; returns the summary also written to `<run_dir>/summary.json`."""
    return run(cfg, run_dir, resume_from, callbacks, command_line).summary


def run(
    cfg: DictConfig,
    run_dir: Path | str | None = None,
    resume_from: dict[str, Any] | None = None,
    callbacks: list[Callback] = (),
    command_line: list[str] | None = None,
) -> RunResult:
    """Train as `cfg` says in `run_dir` (default: Hydra's folder, else a new one under outputs/).

    `resume_from` is the run's last checkpoint when continuing it (see resuming.py);
    `callbacks` are user callbacks, called after the built-in ones. `command_line`: the
    overrides `cfg` was composed from, when known (the recipe line then tells the values
    typed from those an experiment set).
    """
    if launched_by_torchrun() > 1:  # rank 0 makes the folder (or takes Hydra's), every rank uses it
        join_group()
        run_dir = from_rank_zero(lambda: str(RunFolder.for_run(cfg, run_dir).path))
    folder = RunFolder.for_run(cfg, run_dir)
    folder.writes = process_rank() == 0  # a distributed run's rank 0 writes the folder (distributed.py)
    if folder.writes:
        folder.refuse_links_out()  # train.log, checkpoints/, ... never written through a link out of the folder
    folder.lock()  # no second process in this folder while this one trains
    try:
        if resume_from is None:
            folder.refuse_if_it_holds_a_run()
        with console_may_go_away():  # `| tee` killed by the same Ctrl-C, a closed terminal: train.log goes on
            return _run_in(folder, cfg, resume_from, callbacks, command_line)
    finally:
        folder.unlock()


def _run_in(
    folder: RunFolder,
    cfg: DictConfig,
    resume_from: dict[str, Any] | None,
    callbacks: list[Callback],
    command_line: list[str] | None,
) -> RunResult:
    """The run in its locked folder: its summary says how it ended, whatever happens."""
    folder.save_config_if_missing(cfg)
    reporter = Reporter(
        folder.train_log if folder.writes else None, quiet=cfg.trainer.get("progress") == "none" or not folder.writes
    )
    started, budget_from = time.time(), budget_start()  # trainer.time_limit counts from budget_from
    signals = StopOnSignals(say=lambda text: reporter.line(text, style="yellow"))
    try:
        checked = check_config(cfg, list(callbacks))  # every name and setting, before any data is loaded
        with signals:  # after check_config: the user's modules it imports may set handlers of their own
            parts = build_training(checked, resuming=resume_from is not None)
            if resume_from is not None:
                check_resumed_classes(resume_from, parts.spec.classes)
            return _fit_and_test(parts, folder, reporter, (started, budget_from), resume_from, signals, command_line)
    except KeyboardInterrupt as err:
        message = err.message if isinstance(err, RunInterrupted) else interrupted_outside_training(folder, cfg)
        reporter.line(message, style="yellow")
        _write_ended_summary(folder, "interrupted", message, started, _resume_command(folder, cfg))
        raise RunInterrupted(message, signals.exit_code) from None
    except OmegaConfBaseException as err:  # a key removed with ~, a section replaced by a value
        message = (
            f"The config has no usable '{err.full_key or err.key}': was it removed with ~, or a section "
            f"replaced by a plain value? `cnntrain --cfg job ...` shows the config a run gets."
        )
        reporter.log_only(f"error: {message}")
        _write_ended_summary(folder, "failed", message, started)
        raise ConfigError(message) from err
    except OSError as err:  # a full disk, a read-only folder: say what is safe and how to go on
        message = file_error_message(err, folder, cfg)
        reporter.log_only(f"error: {message}")
        _write_ended_summary(folder, "failed", message, started, _resume_command(folder, cfg))
        raise CnnTrainError(message) from err
    except Exception as err:  # recorded for the sweep table, then raised to the caller
        lost = launched_by_torchrun() and lost_peer(err)  # another rank died: say that, not gloo's words
        nondeterministic = nondeterministic_message(err)  # trainer.deterministic=true met an op without it
        message = lost_process_message(err, folder, cfg) if lost else nondeterministic or str(err)
        reporter.log_only(f"error: {message}")  # the CLI prints it on the console
        _write_ended_summary(folder, "failed", message, started)
        if lost or nondeterministic:
            raise (CnnTrainError if lost else ConfigError)(message) from None
        raise
    finally:
        reporter.close()


def _fit_and_test(
    parts: TrainingParts,
    folder: RunFolder,
    reporter: Reporter,
    starts: tuple[float, tuple[float, str]],
    resume_from: dict[str, Any] | None,
    signals: StopOnSignals,
    command_line: list[str] | None,
) -> RunResult:
    cfg, settings, spec, (started, budget_from) = parts.checked.cfg, parts.checked, parts.spec, starts
    report_start(parts, folder, reporter, command_line)
    callbacks = build_callbacks(parts, folder, reporter, budget_from)
    trainer = parts.trainer(callbacks.all, folder)
    start_epoch = 1
    if resume_from is not None:
        if callbacks.finetune:
            callbacks.finetune.before_restore(trainer, resume_from)
        start_epoch = restore_training(resume_from, trainer)
        reporter.line(
            f"resumed from checkpoints/last.pt: {saved_text(resume_from)}, continuing "
            f"{continue_text(resume_from)} of {settings.trainer.epochs}"
        )
    signals.trainer = trainer
    with exceptions_told(trainer, lambda problem: reporter.line(f"notice: {problem}", style="yellow")):
        history = fit(trainer, start_epoch, callbacks, folder, cfg)
        signals.trainer = None
        if trainer.stop_reason:
            reporter.line(f"stopped after epoch {history[-1].epoch}: {trainer.stop_reason}")

        best = callbacks.checkpointer.best
        parts.group.barrier()  # every rank reads the best.pt rank 0 wrote
        tested = tested_checkpoint(folder, reporter)
        trainer.use_weights(load_checkpoint(tested)["state_dict"])  # with trainer.ema, best.pt's average
        tested_figures = trainer.evaluate(parts.test_loader).figures("test")  # test_loss, test_acc, ...
    trainer.test_ended(tested_figures)
    summary = {
        "status": "completed",
        "run_dir": str(folder),
        "model": settings.model.name,
        "data": settings.data.name,
        "epochs": len(history),
        "best_epoch": best.epoch,
        "best_metric": settings.trainer.checkpoint.monitor,
        **callbacks.checkpointer.summary(),  # "best": the monitor, mode and value that chose best.pt, its epoch
        "best_val_acc": best.val_acc,
        "best_val_loss": best.val_loss,
        **tested_figures,  # test_loss, test_acc, test_top5 (more than 5 classes), test_balanced_acc, test_macro_f1
        "final_epoch": history[-1].as_dict(),
        "stopped_early": trainer.stop_reason,
        "tested_checkpoint": tested.name,
        "params": parts.params,
        "input_size": parts.recipe["input_size"],
        "train_size": spec.train_size,
        "val_size": spec.val_size,
        "num_classes": len(spec.classes),  # a sweep's table marks chance level by it
        # What the speed switches resolved to on this device (the config may say auto).
        "channels_last": parts.channels_last,
        "precision": parts.precision,
        "deterministic": settings.trainer.deterministic,
        "threads": callbacks.threads_summary(settings.trainer.threads, parts.threads[1]),
        # What validation and the test measured: the weights' average (its decay) or the trained weights (null);
        # each image alone (null) or with its mirror image (hflip).
        "ema": settings.trainer.ema,
        "tta": settings.trainer.tta,
        "test_size": spec.test_size,
        "val_source": spec.val_source,
        "test_is_validation": spec.test_is_validation,
        **provenance(parts.device),
        "wall_seconds": time.time() - started,
        "mean_epoch_seconds": sum(m.epoch_seconds for m in history) / len(history),
        # A quick look (trainer.limit_*_batches, data.subset) is not a full run: say so.
        "limits": parts.checked.limits or None,
        # trainer.time_limit: the budget, what was measured and fitted, how the run ended (null: no limit).
        "time_limit": callbacks.budget.summary() if callbacks.budget else None,
        # The training split's class counts, trainer.class_weights as used and data.sampler (class_balance.py).
        "imbalance": parts.balance.summary(),
    }
    folder.write_summary(summary)
    for problem in trainer.run_ended(summary):
        reporter.line(f"notice: {problem}", style="yellow")
    last = history[-1]
    chosen = callbacks.checkpointer.chosen_on_validation(last)  # best.pt is not the last epoch, for its val figure
    chosen_on_test = spec.test_is_validation and tested == folder.best_checkpoint and chosen
    notice = chosen_on_test_notice(best.epoch, last, spec.has_test_split) if chosen_on_test else None
    report_end(summary, reporter, notice, callbacks.display.balanced)
    return RunResult(parts.model, summary, history, list(spec.classes))


def tested_checkpoint(folder: RunFolder, reporter: Reporter) -> Path:
    """best.pt, the weights the test split is for; last.pt, with a notice, when best.pt was lost."""
    if folder.best_checkpoint.is_file():
        return folder.best_checkpoint
    reporter.line(
        f"notice: {folder.best_checkpoint} is missing (deleted or lost since it was written): the test "
        f"split is evaluated with the last epoch's weights (last.pt) instead.",
        style="yellow",
    )
    return folder.last_checkpoint


def fit(
    trainer: Trainer, start_epoch: int, callbacks: RunCallbacks, folder: RunFolder, cfg: DictConfig
) -> list[EpochMetrics]:
    """trainer.fit, with an interruption turned into a message saying what is saved and how to resume."""
    try:
        return trainer.fit(start_epoch)
    except KeyboardInterrupt:
        raise RunInterrupted(interrupted_message(folder, cfg, trainer, callbacks.checkpointer.saved)) from None
    finally:
        callbacks.display.close()


def _write_ended_summary(
    folder: RunFolder, status: str, message: str, started: float, resume: str | None = None
) -> None:
    """The summary of a run that did not complete (`resume`: the command that continues it, when it
    can be). A failure to write it (the disk that just filled up) must not hide the error being
    reported, so it is given up silently."""
    try:
        folder.write_summary(
            {
                "status": status,
                "error": message,
                "run_dir": str(folder),
                "wall_seconds": time.time() - started,
                **({"resume_command": resume} if status == "interrupted" or resume else {}),
            }
        )
    except OSError:
        pass


def _resume_command(folder: RunFolder, cfg: DictConfig) -> str | None:
    """The command that continues the run, or None when no checkpoint was saved (nothing to continue)."""
    return resume_command(folder, cfg) if folder.last_checkpoint.is_file() else None
