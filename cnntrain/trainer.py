"""The training loop: `Trainer.fit` runs epochs of `train_one_epoch` + `evaluate`.

Everything around the loop (console display, metrics file, checkpoints, early
stopping) is a `Callback`, so the loop stays short and imports no display code.
Loss and accuracy are summed on the device and read back every `log_every` steps, at the
end of the epoch and, so that a slow model shows figures from its first step, at steps
1, 2, 4, 8, ... before the first `log_every` (`reads_progress`): never every step, so a
GPU is not made to wait for the host.
How each optimizer step is taken (gradient accumulation, clipping, autocast, fp16
loss scaling) is a `StepOptions`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnntrain.distributed import Group
from cnntrain.ema import ModelEma
from cnntrain.errors import TrainingError


@dataclass
class EpochMetrics:
    """One row of metrics.csv."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_seconds: float
    train_examples_per_s: float
    # Optional columns: present only in runs that have them (as_dict leaves out the ones that are None).
    stage: int | None = None  # 1 or 2 in a two-stage fine-tuning (finetune.unfreeze_at); None otherwise
    val_top5: float | None = None  # top-5 validation accuracy, for data with more than 5 classes

    def as_dict(self) -> dict:
        row = asdict(self)
        return {key: value for key, value in row.items() if value is not None or key not in OPTIONAL_METRICS}


OPTIONAL_METRICS = ("stage", "val_top5")


@dataclass
class Evaluation:
    """What `Trainer.evaluate` measured. Unpacks as (loss, accuracy), as it always has."""

    loss: float  # mean cross-entropy
    acc: float
    top5: float | None = None  # top-5 accuracy; None for 5 classes or fewer
    # With keep_outputs (on the CPU, one row per example in the loader's order; None otherwise):
    predicted: torch.Tensor | None = None  # (N,) the class of the highest logit, as the accuracy counts it
    probabilities: torch.Tensor | None = None  # (N, classes) softmax, float32 (with tta=hflip: the two passes' mean)
    labels: torch.Tensor | None = None  # (N,)

    def __iter__(self):
        return iter((self.loss, self.acc))


@dataclass
class StepProgress:
    """What the display gets when the running figures are read (`Trainer.reads_progress`)."""

    epoch: int
    step: int
    steps: int
    loss: float
    acc: float
    examples_per_s: float


