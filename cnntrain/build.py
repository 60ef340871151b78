"""The builder: a composed config -> checked settings (checks.py) -> the objects a run trains with.

`build_training` builds from exactly the values `check_config` checked: device, data,
model, optimizer, schedule, loaders (`TrainingParts`); `build_callbacks` adds what
writes the run folder and the user's callbacks. Training (run.py), resuming, `cnntrain-info` and the
benchmarks all come through here, so they cannot wire a run differently.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from cnntrain.callbacks import Checkpointer, EarlyStopping, MetricsWriter, ProgressDisplay, Reporter, TimeEstimate
from cnntrain.checkpoint import training_checkpoint
from cnntrain.checks import CheckedConfig, check_config
from cnntrain.config import settings_of
from cnntrain.data import DatasetSpec, ImageData, PreparedData, load_image_data, prepare
from cnntrain.data.loader import BatchTransform, make_loader
from cnntrain.data.mixing import BatchMixer
from cnntrain.distributed import Group, group_for
from cnntrain.ema import ModelEma
from cnntrain.errors import ConfigError
from cnntrain.finetune import TwoStageFinetune, freeze, scaled_optimizer
from cnntrain.inspector import check_input_size, smallest_input_size
from cnntrain.loggers import logger_callbacks
from cnntrain.models import MODEL_KEYS, build_model
from cnntrain.optim import parameter_groups
from cnntrain.pretrained import Preprocessing, implied_settings, load_weights, weights_preprocessing
from cnntrain.run_folder import RunFolder
from cnntrain.speed_switches import maybe_compile, resolve_precision, tune_backend, use_channels_last
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


def input_size_for(cfg: DictConfig, spec: DatasetSpec, weights_prep: Preprocessing | None = None) -> int:
    """data.resize if set, else the size pretrained weights were trained at, else the model's native
    input_size, else the data's own size."""
    size = (cfg.data.get("resize") or (weights_prep.size if weights_prep else None) or cfg.model.get("input_size")
            or spec.image_size[0])
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"data.resize / model.input_size must be a positive whole number, got {size!r}.")
    return size


def model_recipe(cfg: DictConfig, spec: DatasetSpec, input_size: int) -> dict[str, Any]:
    """Everything needed to rebuild the model; saved in every checkpoint."""
    settings = settings_of(cfg.model, MODEL_KEYS)
    settings.update(implied_settings(cfg.model.name, settings, cfg.model.get("weights"), spec.channels))
    return {"name": cfg.model.name, "settings": settings,
            "num_classes": spec.num_classes, "in_channels": spec.channels, "input_size": input_size,
            "init": cfg.model.get("init", "default")}


