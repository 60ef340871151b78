"""The OPTIMIZERS and SCHEDULERS registries.

Optimizer builders get the model's parameters plus the optimizer config's settings;
scheduler builders get the optimizer plus the scheduler config's settings and return
a torch LR scheduler stepped once per epoch, or None for a constant learning rate.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from cnntrain.registry import Registry

OPTIMIZERS = Registry("optimizer", "optimizer.name")
SCHEDULERS = Registry("scheduler", "scheduler.name")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Iterable, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@SCHEDULERS.register("none")
def constant(optimizer: torch.optim.Optimizer) -> None:
    """Keep the optimizer's learning rate for the whole run."""
    return None


@SCHEDULERS.register("step")
def step(optimizer: torch.optim.Optimizer, step_size: int = 10, gamma: float = 0.1):
    """Multiply the learning rate by `gamma` every `step_size` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
