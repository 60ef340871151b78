"""Freezing (`model.freeze`) and the two-stage schedule (`finetune.unfreeze_at`, `finetune.lr_scale`).

`freeze(model, setting)` stops gradients for the backbone (everything but the head,
see pretrained.head_name) or for the first N stages (the model's top-level children
that have weights). Frozen BatchNorm layers are kept in eval mode: `requires_grad=False`
alone leaves them updating their running statistics on every training batch, which
drifts the features the frozen weights were trained with. Frozen parameters are not
given to the optimizer (optim.parameter_groups takes only trainable ones).

`TwoStageFinetune` is the callback of the tutorials' second stage: after epoch
`unfreeze_at` it reloads the best checkpoint so far, unfreezes every layer and goes on
with a new optimizer (and schedule, for the remaining epochs) at the learning rate
times `lr_scale`. The trainer's `stage` (1 or 2) is recorded in every epoch's metrics
and in checkpoints, so a resume in either stage rebuilds the same optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnntrain.checkpoint import load_checkpoint
from cnntrain.errors import ConfigError
from cnntrain.pretrained import head_name
from cnntrain.registry import is_whole
from cnntrain.trainer import Callback, Trainer

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_HOOKS = "_cnntrain_frozen_norm_hooks"


def stages(model: nn.Module) -> list[str]:
    """The model's stages, in order: its top-level children that hold weights."""
    return [name for name, child in model.named_children() if any(True for _ in child.parameters())]


def check_freeze(setting: Any, model: nn.Module | None = None) -> None:
    """model.freeze: null, backbone, or a whole number of leading stages (below the model's stage count)."""
    if setting in (None, "none", 0) or setting == "backbone":
        return
    if not is_whole(setting) or setting < 0:
        raise ConfigError(
            f"model.freeze must be backbone (everything but the classifier head), a number of "
            f"leading stages to freeze, or null, got {setting!r}."
        )
    if model is not None and setting >= len(stages(model)):
        raise ConfigError(
            f"model.freeze={setting}: this model has {len(stages(model))} stages with weights "
            f"({', '.join(stages(model))}); freezing them all leaves nothing to train. Use a smaller "
            f"number, or model.freeze=backbone to train the head only."
        )


def frozen_modules(model: nn.Module, setting: Any) -> list[str]:
    """The names of the modules `setting` freezes (see `check_freeze`)."""
    check_freeze(setting, model)
    if setting in (None, "none", 0):
        return []
    if setting == "backbone":
        head = head_name(model)
        return [name for name in stages(model) if name != head.split(".")[0]] + _inner_backbone(model, head)
    return stages(model)[:setting]


def _inner_backbone(model: nn.Module, head: str) -> list[str]:
    """For a head nested in a stage (e.g. classifier.6 of an AlexNet), the stage's other children."""
    parts = head.split(".")
    found = []
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        found += [
            f"{parent}.{name}" for name, _ in model.get_submodule(parent).named_children() if name != parts[depth]
        ]
    return found


def _stay_in_eval(module: nn.Module, args) -> None:
    module.training = False  # the trainer's model.train() must not wake a frozen norm layer


def freeze(model: nn.Module, setting: Any) -> int:
    """Freeze what `setting` says; returns the number of parameters left trainable."""
    hooks = []
    if setting == "backbone":
        model.requires_grad_(False)  # parameters held by the model itself too (a ViT's class token)
        model.get_submodule(head_name(model)).requires_grad_(True)
    for name in frozen_modules(model, setting):
        part = model.get_submodule(name)
        part.requires_grad_(False)
        for module in part.modules():
            if isinstance(module, _NORMS):
                module.eval()
                hooks.append(module.register_forward_pre_hook(_stay_in_eval))
    setattr(model, _HOOKS, hooks)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unfreeze(model: nn.Module, keep_norm_statistics: bool = False) -> None:
    """Every parameter trainable; the norm layers frozen so far follow model.train()/eval() again, unless
    `keep_norm_statistics`: then they go on normalising with their running statistics (their scale
    and shift train), as Keras' fine-tuning guide advises: new batch statistics shift every feature
    the head was trained on, which a small learning rate cannot repair."""
    if not keep_norm_statistics:
        for hook in getattr(model, _HOOKS, []):
            hook.remove()
        setattr(model, _HOOKS, [])
    model.requires_grad_(True)