def build_checked_model(cfg: DictConfig, spec: DatasetSpec) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model for this data, after checking that an image of the input size gets through it.

    Catches e.g. the 224-pixel AlexNet asked to take 28-pixel images, before training,
    with the layer whose output collapsed and the size to use instead. Fresh weights:
    `load_starting_weights` puts in model.weights.
    """
    size = input_size_for(cfg, spec, weights_preprocessing_for(cfg, spec))
    recipe = model_recipe(cfg, spec, size)
    native = cfg.model.get("input_size")
    try:
        model = build_model(recipe)
    except (RuntimeError, ValueError) as err:  # e.g. a Linear sized from a collapsed feature map
        size_hint = f" at input size {size} (native size: {native})" if native and native != size else ""
        raise ConfigError(f"Cannot build model '{recipe['name']}'{size_hint}: {err}. "
                          f"Check the model settings, or drop data.resize so it gets its native size.") from err
    check_input_size(model, spec.channels, size, native_size=native)
    return model, recipe


def weights_preprocessing_for(cfg: DictConfig, spec: DatasetSpec) -> Preprocessing | None:
    """The preprocessing torchvision weights named by model.weights were trained with (None otherwise)."""
    return weights_preprocessing(cfg.model.name, settings_of(cfg.model, MODEL_KEYS), cfg.model.get("weights"),
                                 spec.channels)


def load_starting_weights(cfg: DictConfig, model: torch.nn.Module, read_weights: bool = True) -> str | None:
    """model.weights into `model`, then model.freeze applied; the line saying what was loaded and frozen."""
    weights, setting = cfg.model.get("weights"), cfg.model.get("freeze")
    lines = []
    if weights is not None and read_weights:
        lines.append(load_weights(model, str(weights), cfg.model.name, settings_of(cfg.model, MODEL_KEYS)))
    if setting not in (None, "none", 0):
        total = sum(p.numel() for p in model.parameters())
        trainable = freeze(model, setting)
        lines.append(f"frozen: {'the backbone' if setting == 'backbone' else f'the first {setting} stages'} "
                     f"({total - trainable:,} of {total:,} parameters; {trainable:,} train)")
    return "; ".join(lines) or None


def build_data(checked: CheckedConfig, data: ImageData | None = None) -> PreparedData:
    """The dataset (parsed once per process) split into train/val/test. `data`: use these images instead."""
    cfg = checked.cfg
    data = data or load_image_data(checked.dataset.name, checked.dataset.settings)
    return prepare(cfg.data.name, data, cfg.data.val_fraction, cfg.seed, subset=cfg.data.get("subset"))


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

    def new_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The configured optimizer over the model's trainable parameters."""
        cfg = self.checked.cfg
        return self.checked.optimizer.build(params=parameter_groups(model, cfg.optimizer.get("no_decay_bias_norm",
                                                                                              False)))

    def new_schedule(self, optimizer: torch.optim.Optimizer, epochs: int):
        """The configured learning-rate schedule for `epochs` epochs of this run's loader."""
        return self.checked.scheduler.build(optimizer=optimizer, epochs=epochs,
                                            steps_per_epoch=self.options.optimizer_steps(len(self.train_loader)))

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
            "model": self.recipe, "classes": self.spec.classes,
            # How images were prepared, so that prediction converts new images the same way.
            "preprocess": {"stored_size": list(self.spec.image_size), "size": self.recipe["input_size"],
                           "mean": list(self.transform.mean or []), "std": list(self.transform.std or []),
                           "resize_before_crop": self.transform.resize_before_crop,
                           "augment": self.checked.augment},
            "config": OmegaConf.to_container(self.checked.cfg, resolve=True),
        }

    def trainer(self, callbacks: list[Callback] = (), run_folder: RunFolder | None = None) -> Trainer:
        """The run's Trainer; `run_folder` and the config are what its callbacks see (trainer.run_folder/config)."""
        cfg = self.checked.cfg
        loss_fn = functools.partial(F.cross_entropy, label_smoothing=float(cfg.trainer.get("label_smoothing", 0.0)))
        decay = cfg.trainer.get("ema")  # the average starts from the weights the run starts from
        ema = ModelEma(self.model, float(decay), cfg.trainer.get("ema_warmup", True)) if decay is not None else None
        return Trainer(self.model, self.optimizer, self.schedule, self.train_loader, self.val_loader, self.device,
                       cfg.trainer.epochs, callbacks=callbacks, log_every=cfg.trainer.log_every, loss_fn=loss_fn,
                       options=self.options, forward=self.forward, group=self.group, ema=ema,
                       tta=cfg.trainer.get("tta"), run_folder=run_folder and run_folder.path, config=cfg)


