"""The OPTIMIZERS and SCHEDULERS registries.

Optimizer builders get parameter groups plus the optimizer config's settings.
Scheduler builders get the optimizer, the run's length (epochs, optimizer steps per
epoch; with trainer.time_limit a per-step schedule's `epochs` may be fractional: the fitted
optimizer steps / steps_per_epoch, see time_fitting.py) and the scheduler config's settings,
and return an `LrSchedule`: a torch LR scheduler plus when the trainer steps it (after each
epoch, or after each optimizer step for schedules that change within an epoch), or None for a constant rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from cnntrain.errors import ConfigError
from cnntrain.registry import Component, Registry, is_number

OPTIMIZERS = Registry("optimizer", "optimizer.name", code_arguments=("params",))
SCHEDULERS = Registry("scheduler", "scheduler.name", code_arguments=("optimizer", "epochs", "steps_per_epoch"))

# Keys of an optimizer config that are not builder settings.
OPTIMIZER_KEYS = ("name", "no_decay_bias_norm")


def parameter_groups(model: nn.Module, no_decay_bias_norm: bool) -> list[dict[str, Any]]:
    """The model's trainable parameters, split so that weight decay can skip biases and norm layers.

    Biases and BatchNorm/LayerNorm scales are the 1-dimensional parameters; decaying
    them towards zero only limits the model (timm and torchvision's references skip
    them too). Without `no_decay_bias_norm` every parameter is in one group.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_bias_norm:
        return [{"params": params}]
    return [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if nesterov and momentum <= 0:
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0 (e.g. optimizer.momentum=0.9).")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(
    params: Iterable,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(
    params: Iterable,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.05,
) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    params: Iterable,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)


@dataclass
class LrSchedule:
    """A torch scheduler and how the trainer drives it.

    interval "epoch": stepped after each epoch; "step": after each optimizer step.
    monitor: the epoch metric passed to `step()` (ReduceLROnPlateau), else None.
    """

    scheduler: Any
    interval: str = "epoch"
    monitor: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


@SCHEDULERS.register("none")
def constant(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> None:
    """Keep the optimizer's learning rate for the whole run."""
    return None


@SCHEDULERS.register("step")
def step(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, step_size: int = 10, gamma: float = 0.1
) -> LrSchedule:
    """Multiply the learning rate by `gamma` every `step_size` epochs."""
    return LrSchedule(lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma))


@SCHEDULERS.register("multistep")
def multistep(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    milestones: Sequence[int] = (30, 60, 90),
    gamma: float = 0.1,
) -> LrSchedule:
    """Multiply the learning rate by `gamma` at each epoch in `milestones`."""
    return LrSchedule(lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma))


@SCHEDULERS.register("exponential")
def exponential(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, gamma: float = 0.95) -> LrSchedule:
    """Multiply the learning rate by `gamma` after every epoch."""
    return LrSchedule(lr_scheduler.ExponentialLR(optimizer, gamma=gamma))


@SCHEDULERS.register("cosine")
def cosine(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
    warmup_start_factor: float = 0.01,
    min_lr: float = 0.0,
) -> LrSchedule:
    """Linear warm-up over `warmup_epochs`, then cosine decay to `min_lr` at the end of the run.

    Updated after every optimizer step, so the warm-up and the decay are smooth
    rather than one jump per epoch.
    """
    total = round(epochs * steps_per_epoch)  # epochs may be fractional: a time limit's fitted length
    warmup = round(warmup_epochs * steps_per_epoch)
    if warmup >= total:
        raise ConfigError(
            f"scheduler.warmup_epochs={warmup_epochs} leaves no epochs for the cosine decay "
            f"(trainer.epochs={epochs}). Use fewer warm-up epochs."
        )
    decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=min_lr)
    if warmup == 0:
        return LrSchedule(decay, interval="step")
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup)
    return LrSchedule(lr_scheduler.SequentialLR(optimizer, [ramp, decay], milestones=[warmup]), interval="step")


