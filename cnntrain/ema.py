"""Weight EMA (`trainer.ema`): an exponential moving average of a model's weights, kept beside the trained ones.

After every optimizer step, every floating-point parameter and buffer of the average moves
towards the trained model's: w_ema <- d * w_ema + (1 - d) * w, with torch's own EMA update
(`torch.optim.swa_utils.get_ema_multi_avg_fn`, a foreach lerp on the training device).
BatchNorm's running mean and variance are averaged too, as timm's ModelEmaV3 does by default
and `AveragedModel(use_buffers=True)` does: the statistics then move as slowly as the weights
they normalise, where the trained model's own would describe other weights' activations.
Integer buffers (BatchNorm's num_batches_tracked) are copied. The average starts as a copy
of the model when the trainer is built, and is never trained (no gradients).

Warm-up (`trainer.ema_warmup`, on by default): update k (1, 2, ...) uses
d_k = min(decay, (1 + k) / (10 + k)), TensorFlow's ExponentialMovingAverage with num_updates
(0.18 at the first update, 0.92 at the 100th, 0.99 at the 1,000th). Without it, with a decay
of 0.999, the random initial weights are still 0.999**422 = 66% of the average after one
Fashion-MNIST epoch (54,000 images at batch 128): the first epochs' validation, and so
best.pt's choice, would measure a model far worse than the one being trained.

Not `torch.optim.swa_utils.AveragedModel.update_parameters`: it reads its `n_averaged`
counter on the host (`bool(n_averaged == 0)`, `n_averaged > 0`) and copies it to the device
for each group of tensors, a host-device sync on every step on a GPU (whichever device the
counter is on), and its EMA of an integer buffer truncates it. Here the count is a Python
int and the decay a Python float: an update queues device work and never waits for it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class ModelEma:
    """The average of `model`'s weights (`module`, a copy of it in eval mode), updated by `update(model)`."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.updates = 0  # updates made so far (saved in checkpoints as "ema_updates")

    def decay_at(self, update: int) -> float:
        """The decay of update number `update` (1 for the first)."""
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards `model`'s weights (after an optimizer step)."""
        self.updates += 1
        averaged, trained = [], []
        for mine, theirs in zip(_tensors(self.module), _tensors(model), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                trained.append(theirs.detach())
            else:
                mine.copy_(theirs)
        if averaged:
            get_ema_multi_avg_fn(self.decay_at(self.updates))(averaged, trained, None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, under the model's own keys (a checkpoint's "state_dict")."""
        return self.module.state_dict()

    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(weights)
        self.updates = int(updates)

    def restart(self, model: nn.Module) -> None:
        """Start the average again from `model`'s weights (a checkpoint that holds no average)."""
        self.load_state_dict(model.state_dict(), 0)


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