def build_training(checked: CheckedConfig, data: ImageData | None = None, resuming: bool = False) -> TrainingParts:
    """Device, data, model, optimizer, schedule and loaders, in the order that fixes the random streams.

    `resuming`: the weights will come from the run's checkpoint, so model.weights is not read again
    (the file may be gone by now); model.freeze still applies.
    """
    cfg = checked.cfg
    group = group_for(cfg.trainer.get("strategy", "auto"))
    device = group.device(resolve_device(cfg.device.type))
    tune_backend(device)
    torch.manual_seed(cfg.seed)  # the same on every rank: the same data split and initial weights
    prepared = build_data(checked, data)
    spec = prepared.spec
    model, recipe = build_checked_model(cfg, spec)
    weights_note = load_starting_weights(cfg, model, read_weights=not resuming)
    weights_prep = weights_preprocessing_for(cfg, spec)
    size = recipe["input_size"]
    if group.ddp and cfg.trainer.get("sync_batchnorm", False):
        if device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm=true needs CUDA GPUs: PyTorch's SyncBatchNorm does not run "
                              "on CPUs. Leave it false here (each process normalises with its share of the batch).")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    placed = place_model(cfg, model, device, group)
    model, forward, channels_last = placed.model, placed.forward, placed.channels_last
    if group.world_size > 1:
        torch.manual_seed(cfg.seed + group.rank)  # each rank its own dropout masks

    # Pretrained torchvision weights bring their own preprocessing: mean/std and a resize before the centre crop.
    normalize = cfg.data.get("normalize", False)
    mean, std = (weights_prep.mean, weights_prep.std) if weights_prep else (spec.mean, spec.std)
    transform = BatchTransform(size=(size, size), mean=mean if normalize or weights_prep else None,
                               std=std if normalize or weights_prep else None, channels_last=channels_last,
                               augment=checked.augmentations,
                               resize_before_crop=weights_prep.resize if weights_prep and not cfg.data.get("resize")
                               else None)
    def loader(split: str, batch_size: int, **options):
        return split_loader(checked, getattr(prepared, split), split, transform, device, batch_size,
                            shard=(group.rank, group.world_size), **options)

    # trainer.mixup: MixUp / CutMix after the augmentations, from the same stream; soft targets.
    mixer = BatchMixer(spec.num_classes, **checked.mixup) if checked.mixup else None
    train_loader = loader("train", cfg.data.batch_size, shuffle=True, seed=cfg.seed, augment=True, mixer=mixer)
    val_loader = loader("val", checked.eval_batch_size)
    test_loader = loader("test", checked.eval_batch_size)

    options = StepOptions(accumulate=cfg.trainer.get("accumulate_grad_batches", 1),
                          grad_clip_norm=cfg.trainer.get("grad_clip_norm"), autocast_dtype=placed.autocast_dtype)
    parts = TrainingParts(checked, device, prepared, model, recipe, forward, transform, train_loader, val_loader,
                          test_loader, None, None, options, channels_last,
                          placed.notices, weights_note, group)
    parts.optimizer = parts.new_optimizer(model)
    parts.schedule = parts.new_schedule(parts.optimizer, cfg.trainer.epochs)
    return parts


@dataclass
class PlacedModel:
    """A model on its device for a run: in the run's memory format, the callable that computes its logits,
    and the speed switches as they resolved there."""

    model: torch.nn.Module
    forward: Callable  # the model, or torch.compile(model)
    channels_last: bool
    autocast_dtype: torch.dtype | None
    notices: list[str]  # switches that could not be honoured here


