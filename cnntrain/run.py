"""`train(cfg)`: turn a composed config into objects, run the trainer, write the run folder.

The flow: check every name and setting (before any data loads) -> load and split the
data -> build the model from the dataset spec -> optimizer, scheduler, loaders ->
Trainer.fit with display/metrics/checkpoint callbacks -> test the best checkpoint ->
summary.json.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from cnntrain.callbacks import Checkpointer, EarlyStopping, MetricsWriter, ProgressDisplay, Reporter
from cnntrain.checkpoint import load_checkpoint
from cnntrain.data import DATASETS, LOADER_KEYS, DatasetSpec, load_image_data, prepare
from cnntrain.data.augment import build_augmentations
from cnntrain.data.loader import BatchTransform, make_loader
from cnntrain.errors import ConfigError, RunInterrupted
from cnntrain.inspector import check_input_size
from cnntrain.loggers import check_logger, logger_callbacks
from cnntrain.models import MODEL_KEYS, MODELS, init_weights
from cnntrain.models.init import check_init_scheme
from cnntrain.optim import OPTIMIZER_KEYS, OPTIMIZERS, SCHEDULERS, parameter_groups
from cnntrain.speed_switches import PRECISIONS, maybe_compile, resolve_precision, tune_backend, use_channels_last
from cnntrain.trainer import EpochMetrics, StepOptions, Trainer

PROGRESS_MODES = ("auto", "bar", "plain", "none")
EARLY_STOPPING_METRICS = ("val_loss", "val_acc", "train_loss", "train_acc")


def settings_of(section: DictConfig, reserved: tuple[str, ...] = ("name",)) -> dict[str, Any]:
    """A config section as builder keyword arguments (plain Python values)."""
    values = OmegaConf.to_container(section, resolve=True)
    return {k: v for k, v in values.items() if k not in reserved}


def import_user_modules(modules) -> None:
    """Import the modules listed in `imports` so that their registrations take effect.

    The current folder is searched too: the `cnntrain` script's own folder is what
    Python puts on sys.path, not the folder the user is working in.
    """
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for module in modules or []:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(
                f"Cannot import '{module}' (imports): {err}. Make sure it is on PYTHONPATH "
                f"(e.g. run from the folder that holds it)."
            ) from err


def check_config(cfg: DictConfig) -> None:
    """Fail on unknown names or settings before any data is loaded."""
    MODELS.check_settings(cfg.model.name, settings_of(cfg.model, MODEL_KEYS))
    check_init_scheme(cfg.model.get("init", "default"))
    DATASETS.check_settings(cfg.data.name, settings_of(cfg.data, LOADER_KEYS))
    OPTIMIZERS.check_settings(cfg.optimizer.name, settings_of(cfg.optimizer, OPTIMIZER_KEYS))
    SCHEDULERS.check_settings(cfg.scheduler.name, settings_of(cfg.scheduler))
    augment_entries(cfg)
    check_logger(cfg.get("logger"))
    check_trainer_settings(cfg)


def check_trainer_settings(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    for key in ("trainer.epochs", "data.batch_size", "trainer.accumulate_grad_batches"):
        _require(OmegaConf.select(cfg, key, default=1), key, "a positive whole number",
                 lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    if trainer.progress not in PROGRESS_MODES:
        raise ConfigError(f"trainer.progress must be one of {', '.join(PROGRESS_MODES)}, "
                          f"got '{trainer.progress}'.")
    _require(trainer.get("label_smoothing", 0.0), "trainer.label_smoothing", "a number from 0 up to (not) 1",
             lambda v: isinstance(v, (int, float)) and 0 <= v < 1)
    _require(trainer.get("grad_clip_norm"), "trainer.grad_clip_norm", "null (off) or a positive number",
             lambda v: v is None or (isinstance(v, (int, float)) and v > 0))
    _require(trainer.get("compile", False), "trainer.compile", "true or false", lambda v: isinstance(v, bool))
    _require(trainer.get("channels_last", "auto"), "trainer.channels_last", "auto, true or false",
             lambda v: v in ("auto", True, False))
    _require(trainer.get("precision", 32), "trainer.precision", "one of 32, bf16, fp16",
             lambda v: str(v).lower() in PRECISIONS)
    stopping = trainer.get("early_stopping") or {}
    _require(stopping.get("patience"), "trainer.early_stopping.patience", "null (off) or a positive whole number",
             lambda v: v is None or (isinstance(v, int) and v >= 1))
    _require(stopping.get("metric", "val_loss"), "trainer.early_stopping.metric",
             f"one of {', '.join(EARLY_STOPPING_METRICS)}", lambda v: v in EARLY_STOPPING_METRICS)
    _require(stopping.get("min_delta", 0.0), "trainer.early_stopping.min_delta", "a number >= 0",
             lambda v: isinstance(v, (int, float)) and v >= 0)


def _require(value, key: str, expected: str, is_valid) -> None:
    if not is_valid(value):
        raise ConfigError(f"{key} must be {expected}, got {value!r}.")


def augment_entries(cfg: DictConfig) -> list:
    """data.augment as plain values, checked by building it once."""
    entries = cfg.data.get("augment")
    entries = OmegaConf.to_container(entries, resolve=True) if OmegaConf.is_config(entries) else list(entries or [])
    build_augmentations(entries)
    return entries


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


def input_size_for(cfg: DictConfig, spec: DatasetSpec) -> int:
    """data.resize if set, else the model's native input_size, else the data's own size."""
    size = cfg.data.get("resize") or cfg.model.get("input_size") or spec.image_size[0]
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"data.resize / model.input_size must be a positive whole number, got {size!r}.")
    return size


def model_recipe(cfg: DictConfig, spec: DatasetSpec, input_size: int) -> dict[str, Any]:
    """Everything needed to rebuild the model; saved in every checkpoint."""
    return {"name": cfg.model.name, "settings": settings_of(cfg.model, MODEL_KEYS),
            "num_classes": spec.num_classes, "in_channels": spec.channels, "input_size": input_size,
            "init": cfg.model.get("init", "default")}


def build_model(recipe: dict[str, Any]) -> torch.nn.Module:
    model = MODELS.build(recipe["name"], recipe["settings"], num_classes=recipe["num_classes"],
                         in_channels=recipe["in_channels"], input_size=recipe["input_size"])
    return init_weights(model, recipe["init"])


def build_checked_model(cfg: DictConfig, spec: DatasetSpec) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model for this data, after checking that an image of the input size gets through it.

    Catches e.g. the 224-pixel AlexNet asked to take 28-pixel images, before training,
    with the layer whose output collapsed and the size to use instead.
    """
    size = input_size_for(cfg, spec)
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


