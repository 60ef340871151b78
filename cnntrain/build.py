"""The builder: a composed config -> checked settings (checks.py) -> the objects a run trains with.

`build_training` builds from exactly the settings `check_config` checked (never the raw config):
device, data, model (model_setup.py), optimizer, schedule, loaders (`TrainingParts`);
run_callbacks.build_callbacks adds what writes the run folder and the user's callbacks. Training
(run.py), resuming, `cnntrain-info` and the benchmarks all come through here, so they cannot wire
a run differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cnntrain.checks import CheckedConfig, check_config
from cnntrain.class_balance import ClassBalance, class_balance
from cnntrain.contention import starting_threads
from cnntrain.data import DatasetSpec, ImageData, PreparedData, load_image_data, prepare
from cnntrain.data.loader import BatchTransform, make_loader
from cnntrain.data.mixing import BatchMixer
from cnntrain.distributed import Group, group_for
from cnntrain.ema import ModelEma
from cnntrain.errors import ConfigError
from cnntrain.model_setup import build_checked_model, load_starting_weights, place_model
from cnntrain.optim import parameter_groups
from cnntrain.run_folder import RunFolder
from cnntrain.speed_switches import tune_backend
from cnntrain.trainer import Callback, StepOptions, Trainer


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit choice must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but PyTorch sees no CUDA GPU. Use device=auto or device=cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps was asked for but this machine has no Apple GPU. Use device=auto or device=cpu.")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"Unknown device.type '{name}'. Use auto, cpu, cuda or mps.")
    return torch.device(name)


def build_data(checked: CheckedConfig, data: ImageData | None = None) -> PreparedData:
    """The dataset (parsed once per process) split into train/val/test. `data`: use these images instead."""
    settings = checked.data
    data = data or load_image_data(checked.dataset.name, checked.dataset.settings)
    return prepare(settings.name, data, settings.val_fraction, checked.seed, subset=settings.subset)


@dataclass
class TrainingParts:
    """Everything a run trains with, built from a `CheckedConfig`."""

    checked: CheckedConfig
    device: torch.device
    data: PreparedData
    model: torch.nn.Module
    recipe: dict[str, Any]  # rebuilds the model (models.build_model); saved in checkpoints
    forward: Callable  # what computes the logits: the model, or torch.compile(model)
    transform: BatchTransform
    train_loader: Any
    val_loader: Any
    test_loader: Any
    optimizer: torch.optim.Optimizer
    schedule: Any  # optim.LrSchedule or None
    options: StepOptions
    channels_last: bool
    notices: list[str]  # speed switches that could not be honoured here
    weights_note: str | None = None  # what model.weights loaded and model.freeze froze
    group: Group = field(default_factory=Group.single)  # the processes of a distributed run
    threads: tuple[int, str] = (1, "trainer.threads")  # the CPU threads it started with, and where from
    balance: ClassBalance | None = None  # the training split's class counts, trainer.class_weights, data.sampler

    def new_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over the model's trainable parameters."""
        return self.checked.optimizer.build(params=parameter_groups(model, self.checked.no_decay_bias_norm))

    def new_schedule(self, optimizer: torch.optim.Optimizer, epochs: int):
        """The configured learning-rate schedule for `epochs` epochs of this run's loader."""
        return self.checked.scheduler.build(
            optimizer=optimizer, epochs=epochs, steps_per_epoch=self.options.optimizer_steps(len(self.train_loader))
        )

    @property
    def spec(self) -> DatasetSpec:
        return self.data.spec

    @property
    def precision(self) -> str:
        """What autocast runs in, as summary.json records it (the config may ask for more than the device can)."""
        return str(self.options.autocast_dtype or torch.float32).removeprefix("torch.")

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def run_info(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the trainer's state (see checkpoint.py)."""
        return {
            "model": self.recipe,
            "classes": self.spec.classes,
            # How images were prepared, so that prediction converts new images the same way.
            "preprocess": {
                "stored_size": list(self.spec.image_size),
                "size": self.recipe["input_size"],
                "mean": list(self.transform.mean or []),
                "std": list(self.transform.std or []),
                "resize_before_crop": self.transform.resize_before_crop,
                "augment": self.checked.augment,
            },
            "config": OmegaConf.to_container(self.checked.cfg, resolve=True),
        }

    def trainer(self, callbacks: list[Callback] = (), run_folder: RunFolder | None = None) -> Trainer:
        """The run's Trainer; `run_folder` and the config are what its callbacks see (trainer.run_folder/config)."""
        settings = self.checked.trainer
        loss_fn = self.balance.training_loss(settings.label_smoothing, self.device)  # with trainer.class_weights
        decay = settings.ema  # the average starts from the weights the run starts from
        ema = ModelEma(self.model, float(decay), settings.ema_warmup) if decay is not None else None
        return Trainer(
            self.model,
            self.optimizer,
            self.schedule,
            self.train_loader,
            self.val_loader,
            self.device,
            settings.epochs,
            callbacks=callbacks,
            log_every=settings.log_every,
            loss_fn=loss_fn,
            options=self.options,
            forward=self.forward,
            group=self.group,
            ema=ema,
            tta=settings.tta,
            run_folder=run_folder and run_folder.path,
            config=self.checked.cfg,
        )


def build_training(checked: CheckedConfig, data: ImageData | None = None, resuming: bool = False) -> TrainingParts:
    """Device, data, model, optimizer, schedule and loaders, in the order that fixes the random streams.

    `resuming`: the weights will come from the run's checkpoint, so model.weights is not read again
    (the file may be gone by now); model.freeze still applies.
    """
    trainer, seed = checked.trainer, checked.seed
    group = group_for(trainer.strategy)
    device = group.device(resolve_device(checked.device))
    tune_backend(device, trainer.deterministic)
    threads = starting_threads(trainer.threads)  # before the data is decoded: that computes on them too
    torch.manual_seed(seed)  # the same on every rank: the same data split and initial weights
    prepared = build_data(checked, data)
    spec = prepared.spec
    balance = class_balance(prepared.train.labels, spec.classes, trainer.class_weights, checked.data.sampler)
    model, recipe = build_checked_model(checked.model, spec)
    weights_note = load_starting_weights(checked.model, model, read_weights=not resuming)
    if group.ddp and trainer.sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError(
                "trainer.sync_batchnorm=true needs CUDA GPUs: PyTorch's SyncBatchNorm does not run "
                "on CPUs. Leave it false here (each process normalises with its share of the batch)."
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    placed = place_model(trainer, model, device, group)
    model, forward, channels_last = placed.model, placed.forward, placed.channels_last
    if group.world_size > 1:
        torch.manual_seed(seed + group.rank)  # each rank its own dropout masks
    transform = batch_transform(checked, spec, recipe["input_size"], channels_last)

    def loader(split: str, batch_size: int, **options):
        return split_loader(
            checked,
            getattr(prepared, split),
            split,
            transform,
            device,
            batch_size,
            shard=(group.rank, group.world_size),
            **options,
        )

    # trainer.mixup: MixUp / CutMix after the augmentations, from the same stream; soft targets.
    mixer = BatchMixer(spec.num_classes, **trainer.mixup) if trainer.mixup else None
    train_loader = loader(
        "train", checked.data.batch_size, shuffle=True, seed=seed, augment=True, mixer=mixer, sampler=balance.sampler
    )
    val_loader = loader("val", checked.eval_batch_size)
    test_loader = loader("test", checked.eval_batch_size)

    options = StepOptions(
        accumulate=trainer.accumulate_grad_batches,
        grad_clip_norm=trainer.grad_clip_norm,
        autocast_dtype=placed.autocast_dtype,
    )
    parts = TrainingParts(
        checked,
        device,
        prepared,
        model,
        recipe,
        forward,
        transform,
        train_loader,
        val_loader,
        test_loader,
        None,
        None,
        options,
        channels_last,
        [*placed.notices, *filter(None, [balance.notice()])],
        weights_note,
        group,
        threads,
        balance,
    )
    parts.optimizer = parts.new_optimizer(model)
    parts.schedule = parts.new_schedule(parts.optimizer, trainer.epochs)
    return parts


def batch_transform(checked: CheckedConfig, spec: DatasetSpec, size: int, channels_last: bool) -> BatchTransform:
    """What each batch goes through on the device: resized to `size`, normalised, augmented (training).

    Pretrained torchvision weights bring their own preprocessing: mean/std and a resize before the centre crop.
    """
    plan = checked.model
    prep = plan.weights_prep.for_channels(spec.channels) if plan.weights_prep else None
    normalize = checked.data.normalize or prep is not None
    mean, std = (prep.mean, prep.std) if prep else (spec.mean, spec.std)
    return BatchTransform(
        size=(size, size),
        mean=mean if normalize else None,
        std=std if normalize else None,
        channels_last=channels_last,
        augment=checked.augmentations,
        resize_before_crop=prep.resize if prep and not plan.resize else None,
    )


def split_loader(
    checked: CheckedConfig,
    data,
    split: str,
    transform: BatchTransform,
    device: torch.device,
    batch_size: int | None = None,
    limited: bool = True,
    **options,
):
    """The loader of one split (train, val or test): `batch_size` (default: the evaluation batch size),
    cut to trainer.limit_<split>_batches unless `limited` is false (an evaluation covers the whole split)."""
    batch_size = batch_size or checked.eval_batch_size
    setting = checked.limits.get(f"limit_{split}_batches") if limited else None
    return make_loader(
        data, batch_size, transform, device, limit_batches=batch_limit(setting, len(data), batch_size), **options
    )


def batch_limit(setting: int | float | None, examples: int, batch_size: int) -> int | None:
    """trainer.limit_*_batches as a batch count: a whole number is a count, a fraction (0, 1] a share
    of the split's batches (at least one); None: no limit."""
    if setting is None:
        return None
    if isinstance(setting, float):
        return max(1, math.ceil(setting * math.ceil(examples / batch_size)))
    return setting


def inspect_model(cfg: DictConfig):
    """The model this config would train, pushed through once: (layer rows, totals, input size).

    What `cnntrain-info` prints; the data is loaded only to learn its channels and classes.
    """
    from cnntrain.inspector import layer_table, model_totals

    checked = check_config(cfg)
    spec = build_data(checked).spec
    model, recipe = build_checked_model(checked.model, spec)
    shape = (spec.channels, recipe["input_size"], recipe["input_size"])
    rows = layer_table(model, shape)
    return rows, model_totals(model, shape, rows, batch_size=checked.data.batch_size), recipe["input_size"]