def place_model(cfg: DictConfig, model: torch.nn.Module, device: torch.device,
                group: Group | None = None) -> PlacedModel:
    """trainer.channels_last, trainer.precision and trainer.compile resolved for `device`, the model moved
    there: what training and the evaluation of a run's weights (evaluation.py) both run with."""
    channels_last, layout_notice = use_channels_last(cfg.trainer.channels_last, device, model)
    autocast_dtype, precision_notice = resolve_precision(cfg.trainer.get("precision", 32), device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    forward, compile_notice = forward_for(model, cfg, device, group or Group.single())
    return PlacedModel(model, forward, channels_last, autocast_dtype,
                       [n for n in (layout_notice, precision_notice, compile_notice) if n])


def forward_for(model: torch.nn.Module, cfg: DictConfig, device: torch.device,
                group: Group) -> tuple[Callable, str | None]:
    """What computes the logits: DistributedDataParallel(model) in a distributed run (it averages the
    gradients of the parameters that train *now*: rebuilt after an unfreeze), compiled when asked."""
    if group.ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return maybe_compile(model, cfg.trainer.get("compile", False), device)


def split_loader(checked: CheckedConfig, data, split: str, transform: BatchTransform, device: torch.device,
                 batch_size: int | None = None, limited: bool = True, **options):
    """The loader of one split (train, val or test): `batch_size` (default: the evaluation batch size),
    cut to trainer.limit_<split>_batches unless `limited` is false (an evaluation covers the whole split)."""
    batch_size = batch_size or checked.eval_batch_size
    setting = checked.limits.get(f"limit_{split}_batches") if limited else None
    return make_loader(data, batch_size, transform, device, limit_batches=batch_limit(setting, len(data), batch_size),
                       **options)


def batch_limit(setting: int | float | None, examples: int, batch_size: int) -> int | None:
    """trainer.limit_*_batches as a batch count: a whole number is a count, a fraction (0, 1] a share
    of the split's batches (at least one); None: no limit."""
    if setting is None:
        return None
    if isinstance(setting, float):
        return max(1, math.ceil(setting * math.ceil(examples / batch_size)))
    return setting


@dataclass
class RunCallbacks:
    """The callbacks of a run; the display and checkpointer are also kept by name for the run's messages."""

    display: ProgressDisplay
    checkpointer: Checkpointer
    all: list[Callback]
    finetune: TwoStageFinetune | None = None


def build_callbacks(parts: TrainingParts, folder: RunFolder, reporter: Reporter) -> RunCallbacks:
    """Display, metrics.csv, checkpoints, loggers, early stopping, then the user's callbacks."""
    checked, cfg = parts.checked, parts.checked.cfg
    live = parts.group.writes and (cfg.trainer.progress == "bar"
                                   or (cfg.trainer.progress == "auto" and reporter.console.is_terminal))
    display = ProgressDisplay(reporter, live=live)
    run_info = parts.run_info()
    checkpointer = Checkpointer(folder, lambda trainer: training_checkpoint(trainer, run_info),
                                every_minutes=cfg.trainer.get("checkpoint_every_minutes"))
    estimate = TimeEstimate(reporter, lambda: quicker_options(parts))
    # In a distributed run only rank 0 writes metrics.csv, plots and logs (its reporter alone prints).
    writes = parts.group.writes
    callbacks = [display, estimate, *([MetricsWriter(folder.metrics_csv)] if writes else []), checkpointer,
                 *(logger_callbacks(checked.logger, folder, parts.spec.classes, parts.transform.mean,
                                    parts.transform.std, f"{cfg.model.name} on {parts.spec.name}", reporter.line)
                   if writes else [])]
    stopping = cfg.trainer.get("early_stopping") or {}
    if stopping.get("patience"):
        callbacks.append(EarlyStopping(stopping.get("metric", "val_loss"), stopping["patience"],
                                       stopping.get("min_delta", 0.0)))
    finetune = two_stage_finetune(parts, folder, checkpointer, reporter)
    if finetune:
        callbacks.append(finetune)  # after the checkpointer: stage two starts from the best.pt it just wrote
    return RunCallbacks(display, checkpointer, callbacks + checked.callbacks, finetune)


def two_stage_finetune(parts: TrainingParts, folder: RunFolder, checkpointer: Checkpointer,
                       reporter: Reporter) -> TwoStageFinetune | None:
    """The second stage of a fine-tuning (finetune.unfreeze_at), or None when the run has one stage."""
    settings = parts.checked.cfg.get("finetune") or {}
    if settings.get("unfreeze_at") is None:
        return None
    return TwoStageFinetune(settings["unfreeze_at"], settings.get("lr_scale", 0.01), folder.best_checkpoint,
                            scaled_optimizer(parts.new_optimizer, parts.new_schedule),
                            save_last=checkpointer.save_last,
                            say=reporter.line, keep_norm_statistics=settings.get("keep_norm_statistics", False),
                            new_forward=lambda model: forward_for(model, parts.checked.cfg, parts.device,
                                                                  parts.group)[0])


def quicker_options(parts: TrainingParts) -> str:
    """What would make this run's epochs shorter, for the long-epoch warning."""
    size, name = parts.recipe["input_size"], parts.checked.cfg.model.name
    smallest = smallest_input_size(parts.model, parts.spec.channels)
    options = []
    if smallest and smallest < size:
        options.append(f"a smaller data.resize (now {size}; the smallest {name} takes is {smallest})")
    options += ["a smaller model (e.g. model=lenet_bn or model=resnet18 data.resize=32)",
                "trainer.limit_train_batches=20 or data.subset=2000 for a quick look"]
    if parts.device.type == "cpu":
        options.append("a GPU (device=cuda)")
    return "; ".join(options)


def inspect_model(cfg: DictConfig):
    """The model this config would train, pushed through once: (layer rows, totals, input size).

    What `cnntrain-info` prints; the data is loaded only to learn its channels and classes.
    """
    from cnntrain.inspector import layer_table, model_totals

    checked = check_config(cfg)
    spec = build_data(checked).spec
    model, recipe = build_checked_model(cfg, spec)
    shape = (spec.channels, recipe["input_size"], recipe["input_size"])
    rows = layer_table(model, shape)
    return rows, model_totals(model, shape, rows, batch_size=cfg.data.batch_size), recipe["input_size"]