def model_from_checkpoint(checkpoint: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a model from a checkpoint loaded with `load_checkpoint` and load its weights."""
    recipe = dict(checkpoint["model"], init="default")  # the weights come from the file
    model = build_model(recipe)
    model.load_state_dict(checkpoint["state_dict"])
    return model


def new_run_dir(cfg: DictConfig) -> Path:
    """Run folder for calls from Python (the CLI gets its folder from Hydra)."""
    now = datetime.now()
    while True:
        path = Path("outputs") / now.strftime("%Y-%m-%d") / f"{now:%H-%M-%S-%f}_{cfg.model.name}_{cfg.data.name}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            now = datetime.now()


def hydra_run_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    except ImportError:
        return None


def train(cfg: DictConfig, run_dir: Path | str | None = None,
          resume_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train as `cfg` says; returns the summary also written to `<run_dir>/summary.json`.

    `resume_from` is the run's last checkpoint when continuing it (see resume.py).
    Any failure, a config error included, is recorded in summary.json (status
    "failed" and the message) before it is raised, so a sweep's table can show it;
    Ctrl-C is recorded as "interrupted" with the command that resumes the run.
    """
    run_dir = Path(run_dir) if run_dir else (hydra_run_dir() or new_run_dir(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_config_if_missing(cfg, run_dir)
    reporter = Reporter(run_dir / "train.log", quiet=cfg.trainer.get("progress") == "none")
    started = time.time()
    try:
        import_user_modules(cfg.get("imports"))
        check_config(cfg)  # every name and setting, before any data is loaded
        return _train(cfg, run_dir, reporter, started, resume_from)
    except KeyboardInterrupt as err:
        message = err.message if isinstance(err, RunInterrupted) else interrupted_outside_training(run_dir)
        reporter.line(message, style="yellow")
        _write_json(run_dir / "summary.json", {"status": "interrupted", "error": message, "run_dir": str(run_dir),
                                                "wall_seconds": time.time() - started})
        raise
    except Exception as err:  # recorded for the sweep table, then raised to the caller
        reporter.log_only(f"error: {err}")  # the CLI prints it on the console
        _write_json(run_dir / "summary.json", {"status": "failed", "error": str(err), "run_dir": str(run_dir),
                                                "wall_seconds": time.time() - started})
        raise
    finally:
        reporter.close()


def resume_command(run_dir: Path) -> str:
    return f"cnntrain resume={display_path(run_dir)}"


def _train(cfg: DictConfig, run_dir: Path, reporter: Reporter, started: float,
           resume_from: dict[str, Any] | None) -> dict[str, Any]:
    device = resolve_device(cfg.device.type)
    tune_backend(device)
    torch.manual_seed(cfg.seed)
    data = load_image_data(cfg.data.name, settings_of(cfg.data, LOADER_KEYS))
    prepared = prepare(cfg.data.name, data, cfg.data.val_fraction, cfg.seed)
    spec = prepared.spec
    model, recipe = build_checked_model(cfg, spec)
    size = recipe["input_size"]
    channels_last, layout_notice = use_channels_last(cfg.trainer.channels_last, device, model)
    autocast_dtype, precision_notice = resolve_precision(cfg.trainer.get("precision", 32), device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    forward, compile_notice = maybe_compile(model, cfg.trainer.get("compile", False), device)

    normalize = cfg.data.get("normalize", False)
    augment = augment_entries(cfg)
    transform = BatchTransform(size=(size, size), mean=spec.mean if normalize else None,
                               std=spec.std if normalize else None, channels_last=channels_last,
                               augment=build_augmentations(augment))
    eval_batch = cfg.data.get("eval_batch_size") or 2 * cfg.data.batch_size
    train_loader = make_loader(prepared.train, cfg.data.batch_size, transform, device, shuffle=True,
                               seed=cfg.seed, augment=True)
    val_loader = make_loader(prepared.val, eval_batch, transform, device)
    test_loader = make_loader(prepared.test, eval_batch, transform, device)

    options = StepOptions(accumulate=cfg.trainer.get("accumulate_grad_batches", 1),
                          grad_clip_norm=cfg.trainer.get("grad_clip_norm"), autocast_dtype=autocast_dtype)
    optimizer = OPTIMIZERS.build(cfg.optimizer.name, settings_of(cfg.optimizer, OPTIMIZER_KEYS),
                                 params=parameter_groups(model, cfg.optimizer.get("no_decay_bias_norm", False)))
    schedule = SCHEDULERS.build(cfg.scheduler.name, settings_of(cfg.scheduler), optimizer=optimizer,
                                epochs=cfg.trainer.epochs, steps_per_epoch=options.optimizer_steps(len(train_loader)))

    params = sum(p.numel() for p in model.parameters())
    reporter.line(f"cnntrain: {cfg.model.name} on {spec.name} ({spec.train_size:,} train / {spec.val_size:,} val "
                  f"from {spec.val_source} / {spec.test_size:,} test), input {spec.image_size[0]}px -> {size}px, "
                  f"{params:,} parameters, device {device}")
    reporter.line(f"run folder: {display_path(run_dir)}")
    for notice in (layout_notice, precision_notice, compile_notice):
        if notice:
            reporter.line(notice, style="yellow")

    def checkpoint_state(trainer: Trainer, metrics: EpochMetrics) -> dict[str, Any]:
        return {
            "format": 1, "epoch": metrics.epoch, "metrics": metrics.as_dict(), "model": recipe,
            "classes": spec.classes, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict() if schedule is not None else None,
            "grad_scaler": trainer.scaler.state_dict() if trainer.scaler else None,
            "rng": rng_states(),
            # Everything a resumed run needs to carry on as if it had never stopped.
            "history": [m.as_dict() for m in trainer.history], "stop_reason": trainer.stop_reason,
            # How images were prepared, so that prediction converts new images the same way.
            "preprocess": {"stored_size": list(spec.image_size), "size": size,
                           "mean": list(transform.mean or []), "std": list(transform.std or []),
                           "augment": augment},
            "config": OmegaConf.to_container(cfg, resolve=True),
        }

    live = cfg.trainer.progress == "bar" or (cfg.trainer.progress == "auto" and reporter.console.is_terminal)
    display = ProgressDisplay(reporter, live=live)
    checkpointer = Checkpointer(run_dir / "checkpoints", checkpoint_state)
    callbacks = [display, MetricsWriter(run_dir / "metrics.csv"), checkpointer,
                 *logger_callbacks(cfg.get("logger"), run_dir, spec.classes, transform.mean, transform.std,
                                   f"{cfg.model.name} on {spec.name}", reporter.line)]
    stopping = cfg.trainer.get("early_stopping") or {}
    if stopping.get("patience"):
        callbacks.append(EarlyStopping(stopping.get("metric", "val_loss"), stopping["patience"],
                                       stopping.get("min_delta", 0.0)))
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=float(cfg.trainer.get("label_smoothing", 0.0)))
    trainer = Trainer(model, optimizer, schedule, train_loader, val_loader, device, cfg.trainer.epochs,
                      callbacks=callbacks, log_every=cfg.trainer.log_every, loss_fn=loss_fn, options=options,
                      forward=forward)
    start_epoch = 1
    if resume_from is not None:
        start_epoch = restore_training_state(resume_from, trainer)
        reporter.line(f"resumed from checkpoints/last.pt: {epochs_text(start_epoch - 1)} done, "
                      f"continuing at epoch {start_epoch} of {cfg.trainer.epochs}")
    try:
        history = trainer.fit(start_epoch)
    except KeyboardInterrupt:
        raise RunInterrupted(interrupted_message(run_dir, trainer, checkpointer)) from None
    finally:
        display.close()
    if trainer.stop_reason:
        reporter.line(f"stopped after epoch {history[-1].epoch}: {trainer.stop_reason}")

    best = checkpointer.best
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["state_dict"])
    test_loss, test_acc = trainer.evaluate(test_loader)
    summary = {
        "status": "completed", "run_dir": str(run_dir), "model": cfg.model.name, "data": cfg.data.name,
        "epochs": len(history), "best_epoch": best.epoch, "best_metric": "val_acc",
        "best_val_acc": best.val_acc, "best_val_loss": best.val_loss,
        "test_loss": test_loss, "test_acc": test_acc, "final_epoch": history[-1].as_dict(),
        "stopped_early": trainer.stop_reason,
        "params": params, "input_size": size, "train_size": spec.train_size, "val_size": spec.val_size,
        # What the speed switches resolved to on this device (the config may say auto).
        "channels_last": channels_last, "precision": str(autocast_dtype or torch.float32).removeprefix("torch."),
        "test_size": spec.test_size, "val_source": spec.val_source, "device": describe_device(device),
        "versions": versions(), "git_commit": git_commit(), "wall_seconds": time.time() - started,
        "mean_epoch_seconds": sum(m.epoch_seconds for m in history) / len(history),
    }
    _write_json(run_dir / "summary.json", summary)
    reporter.renderable(summary_table(summary))
    return summary


def rng_states() -> dict[str, Any]:
    """Every random stream training draws from (dropout, ...); data order and augmentation are seeded per epoch."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_training_state(checkpoint: dict[str, Any], trainer: Trainer) -> int:
    """Load a last.pt into the trainer's model, optimizer, schedule and RNGs; returns the epoch to start at."""
    trainer.model.load_state_dict(checkpoint["state_dict"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    if trainer.schedule is not None and checkpoint.get("scheduler") is not None:
        trainer.schedule.load_state_dict(checkpoint["scheduler"])
    if trainer.scaler and checkpoint.get("grad_scaler"):
        trainer.scaler.load_state_dict(checkpoint["grad_scaler"])
    trainer.history = [EpochMetrics(**row) for row in checkpoint["history"]]
    trainer.stop_reason = checkpoint.get("stop_reason")
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuples(rng["python"]))
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return checkpoint["epoch"] + 1


def _as_tuples(value):
    """random.setstate wants the tuples getstate gave; a checkpoint may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def interrupted_outside_training(run_dir: Path) -> str:
    """Ctrl-C while loading data or testing: what is on disk says whether there is something to resume."""
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return f"Interrupted. Resume with: {resume_command(run_dir)}"
    return "Interrupted before the first epoch finished; there is nothing to resume, start the run again."


def epochs_text(last: int) -> str:
    return "epoch 1" if last == 1 else f"epochs 1-{last}"


def interrupted_message(run_dir: Path, trainer: Trainer, checkpointer: Checkpointer) -> str:
    saved = checkpointer.saved_epoch
    where = f"Interrupted during epoch {saved + 1} of {trainer.epochs}."
    if not saved:
        return f"{where} No epoch had finished, so there is nothing to resume; start the run again."
    return (f"{where} checkpoints/last.pt holds {epochs_text(saved)} (the unfinished epoch is redone on resume). "
            f"Resume with: {resume_command(run_dir)}")


def inspect_model(cfg: DictConfig):
    """The model this config would train, pushed through once: (layer rows, totals, input size).

    What `cnntrain-info` prints; the data is loaded only to learn its channels and classes.
    """
    from cnntrain.inspector import layer_table, model_totals

    import_user_modules(cfg.get("imports"))
    check_config(cfg)
    data = load_image_data(cfg.data.name, settings_of(cfg.data, LOADER_KEYS))
    spec = prepare(cfg.data.name, data, cfg.data.val_fraction, cfg.seed).spec
    model, recipe = build_checked_model(cfg, spec)
    shape = (spec.channels, recipe["input_size"], recipe["input_size"])
    rows = layer_table(model, shape)
    return rows, model_totals(model, shape, rows, batch_size=cfg.data.batch_size), recipe["input_size"]


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="cnntrain result", show_header=True, header_style="bold")
    for column in ("best epoch", "val acc", "test acc", "time"):
        table.add_column(column)
    table.add_column("run folder", overflow="fold")
    table.add_row(f"{summary['best_epoch']}/{summary['epochs']}", f"{summary['best_val_acc']:.4f}",
                  f"{summary['test_acc']:.4f}", f"{summary['wall_seconds']:.1f}s", display_path(summary["run_dir"]))
    return table


def display_path(path: Path | str) -> str:
    """`path` relative to the current folder when it is inside it (shorter on screen)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def versions() -> dict[str, str]:
    import hydra
    import torchvision

    from cnntrain import __version__

    return {"cnntrain": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__}


def git_commit() -> str | None:
    """The commit of the current folder's git checkout, if there is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return result.stdout.strip() if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _save_config_if_missing(cfg: DictConfig, run_dir: Path) -> None:
    """Hydra writes .hydra/config.yaml for CLI runs; calls from Python get the same file."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(OmegaConf.to_yaml(cfg))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