class TwoStageFinetune(Callback):
    """After epoch `unfreeze_at`: best weights so far, everything unfrozen, a new optimizer at lr x `lr_scale`.

    `new_optimizer(model, lr_scale, epochs_left)` returns (optimizer, schedule) for the
    unfrozen model; `save_last(trainer)` rewrites checkpoints/last.pt, so that a resume
    from the switching epoch starts in stage two. It switches in `after_epoch_end`, after the
    checkpointer's (which comes before it) wrote that epoch's best.pt and last.pt.
    """

    def __init__(
        self,
        unfreeze_at: int,
        lr_scale: float,
        best_checkpoint,
        new_optimizer: Callable,
        save_last: Callable[[Trainer], None],
        say: Callable[[str], None],
        keep_norm_statistics: bool = False,
        new_forward: Callable[[nn.Module], Callable] | None = None,
    ):
        self.unfreeze_at = unfreeze_at
        self.new_forward = new_forward  # a distributed run's DDP wrapper must be rebuilt for the unfrozen weights
        self.lr_scale = lr_scale
        self.keep_norm_statistics = keep_norm_statistics
        self.best_checkpoint = best_checkpoint
        self.new_optimizer = new_optimizer
        self.save_last = save_last
        self.say = say

    def before_restore(self, trainer: Trainer, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of stage two holds stage two's optimizer: build that one before it is loaded."""
        if checkpoint.get("stage") == 2:
            self.enter_stage_two(trainer, reload_best=False)

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.stage is None:
            trainer.stage = 1
        finished = trainer.history[-1].epoch if trainer.history else 0
        if trainer.stage == 1 and finished >= self.unfreeze_at:  # killed between the last two saves of that epoch
            self.enter_stage_two(trainer, reload_best=True)

    def after_epoch_end(self, trainer: Trainer, metrics) -> None:
        if trainer.stage == 1 and metrics.epoch == self.unfreeze_at and metrics.epoch < trainer.epochs:
            self.enter_stage_two(trainer, reload_best=True)
            self.save_last(trainer)

    def enter_stage_two(self, trainer: Trainer, reload_best: bool) -> None:
        if reload_best:
            trainer.group.barrier()  # rank 0 has written best.pt before any rank reads it
            # The weights best.pt trained and, with trainer.ema, its average: stage two goes on with both.
            trainer.load_weights(load_checkpoint(self.best_checkpoint))
        unfreeze(trainer.model, self.keep_norm_statistics)
        if self.new_forward:
            trainer.forward = self.new_forward(trainer.model)
        epochs_left = max(1, trainer.epochs - self.unfreeze_at)
        trainer.optimizer, trainer.schedule = self.new_optimizer(trainer.model, self.lr_scale, epochs_left)
        trainer.stage = 2
        if reload_best:
            params = sum(p.numel() for p in trainer.model.parameters())
            self.say(
                f"stage 2 after epoch {self.unfreeze_at}: best checkpoint reloaded, all {params:,} parameters "
                f"unfrozen, lr {trainer.current_lr():g} (x{self.lr_scale:g})"
            )


def scaled_optimizer(
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    build_schedule: Callable[[torch.optim.Optimizer, int], Any],
) -> Callable:
    """`new_optimizer` for TwoStageFinetune from the run's optimizer and schedule builders."""

    def new_optimizer(model: nn.Module, lr_scale: float, epochs_left: int):
        optimizer = build_optimizer(model)
        for group in optimizer.param_groups:
            group["lr"] *= lr_scale
        return optimizer, build_schedule(optimizer, epochs_left)

    return new_optimizer
