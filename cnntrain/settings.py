"""The typed settings a checked config gives (setting_checks.py and trainer_checks.py fill them; build.py
and the trainer read them).

Each setting is read from the raw config once, by the check that validates it, and kept here frozen:
`TrainerSettings`, `DataSettings`, `ModelPlan` (with the one input-size rule, `input_size`) and
`FinetuneSettings`. A key the YAML gives always arrives with its value; `FALLBACKS` holds, once, what
a config without the key gets (a config saved by an older cnntrain, or composed by hand), and
`setting` is the one way to read such a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cnntrain.pretrained import Preprocessing

# What a config without the key gets (one saved before the key existed, or composed by hand): the
# behaviour from before the key, which is "off" (e.g. trainer.checkpoint_every_minutes: None, where
# configs/train.yaml now sets 10) and otherwise the YAML's value (trainer.precision 32, finetune.lr_scale 0.01).
FALLBACKS: dict[str, Any] = {
    "trainer.accumulate_grad_batches": 1,
    "trainer.label_smoothing": 0.0,
    "trainer.grad_clip_norm": None,
    "trainer.ema": None,
    "trainer.ema_warmup": True,
    "trainer.tta": None,
    "trainer.compile": False,
    "trainer.strategy": "auto",
    "trainer.sync_batchnorm": False,
    "trainer.channels_last": "auto",
    "trainer.precision": 32,
    # Speed only (no setting changes what is computed): runs from before the key get the better behaviour.
    "trainer.threads": "auto",
    "trainer.checkpoint_every_minutes": None,
    "trainer.mixup": None,
    "trainer.limit_train_batches": None,
    "trainer.limit_val_batches": None,
    "trainer.limit_test_batches": None,
    "trainer.early_stopping": None,
    "trainer.time_limit": None,
    "trainer.early_stopping.patience": None,
    # null: trainer.checkpoint.monitor's. Configs saved before null existed spell out their metric (val_loss).
    "trainer.early_stopping.metric": None,
    "trainer.early_stopping.min_delta": 0.0,
    "trainer.class_weights": None,
    "data.eval_batch_size": None,
    "data.resize": None,
    "data.subset": None,
    "data.normalize": False,
    "data.augment": None,
    "data.sampler": None,
    "model.weights": None,
    "model.freeze": None,
    "model.init": "default",
    "model.input_size": None,
    "finetune": None,
    "finetune.unfreeze_at": None,
    "finetune.lr_scale": 0.01,
    "finetune.keep_norm_statistics": False,
    "optimizer.no_decay_bias_norm": False,
    # best.pt followed val_acc (max) before trainer.checkpoint existed, and nothing else was kept.
    "trainer.checkpoint": None,
    "trainer.checkpoint.monitor": "val_acc",
    "trainer.checkpoint.mode": "auto",
    "trainer.checkpoint.save_top_k": 1,
    "trainer.checkpoint.every_n_epochs": None,
    "trainer.deterministic": False,
}


def setting(section, key: str) -> Any:
    """`key` ('trainer.ema', 'finetune.lr_scale') from its config section (the part after the last dot),
    or its fallback when the section does not have it."""
    parent, _, name = key.rpartition(".")
    return section.get(name, FALLBACKS[key]) if section is not None else FALLBACKS[key]


@dataclass(frozen=True)
class EarlyStopping:
    """trainer.early_stopping: stop after `patience` epochs without improvement of `metric` (None: never)."""

    patience: int | None
    metric: str
    min_delta: float
    mode: str = "min"  # max or min: whether `metric` must rise or fall (trainer.checkpoint.mode's when it follows it)


@dataclass(frozen=True)
class CheckpointSettings:
    """trainer.checkpoint: which epoch best.pt holds and which other epochs' checkpoints are kept."""

    monitor: str = "val_acc"  # a metrics.csv column (checkpoint_policy.MONITORABLE)
    mode: str = "max"  # max or min, resolved from auto
    save_top_k: int = 1  # 1: best.pt only; k > 1: also the k best epochs' files; -1: every epoch's file
    every_n_epochs: int | None = None  # also checkpoints/epoch=NNN.pt every this many epochs


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer section, checked (trainer_checks.check_trainer_settings)."""

    epochs: int
    log_every: int
    accumulate_grad_batches: int
    progress: str
    label_smoothing: float
    grad_clip_norm: float | None
    ema: float | None
    ema_warmup: bool
    tta: str | None
    compile: bool
    strategy: str
    sync_batchnorm: bool
    channels_last: str | bool
    precision: Any  # 32, "bf16" or "fp16" as given (speed_switches.resolve_precision reads it)
    threads: str | int  # "auto" (contention.ThreadGovernor) or a fixed number of CPU threads
    batch_limits: dict[str, int | float]  # the trainer.limit_*_batches that are set, by key
    checkpoint_every_minutes: float | None
    early_stopping: EarlyStopping
    mixup: dict[str, float] | None  # data/mixing.BatchMixer's settings; None: no MixUp / CutMix
    time_limit: Any = None  # time_plan.TimeLimit: train for at most that long (time_budget.py); None: no limit
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    deterministic: bool = False  # deterministic algorithms only, cuDNN autotuning off (speed_switches.py)
    # trainer.class_weights: None, "balanced" or one positive weight per class (class_balance.py resolves it)
    class_weights: str | tuple[float, ...] | None = None


@dataclass(frozen=True)
class DataSettings:
    """The data settings every dataset shares, checked (setting_checks.check_data_settings)."""

    name: str
    batch_size: int
    eval_batch_size: int  # data.eval_batch_size, or 2 x batch_size when null
    val_fraction: float
    resize: int | None
    normalize: bool
    subset: int | None
    augment: list = field(default_factory=list)  # data.augment as plain values (saved with checkpoints)
    sampler: str | None = None  # data.sampler: None (a permutation per epoch) or "balanced" (data/sampling.py)


def input_size(
    resize: int | None, weights_size: int | None, native: int | None, data_size: int | None = None
) -> int | None:
    """The side length images are fed to the model at, the one rule: data.resize if set, else the size
    pretrained weights were trained at, else the model's native input_size, else the data's own size
    (None while the data is not known and nothing else says)."""
    return resize or weights_size or native or data_size


@dataclass(frozen=True)
class ModelPlan:
    """The model a run builds: its registry name and settings, the starting weights and what they bring."""

    name: str
    settings: dict[str, Any]  # the builder's settings (model section without MODEL_KEYS)
    init: str
    native_size: int | None  # model.input_size
    resize: int | None  # data.resize
    weights: str | None  # model.weights
    freeze: Any  # model.freeze: None, backbone or a number of stages
    weights_prep: Preprocessing | None  # what torchvision or timm weights named by model.weights were trained with

    def input_size(self, data_size: int | None = None) -> int | None:
        """The input size for data of `data_size` pixels (see `input_size`)."""
        return input_size(
            self.resize, self.weights_prep.size if self.weights_prep else None, self.native_size, data_size
        )

    @property
    def title(self) -> str:
        """The model as a run's first line names it: with the architecture for the families that take one
        (model=torchvision, model=timm: `timm resnet18`)."""
        arch = self.settings.get("arch")
        return f"{self.name} {arch}" if arch else self.name

    @property
    def size_key(self) -> str:
        """The setting the input size comes from, for messages."""
        return "data.resize" if self.resize else "model.weights" if self.weights_prep else "model.input_size"


@dataclass(frozen=True)
class FinetuneSettings:
    """The finetune section, checked: the second stage starts after `unfreeze_at` (None: one stage)."""

    unfreeze_at: int | None
    lr_scale: float
    keep_norm_statistics: bool
