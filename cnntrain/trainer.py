"""The training loop: `Trainer.fit` runs epochs of `train_one_epoch` + `evaluate`.

Everything around the loop (console display, metrics file, checkpoints, early
stopping) is a `Callback`, so the loop stays short and imports no display code.
Loss and accuracy are summed on the device and read back every `log_every` steps, at the
end of the epoch and, so that a slow model shows figures from its first step, at steps
1, 2, 4, 8, ... before the first `log_every` (`reads_progress`): never every step, so a
GPU is not made to wait for the host.
How each optimizer step is taken (gradient accumulation, clipping, autocast, fp16
loss scaling) is a `StepOptions`, taken by the trainer's base `trainer_steps.TrainerSteps`; what a
checkpoint keeps of the trainer is its other base, `trainer_state.TrainerState`; the evaluation
loop and test-time augmentation are evaluator.py's. After every callback's hooks of a step or an
epoch end the trainer calls their `after_train_step` / `after_epoch_end` (where checkpoints are
written). `Callback` (hooks.py), `EpochMetrics`, `StepProgress` (metrics.py), `StepOptions`
(trainer_steps.py), `Evaluation` and `mean_log_probabilities` (evaluator.py) are importable from
here too, as they always were.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from cnntrain.distributed import Group
from cnntrain.ema import ModelEma
from cnntrain.errors import TrainingError
from cnntrain.evaluator import Evaluation, evaluate, mean_log_probabilities
from cnntrain.hooks import Callback, read_only_config
from cnntrain.metrics import EpochMetrics, StepProgress, _RunningStats
from cnntrain.trainer_state import TrainerState
from cnntrain.trainer_steps import StepOptions, TrainerSteps

# Names other modules and users import from here (they moved to hooks.py, metrics.py, evaluator.py, trainer_steps.py).
__all__ = ["Callback", "EpochMetrics", "Evaluation", "StepOptions", "StepProgress", "Trainer", "mean_log_probabilities"]


@dataclass
class _EpochInProgress:
    """The epoch being trained: what a checkpoint taken in its middle must hold to carry on exactly."""

    epoch: int
    steps: int
    lr: float  # the learning rate at the epoch's start (what metrics.csv records)
    stats: _RunningStats
    started: float  # perf_counter of the epoch's start (moved back by the time a resumed part took)
    step: int = 0  # steps done


class Trainer(TrainerState, TrainerSteps):
    """Runs epochs over `train_loader`, evaluating on `val_loader` after each.

    `schedule` is an `optim.LrSchedule` (or None). `forward` is what computes the
    logits (a torch.compile'd model, say); `model` is the module whose weights are
    trained and saved. A callback ends training early by setting `stop_reason`.
    `ema` (trainer.ema, an `ema.ModelEma`): the average of the weights, updated after every
    optimizer step; then it is what `evaluate` measures and what checkpoints' "state_dict"
    holds. `tta` (trainer.tta): "hflip" makes `evaluate` average over each batch and its mirror.
    `run_folder` and `config` (the run's folder and resolved config) are shown to callbacks read-only.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        schedule,
        train_loader,
        val_loader,
        device: torch.device,
        epochs: int,
        callbacks: Sequence[Callback] = (),
        log_every: int = 20,
        loss_fn: Callable = F.cross_entropy,
        options: StepOptions | None = None,
        forward: Callable | None = None,
        group: Group | None = None,
        ema: ModelEma | None = None,
        tta: str | None = None,
        run_folder: Path | str | None = None,
        config: DictConfig | None = None,
    ):
        self.model = model
        self.group = group or Group.single()  # the processes of a distributed run (distributed.py)
        self.forward = forward or model
        self.optimizer = optimizer
        self.schedule = schedule
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.device = device
        self.epochs = epochs
        self.callbacks = list(callbacks)
        self.log_every = max(1, log_every)
        self.loss_fn = loss_fn  # training loss (label smoothing goes here); evaluation uses plain cross-entropy
        self.options = options or StepOptions()
        self.scaler = torch.amp.GradScaler(device.type) if self.options.grad_scaler else None
        self.history: list[EpochMetrics] = []
        self.stop_reason: str | None = None
        self.stop_requested = False  # set by request_stop(): interrupt after the current step
        self.stage: int | None = None  # the stage of a staged training (finetune.py); recorded per epoch
        self._epoch: _EpochInProgress | None = None
        self._resume_position: dict | None = None  # a mid-epoch checkpoint's "in_epoch", until used
        # trainer.time_limit's plan (time_budget.py): epoch `epochs` ends after this many batches (None: all of them).
        # Read at every step, so lowering it ends the epoch being trained at its next optimizer step.
        self.last_epoch_batches: int | None = None
        self.ema = ema  # trainer.ema: the average of the weights, updated every optimizer step; what evaluate measures
        self.tta = tta  # trainer.tta: None, or "hflip" (evaluate averages each batch's and its mirror's probabilities)
        self._run_folder = Path(run_folder) if run_folder is not None else None
        self._config = read_only_config(config)

    @property
    def run_folder(self) -> Path | None:
        """The run's folder (where a logger writes), None for a trainer outside a run."""
        return self._run_folder

    @property
    def config(self) -> DictConfig | None:
        """The run's resolved config, read-only (a copy: changing it changes nothing), None outside a run."""
        return self._config

    @property
    def between_optimizer_steps(self) -> bool:
        """True when no gradients are waiting to be accumulated: a checkpoint taken now is complete."""
        current = self._epoch
        return current is not None and (current.step % self.options.accumulate == 0 or current.step == current.steps)

    def request_stop(self) -> None:
        """Interrupt training (KeyboardInterrupt) after the current step, once callbacks have seen it."""
        self.stop_requested = True

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def test_ended(self, metrics: dict[str, float]) -> None:
        """Every callback's on_test_end, with the test's figures (run.py calls it after the test)."""
        self._call("on_test_end", metrics)

    def failed(self, exception: BaseException) -> list[str]:
        """Every callback's on_exception, even when one of them fails: returns what those failures said,
        so that the run reports them and still ends with `exception`."""
        return self._call_each("on_exception", exception)

    def run_ended(self, summary: dict) -> list[str]:
        """Every callback's on_run_end (run.py calls it once summary.json is written); what failed is returned
        for the run to report as notices: the run has completed all the same."""
        return self._call_each("on_run_end", summary)

    def _call_each(self, hook: str, *args) -> list[str]:
        problems = []
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(self, *args)
            except Exception as err:  # its first line: a library's message can run to a page
                first_line = (str(err).strip().splitlines() or [""])[0][:300]
                problems.append(f"{type(callback).__name__}.{hook} failed: {type(err).__name__}: {first_line}")
        return problems

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def optimizer_steps_per_epoch(self) -> int:
        return self.options.optimizer_steps(len(self.train_loader))

    def epoch_batches(self, epoch: int) -> int:
        """The batches epoch `epoch` trains: all of the loader's, or fewer in the last epoch of a time limit's plan."""
        full = len(self.train_loader)
        cut = self.last_epoch_batches if epoch == self.epochs else None
        return full if cut is None else max(1, min(full, cut))

    def fit(self, start_epoch: int = 1) -> list[EpochMetrics]:
        """Train epochs `start_epoch`..`epochs` (a resumed run starts later, with `history` filled in)."""
        self._call("on_fit_start")
        epoch = start_epoch - 1
        while epoch < self.epochs:  # read each time: a callback may change it (time_budget.py fits it to a time)
            epoch += 1
            if self.stop_reason:  # set by a callback, or restored from a run that had stopped
                break
            started = time.perf_counter()
            train_loss, train_acc, train_seconds = self.train_one_epoch(epoch)
            lr = self._epoch.lr
            share = self._epoch.steps / max(1, len(self.train_loader))  # an epoch cut short: its share of the examples
            self._epoch = None
            val = self.evaluate(self.val_loader)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val.loss,
                val_acc=val.acc,
                val_top5=val.top5,
                val_balanced_acc=val.balanced_acc,
                val_macro_f1=val.macro_f1,
                lr=lr,
                epoch_seconds=time.perf_counter() - started,
                train_examples_per_s=self.train_loader.num_examples * share / max(train_seconds, 1e-9),
                stage=self.stage,
            )
            self._step_schedule_after_epoch(metrics)
            self.history.append(metrics)
            try:
                self._call("on_epoch_end", metrics)
            finally:  # the checkpoints of this epoch, with every callback's state: kept even when a hook failed
                self._call("after_epoch_end", metrics)
            if self.stop_requested:
                raise KeyboardInterrupt
        self._call("on_fit_end")
        return self.history

    def _begin_epoch(self, epoch: int, steps: int) -> _EpochInProgress:
        """The epoch's running state: fresh, or as a mid-epoch checkpoint of this epoch left it."""
        position, self._resume_position = self._resume_position, None
        current = _EpochInProgress(
            epoch, steps, self.current_lr(), _RunningStats(self.device, group=self.group), time.perf_counter()
        )
        if position is not None and position["epoch"] == epoch:
            current.lr, current.step = position["lr"], position["step"]
            current.stats.load_state_dict(position["stats"])
            current.started -= position["train_seconds"]
            self.train_loader.resume_at(current.step, position["augment_rng"])
        return current

    def train_one_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One pass over the training data; returns (loss, accuracy, seconds)."""
        self.model.train()
        self.train_loader.set_epoch(epoch)
        steps = self.epoch_batches(epoch)
        accumulate = self.options.accumulate
        self._epoch = current = self._begin_epoch(epoch, steps)
        stats = current.stats
        self._call("on_epoch_start", epoch, steps)
        for step, (images, labels) in enumerate(self.train_loader, current.step + 1):
            with self._autocast():
                logits = self.forward(images)
                loss = self.loss_fn(logits, labels)
            # The mean over a group of batches, so accumulating N batches of B is one batch of N*B.
            group_start = (step - 1) // accumulate * accumulate
            if step - 1 == group_start:
                # Cleared at the start of each group, not after the step: the last step's
                # gradients stay readable at the epoch's end (TensorBoard's histograms).
                self.optimizer.zero_grad(set_to_none=True)
            self._backward(loss * self._share(labels, step) / min(accumulate, steps - group_start))
            if step % accumulate == 0 or step == steps:
                self._optimizer_step()
            stats.add(logits, labels, loss, step)
            current.step = step
            if self.group.ddp:  # every rank stops at the same step, or the others would wait for it forever
                self.stop_requested = self.group.any(self.stop_requested, self.device)
            self._call("on_train_step", step, steps)
            if self.reads_progress(step, steps):
                loss_value, acc = stats.read()
                self._check_finite(loss_value, stats, epoch)
                seconds = time.perf_counter() - current.started
                self._call(
                    "on_train_progress",
                    StepProgress(epoch, step, steps, loss_value, acc, stats.count / max(seconds, 1e-9)),
                )
            self._call("after_train_step", step, steps)  # a mid-epoch checkpoint: every callback's state in it
            if self.stop_requested and self.between_optimizer_steps and step < steps:
                raise KeyboardInterrupt
            if step >= self.epoch_batches(epoch) and (step % accumulate == 0 or step >= steps):
                current.steps = step  # the plan's end of the epoch (a time limit may have moved it since its start)
                break
        loss_value, acc = stats.read()
        return loss_value, acc, time.perf_counter() - current.started

    def reads_progress(self, step: int, steps: int) -> bool:
        """Whether the running loss and accuracy are read (a host sync) after `step` of `steps`: every
        `log_every` steps and at the epoch's last step, and before the first `log_every` also at steps
        1, 2, 4, 8, ...: a model whose 20 steps take minutes shows figures after its first step, for a
        handful of extra syncs per epoch and none once training is under way."""
        first_steps = step < self.log_every and step & (step - 1) == 0
        return step % self.log_every == 0 or step == steps or first_steps

    def evaluate(self, loader, keep_outputs: bool = False) -> Evaluation:
        """evaluator.evaluate with this trainer's model, device, precision and tta: validation, the run's test
        and cnntrain-eval. With EMA the averaged weights are measured (uncompiled: `forward` computes the
        trained model's logits)."""
        model = self.model if self.ema is None else self.ema.module
        forward = self.forward if self.ema is None else model
        return evaluate(forward, model, loader, self.device, self.group, self.tta, self._autocast, keep_outputs)

    def _check_finite(self, loss: float, stats: _RunningStats, epoch: int) -> None:
        if math.isfinite(loss):
            return
        bad_step = int(stats.first_bad_step.item())
        raise TrainingError(
            f"The training loss became {loss} in epoch {epoch} at step {bad_step} (lr {self.current_lr():g}). "
            f"Training stopped; the checkpoints of finished epochs are kept. Try a lower learning rate "
            f"(optimizer.lr), gradient clipping (trainer.grad_clip_norm=1.0), a different init (model.init), "
            f"or a model with normalisation layers."
        )