@dataclass
class StepOptions:
    """How one optimizer step is taken."""

    accumulate: int = 1  # batches whose gradients are summed before each optimizer step
    grad_clip_norm: float | None = None  # clip the gradients' total norm to this; None: no clipping
    autocast_dtype: torch.dtype | None = None  # bf16/fp16 mixed precision; None: float32

    def optimizer_steps(self, batches: int) -> int:
        """Optimizer steps in an epoch of `batches` batches (a short last group still steps)."""
        return -(-batches // self.accumulate)

    @property
    def grad_scaler(self) -> bool:
        """fp16 scales the loss so that small gradients do not underflow (bf16 has float32's range)."""
        return self.autocast_dtype is torch.float16


class Callback:
    """The public extension point: subclass it and override the hooks you need.

    Pass instances to `cnntrain.train(..., callbacks=[...])`, or list them in the config
    (`callbacks: [{_target_: my_module.MyCallback, some_arg: 1}]`). The trainer calls
    each hook on every callback, in order, with itself as the first argument; the
    built-in display, metrics.csv, checkpoints and loggers are callbacks too and run
    before the user's. These names and arguments are stable:

    - `on_fit_start(trainer)`: before the first epoch (of a resumed run too, with
      `trainer.history` holding the finished epochs).
    - `on_epoch_start(trainer, epoch, steps)`: before an epoch's first training step.
    - `on_train_step(trainer, step, steps)`: after every training step (1-based), with
      no device sync: cheap enough for a step counter.
    - `on_train_progress(trainer, progress)`: every `trainer.log_every` steps, at an
      epoch's last step and at its steps 1, 2, 4, 8, ... below `log_every` (so the first
      figures come at once), with a `StepProgress` (running loss, accuracy, examples/s).
    - `on_epoch_end(trainer, metrics)`: after the epoch's validation, with its
      `EpochMetrics` (also the last item of `trainer.history`).
    - `on_fit_end(trainer)`: after the last epoch.

    To end training after the current epoch (early stopping, a pruned trial), set
    `trainer.stop_reason` to a sentence saying why; it is printed and saved in the
    summary. An exception raised in a hook ends the run as failed. `trainer.request_stop()`
    interrupts the run after the current step instead (what Ctrl-C and SIGTERM do).
    """

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer", epoch: int, steps: int) -> None: ...
    def on_train_step(self, trainer: "Trainer", step: int, steps: int) -> None: ...
    def on_train_progress(self, trainer: "Trainer", progress: StepProgress) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", metrics: EpochMetrics) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...


class _RunningStats:
    """Loss and correct-prediction sums kept on the device, and the first step whose loss was not finite.

    With `top5`, also the examples whose label is among the 5 highest logits, counted when
    the logits have more than 5 classes (on the device too: no extra host sync). In a
    distributed run the reads sum the counters of every rank (`group`), so every rank reads
    the figures of the whole global batch or split. Soft targets (trainer.mixup's class
    probabilities) count a prediction as correct when it is their most likely class.
    """

    def __init__(self, device: torch.device, top5: bool = False, group: Group | None = None):
        self.group = group or Group.single()
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.first_bad_step = torch.zeros((), device=device, dtype=torch.long)  # 0: none yet
        self.count = 0
        self.top5 = top5
        self.top5_correct = torch.zeros((), device=device, dtype=torch.long)
        self.top5_counted = False  # some batch had more than 5 classes

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor, step: int = 0,
            predicted: torch.Tensor | None = None) -> None:
        loss = loss.detach().float()
        self.loss_sum += loss * len(labels)
        if labels.dim() == 2:  # soft targets (MixUp / CutMix): the class with the largest share
            labels = labels.argmax(dim=1)
        predicted = logits.argmax(dim=1) if predicted is None else predicted
        self.correct += (predicted == labels).sum()
        if self.top5 and logits.shape[1] > 5:
            self.top5_correct += (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum()
            self.top5_counted = True
        if step:  # remembered on the device, so no step waits for the host to look at its loss
            bad = ~torch.isfinite(loss) & (self.first_bad_step == 0)
            self.first_bad_step = torch.where(bad, step, self.first_bad_step)
        self.count += len(labels)

    def _totals(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss sum, correct, count) over every rank."""
        count = torch.tensor(self.count, device=self.loss_sum.device, dtype=torch.long)
        loss_sum, correct, count = self.group.sum(self.loss_sum, self.correct, count)
        return loss_sum, correct, int(count.item())

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy); this is the one place a host sync happens."""
        loss_sum, correct, count = self._totals()
        return loss_sum.item() / max(count, 1), correct.item() / max(count, 1)

    def read_top5(self) -> float | None:
        """Top-5 accuracy; None when not counted (not asked for, or 5 classes or fewer)."""
        counted = torch.tensor(int(self.top5_counted), device=self.loss_sum.device)
        count = torch.tensor(self.count, device=self.loss_sum.device, dtype=torch.long)
        top5_correct, counted, count = self.group.sum(self.top5_correct, counted, count)
        return top5_correct.item() / max(int(count.item()), 1) if counted.item() else None

    def state_dict(self) -> dict:
        """The counters of every rank summed (a distributed run's checkpoint holds the whole global batch's)."""
        loss_sum, correct, count = self._totals()
        return {"loss_sum": loss_sum.detach().cpu(), "correct": correct.cpu(),
                "first_bad_step": self.first_bad_step.cpu(), "count": count}

    def load_state_dict(self, state: dict) -> None:
        """Counters saved as every rank's sums: rank 0 takes them, the others start from zero."""
        if self.group.rank != 0:
            return
        device = self.loss_sum.device
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        self.first_bad_step = state["first_bad_step"].to(device)
        self.count = state["count"]


@dataclass
class _EpochInProgress:
    """The epoch being trained: what a checkpoint taken in its middle must hold to carry on exactly."""

    epoch: int
    steps: int
    lr: float  # the learning rate at the epoch's start (what metrics.csv records)
    stats: _RunningStats
    started: float  # perf_counter of the epoch's start (moved back by the time a resumed part took)
    step: int = 0  # steps done


def mean_log_probabilities(logits: torch.Tensor, mirrored_logits: torch.Tensor) -> torch.Tensor:
    """log((p + p_mirrored) / 2), float32, without underflow: test-time flip augmentation (tta=hflip), for
    `Trainer.evaluate` and cnntrain-predict alike. Its softmax is the mean of the two passes' probabilities."""
    both = torch.stack((logits.float().log_softmax(dim=1), mirrored_logits.float().log_softmax(dim=1)))
    return torch.logsumexp(both, dim=0) - math.log(2)


class Trainer:
    """Runs epochs over `train_loader`, evaluating on `val_loader` after each.

    `schedule` is an `optim.LrSchedule` (or None). `forward` is what computes the
    logits (a torch.compile'd model, say); `model` is the module whose weights are
    trained and saved. A callback ends training early by setting `stop_reason`.
    `ema` (trainer.ema, an `ema.ModelEma`): the average of the weights, updated after every
    optimizer step; then it is what `evaluate` measures and what checkpoints' "state_dict"
    holds. `tta` (trainer.tta): "hflip" makes `evaluate` average over each batch and its mirror.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, schedule, train_loader,
                 val_loader, device: torch.device, epochs: int, callbacks: Sequence[Callback] = (),
                 log_every: int = 20, loss_fn: Callable = F.cross_entropy, options: StepOptions | None = None,
                 forward: Callable | None = None, group: Group | None = None, ema: ModelEma | None = None,
                 tta: str | None = None):
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
        self.ema = ema  # trainer.ema: the average of the weights, updated every optimizer step; what evaluate measures
        self.tta = tta  # trainer.tta: None, or "hflip" (evaluate averages each batch's and its mirror's probabilities)

    def state_dict(self) -> dict:
        """Everything of the training that a checkpoint keeps to resume it exactly (see checkpoint.py).

        The key names are those of the checkpoint format (`state_dict` is the model's weights: with
        EMA the averaged ones, the trained ones then under `raw_state_dict`).
        """
        weights = {"state_dict": self.model.state_dict()} if self.ema is None else {
            "state_dict": self.ema.state_dict(), "raw_state_dict": self.model.state_dict(),
            "ema_updates": self.ema.updates}
        return {
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict() if self.schedule is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler else None,
            "history": [m.as_dict() for m in self.history],
            "stop_reason": self.stop_reason,
            "stage": self.stage,
            "in_epoch": self._position(),
        }

    def _position(self) -> dict | None:
        """Where in an epoch training is, when asked between two of its steps; None at an epoch's end."""
        current = self._epoch
        if current is None or current.step == current.steps:
            return None
        generator = self.train_loader.generator
        return {"epoch": current.epoch, "step": current.step, "lr": current.lr,
                "stats": current.stats.state_dict(), "train_seconds": time.perf_counter() - current.started,
                "augment_rng": generator.get_state() if generator is not None else None}

    @property
    def between_optimizer_steps(self) -> bool:
        """True when no gradients are waiting to be accumulated: a checkpoint taken now is complete."""
        current = self._epoch
        return current is not None and (current.step % self.options.accumulate == 0 or current.step == current.steps)

    def request_stop(self) -> None:
        """Interrupt training (KeyboardInterrupt) after the current step, once callbacks have seen it."""
        self.stop_requested = True

    def load_state_dict(self, state: dict) -> None:
        """Put back what `state_dict` gave: weights, optimizer, schedule, loss scaler, history, stop reason."""
        self.load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None and state.get("scheduler") is not None:
            self.schedule.load_state_dict(state["scheduler"])
        if self.scaler and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.history = [EpochMetrics(**row) for row in state["history"]]
        self.stop_reason = state.get("stop_reason")
        self.stage = state.get("stage")
        self._resume_position = state.get("in_epoch")

    def load_weights(self, state: dict) -> None:
        """A checkpoint's weights: the trained ones into the model ("raw_state_dict" in a checkpoint of a
        run with EMA, else "state_dict") and, with EMA, the average into it ("state_dict" and its
        "ema_updates"; a checkpoint without an average starts it again from the model's weights)."""
        raw = state.get("raw_state_dict")
        self.model.load_state_dict(state["state_dict"] if raw is None else raw)
        if self.ema is not None:
            if raw is None:
                self.ema.restart(self.model)
            else:
                self.ema.load_state_dict(state["state_dict"], state.get("ema_updates", 0))

    def use_weights(self, state_dict: dict) -> None:
        """Training over: the model takes `state_dict` (a checkpoint's "state_dict", the average with EMA)
        and `evaluate` measures the model itself from now on, through `forward`, as cnntrain-eval does."""
        self.model.load_state_dict(state_dict)
        self.ema = None

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def optimizer_steps_per_epoch(self) -> int:
        return self.options.optimizer_steps(len(self.train_loader))

    def fit(self, start_epoch: int = 1) -> list[EpochMetrics]:
        """Train epochs `start_epoch`..`epochs` (a resumed run starts later, with `history` filled in)."""
        self._call("on_fit_start")
        for epoch in range(start_epoch, self.epochs + 1):
            if self.stop_reason:  # set by a callback, or restored from a run that had stopped
                break
            started = time.perf_counter()
            train_loss, train_acc, train_seconds = self.train_one_epoch(epoch)
            lr = self._epoch.lr
            self._epoch = None
            val = self.evaluate(self.val_loader)
            metrics = EpochMetrics(
                epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val.loss, val_acc=val.acc,
                val_top5=val.top5, lr=lr, epoch_seconds=time.perf_counter() - started,
                train_examples_per_s=self.train_loader.num_examples / max(train_seconds, 1e-9), stage=self.stage,
            )
            self._step_schedule_after_epoch(metrics)
            self.history.append(metrics)
            self._call("on_epoch_end", metrics)
            if self.stop_requested:
                raise KeyboardInterrupt
        self._call("on_fit_end")
        return self.history

    def _begin_epoch(self, epoch: int, steps: int) -> _EpochInProgress:
        """The epoch's running state: fresh, or as a mid-epoch checkpoint of this epoch left it."""
        position, self._resume_position = self._resume_position, None
        current = _EpochInProgress(epoch, steps, self.current_lr(), _RunningStats(self.device, group=self.group),
                                   time.perf_counter())
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
        steps = len(self.train_loader)
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
                self._call("on_train_progress", StepProgress(
                    epoch, step, steps, loss_value, acc, stats.count / max(seconds, 1e-9)))
            if self.stop_requested and self.between_optimizer_steps and step < steps:
                raise KeyboardInterrupt
        loss_value, acc = stats.read()
        return loss_value, acc, time.perf_counter() - current.started

    def reads_progress(self, step: int, steps: int) -> bool:
        """Whether the running loss and accuracy are read (a host sync) after `step` of `steps`: every
        `log_every` steps and at the epoch's last step, and before the first `log_every` also at steps
        1, 2, 4, 8, ...: a model whose 20 steps take minutes shows figures after its first step, for a
        handful of extra syncs per epoch and none once training is under way."""
        first_steps = step < self.log_every and step & (step - 1) == 0
        return step % self.log_every == 0 or step == steps or first_steps

    def _share(self, labels: torch.Tensor, step: int) -> float:
        """This rank's weight in the global batch's mean loss. DDP averages the ranks' gradients, so
        scaling each rank's mean by (its examples x ranks / global batch) makes the average the
        gradient of the global batch's mean, as in one process (1.0 unless the batch splits unevenly)."""
        if not self.group.ddp:
            return 1.0
        return len(labels) * self.group.world_size / self.train_loader.global_batch_size(step)

    @torch.inference_mode()
    def evaluate(self, loader, keep_outputs: bool = False) -> "Evaluation":
        """Mean cross-entropy, accuracy (and top-5 accuracy for more than 5 classes) over `loader`, without
        autograd; unpacks as (loss, accuracy). `keep_outputs`: also each example's predicted class,
        probabilities and label, in the loader's order (what cnntrain-eval reports per class).

        With EMA the averaged weights are measured (uncompiled: `forward` computes the trained
        model's logits); with tta=hflip, `evaluation_logits` says what is measured."""
        model = self.model if self.ema is None else self.ema.module
        forward = self.forward if self.ema is None else model
        model.eval()
        stats = _RunningStats(self.device, top5=True, group=self.group)
        outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for images, labels in loader:
            logits = self.evaluation_logits(forward, images)
            predicted = logits.argmax(dim=1)
            stats.add(logits, labels, F.cross_entropy(logits.float(), labels), predicted=predicted)
            if keep_outputs:  # kept on the device until the end: no host sync per batch
                outputs.append((predicted, logits.float().softmax(dim=1), labels))
        loss, acc = stats.read()
        evaluation = Evaluation(loss, acc, stats.read_top5())
        if keep_outputs and outputs:
            evaluation.predicted, evaluation.probabilities, evaluation.labels = (
                torch.cat(parts).cpu() for parts in zip(*outputs))
        return evaluation

    def evaluation_logits(self, forward: Callable, images: torch.Tensor) -> torch.Tensor:
        """What `evaluate` measures for a batch: `forward(images)`; with tta=hflip the log of the mean of the
        softmax probabilities of the batch and of its horizontal mirror, float32. Log-probabilities are
        logits whose softmax is that mean, so the accuracy, top-5 and probabilities are the averaged
        probabilities' and the loss is the cross-entropy of the averaged probabilities, -log(mean p[label])."""
        with self._autocast():
            logits = forward(images)
            if self.tta != "hflip":
                return logits
            mirrored = forward(images.flip(-1))
        return mean_log_probabilities(logits, mirrored)

    def _autocast(self):
        dtype = self.options.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def _optimizer_step(self) -> None:
        if self.options.grad_clip_norm:
            if self.scaler:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if self.schedule is not None and self.schedule.interval == "step":
            self.schedule.scheduler.step()

    def _step_schedule_after_epoch(self, metrics: EpochMetrics) -> None:
        if self.schedule is None or self.schedule.interval != "epoch":
            return
        if self.schedule.monitor:
            self.schedule.scheduler.step(getattr(metrics, self.schedule.monitor))
        else:
            self.schedule.scheduler.step()

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