@SCHEDULERS.register("onecycle")
def onecycle(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    max_lr: float | None = None,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
) -> LrSchedule:
    """Leslie Smith's one-cycle policy, per optimizer step; `max_lr` defaults to optimizer.lr."""
    max_lr = max_lr if max_lr is not None else optimizer.param_groups[0]["lr"]
    return LrSchedule(
        lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=round(epochs * steps_per_epoch),  # epochs may be fractional (trainer.time_limit)
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            anneal_strategy=anneal_strategy,
        ),
        interval="step",
    )


@SCHEDULERS.register("plateau")
def plateau(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    min_lr: float = 0.0,
) -> LrSchedule:
    """Multiply the learning rate by `factor` when the validation loss stops falling for `patience` epochs."""
    return LrSchedule(
        lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=factor, patience=patience, threshold=threshold, min_lr=min_lr
        ),
        monitor="val_loss",
    )


def check_optimizer_and_schedule(optimizer: Component, scheduler: Component, epochs: int) -> None:
    """Build the optimizer and the schedule on one dummy parameter and take a step, so that torch's
    own checks (lr < 0, a string for lr, momentum < 0, a step_size of 0, ...) answer now, naming the settings.

    Why a throwaway optimizer, built again by build.py over the model's parameters: the real one needs
    the model's parameter groups, and the model exists only once the data is loaded (its classes and
    channels); the real schedule needs the loader's steps per epoch. check_config promises every setting
    checked before any data loads (a typo costs a second, not a dataset parse), so the check cannot wait
    for the real build, and the throwaway one cannot become the real one: this check steps it (its state
    and learning rate are no longer a fresh run's), and torch has no supported way to move an optimizer
    onto other parameters. Only torch's own constructors know every value they refuse, so the check
    builds one.
    """
    parameter = torch.zeros(1, requires_grad=True)
    try:
        built = optimizer.build(params=[parameter])
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        raise ConfigError(
            f"optimizer={optimizer.name} cannot take its settings "
            f"({_settings_text('optimizer', optimizer.settings)}): {err}"
        ) from None
    for key, usual in (("momentum", 0.9), ("alpha", 0.99)):  # torch takes any value >= 0; from 1 up, the
        value = optimizer.settings.get(key)  # updates grow without end (or never average)
        if is_number(value) and not 0 <= value < 1:
            raise ConfigError(f"optimizer.{key} must be a number from 0 up to (not) 1 ({usual} is usual), got {value}.")
    try:
        schedule = scheduler.build(optimizer=built, epochs=epochs, steps_per_epoch=1)
        lowest = _lowest_lr(built, schedule, epochs)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, IndexError) as err:
        raise ConfigError(
            f"scheduler={scheduler.name} cannot take its settings "
            f"({_settings_text('scheduler', scheduler.settings)}): {type(err).__name__}: {err}"
        ) from None
    if lowest < 0:
        raise ConfigError(
            f"scheduler={scheduler.name} would set a negative learning rate ({lowest:.3g}) "
            f"with its settings ({_settings_text('scheduler', scheduler.settings)}) and "
            f"optimizer.lr={built.defaults['lr']}."
        )


def _lowest_lr(optimizer, schedule, epochs: int) -> float:
    """The lowest learning rate the schedule sets over a run of `epochs` one-step epochs (its shape
    is the same at any number of steps per epoch)."""
    lowest = optimizer.param_groups[0]["lr"]
    if schedule is None:
        return lowest
    for _ in range(min(epochs, 1000)):
        optimizer.step()
        schedule.scheduler.step(*([1.0] if schedule.monitor else []))
        lowest = min(lowest, optimizer.param_groups[0]["lr"])
    return lowest


def _settings_text(section: str, settings: dict[str, Any]) -> str:
    return ", ".join(f"{section}.{key}={value!r}" for key, value in settings.items()) or "none"
