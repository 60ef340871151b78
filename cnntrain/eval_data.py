"""cnntrain-eval's data: the run's own (split as the run split it) or other labelled data (data=<name>,
data.<key>=...), read as the run's model takes it, its classes matched to the run's by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnntrain.checkpoint import RunCheckpoint
from cnntrain.config import group_file
from cnntrain.data import ImageData, ImageSet, PreparedData, load_image_data
from cnntrain.data.image_files import FileImageSet
from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.opened_run import apply_override
from cnntrain.registry import did_you_mean
from cnntrain.run_folder import RunFolder

# What an evaluation may change: the data (data=<name>, data.<key>=...) and where it runs (device=...).
MAY_CHANGE = ("data", "device")


# Data settings that change how the data is read, not which images it holds: left out of the
# decision whether the data is the run's own, and of the output folder's name.
LOADING_KEYS = ("batch_size", "eval_batch_size", "workers", "cache_limit_mb", "download")


def apply_data_overrides(cfg: DictConfig, overrides: list[str], state: RunCheckpoint, folder: RunFolder) -> None:
    """data=<name> (another dataset's file), data.<key>=... and device=... applied to the run's config."""
    for override in overrides:
        key = override.lstrip("+").partition("=")[0]
        section = key.split(".")[0]
        if section not in MAY_CHANGE:
            rest = key.partition(".")[2]
            hint = did_you_mean(section, MAY_CHANGE).replace("'?", f".{rest}'?" if rest else "'?")
            raise ConfigError(
                f"cnntrain-eval cannot apply {override}: it evaluates the run's checkpoint as it was "
                f"trained, and takes only data=<name>, data.<key>=... and device=... overrides.{hint}"
            )
    choices = [o for o in overrides if o.lstrip("+").partition("=")[0] == "data"]
    for override in choices[-1:]:  # the dataset first, as Hydra does: its settings then apply to it
        name = override.partition("=")[2]
        if name != cfg.data.name:
            group_file("data", name)  # an unknown name: a message with the choices there are
            run_data = cfg.data
            apply_override(cfg, f"data={name}", folder.path, may_change=MAY_CHANGE)
            switched_dataset_settings(cfg, run_data, state)
    for override in overrides:
        if override not in choices:
            apply_override(cfg, override, folder.path, may_change=MAY_CHANGE)


def switched_dataset_settings(cfg: DictConfig, run_data: DictConfig, state: RunCheckpoint) -> None:
    """Another dataset's file, set to read images as the run's model takes them: the run's batch sizes and,
    where the dataset has these settings, the model's channels and the size the run stored its images at."""
    cfg.data.batch_size = run_data.batch_size
    cfg.data.eval_batch_size = run_data.get("eval_batch_size")
    if "channels" in cfg.data:
        cfg.data.channels = state.in_channels
    if "image_size" in cfg.data:
        cfg.data.image_size = state.preprocess["stored_size"][0]


def without_loading_keys(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key not in LOADING_KEYS}


def data_label(settings: dict) -> str:
    """A folder name for data other than the run's: its name, its root's folder name (else its label
    file's name), a digest of its settings."""
    root, labels = settings.get("root") or settings.get("path"), settings.get("labels")
    digest = hashlib.sha1(json.dumps(without_loading_keys(settings), sort_keys=True, default=str).encode())
    where = Path(str(root)).name if root else Path(str(labels)).stem if labels else ""
    parts = [settings["name"], where, digest.hexdigest()[:8]]
    return "-".join(part for part in parts if part)


def load_data(checked) -> ImageData:
    """The dataset as its builder returns it (build_data then splits it as for a run)."""
    try:
        return load_image_data(checked.dataset.name, checked.dataset.settings)
    except OSError as err:
        raise CnnTrainError(
            f"Cannot load the data ({checked.cfg.data.name}): {err}. Check data.root and the files' permissions."
        ) from err


def check_classes_and_channels(data: ImageData, state: RunCheckpoint, own_data: bool, where: str) -> list[str]:
    """The data must have the run's classes (by name) and the channels its model takes; notices otherwise."""
    classes, data_classes, channels = state.classes, list(data.classes), data.train.shape[1]
    extra = [name for name in data_classes if name not in classes]
    missing = [name for name in classes if name not in data_classes]
    if extra:
        raise CnnTrainError(
            f"The classes of {where} differ from the run's: the run's model does not know "
            f"{_names(extra)}"
            + (f", and the data has no {_names(missing)}" if missing else "")
            + f". The run was trained on {len(classes)} classes: {', '.join(classes)}. Evaluate it on data with "
            f"these classes (for data=image_folder: one folder per class, named as these; for data=csv: these labels)."
        )
    notices = []
    if missing:
        notices.append(
            f"notice: {where} has no images of {_names(missing)} ({len(data_classes)} of the run's "
            f"{len(classes)} classes); their recall is undefined."
        )
    elif data_classes != classes and not own_data:
        notices.append(f"notice: {where} lists the run's classes in another order; they are matched by name.")
    if channels != state.in_channels:
        raise CnnTrainError(
            f"{where} has {channels}-channel images, but the run's model takes "
            f"{state.in_channels}-channel ones. Set data.channels={state.in_channels} "
            f"(1: grey, 3: RGB) if the dataset has that setting."
        )
    return notices


def _names(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def split_examples(data: ImageData, prepared: PreparedData, split: str):
    """The images of `split`: a split of the prepared data, or all of the data's images for `all`."""
    if split != "all":
        return getattr(prepared, split)
    sets = [part for part in (data.train, data.val, data.test) if part is not None]
    if len(sets) == 1:
        return sets[0]
    if all(isinstance(part, FileImageSet) for part in sets):
        first = sets[0]
        return FileImageSet(
            [path for part in sets for path in part.files],
            torch.cat([part.labels for part in sets]),
            first.channels,
            first.size,
            first.skip_bad_files,
            first.workers,
        )
    files = [path for part in sets for path in part.files] if all(part.files is not None for part in sets) else None
    return ImageSet(torch.cat([part.images for part in sets]), torch.cat([part.labels for part in sets]), files)


def with_run_classes(data: ImageData, run_classes: list[str]) -> ImageData:
    """`data` with the run's class list, its labels numbered as the run numbers its classes (the data may
    order them otherwise, or lack some). Sizes and order stay, so the splits are drawn as before."""
    if list(data.classes) == run_classes:
        return data
    mapping = torch.tensor([run_classes.index(name) for name in data.classes])

    def relabelled(part):
        if part is None:
            return None
        part = dataclasses.replace(part) if isinstance(part, ImageSet) else part.subset(torch.arange(len(part)))
        part.labels = mapping[part.labels]
        return part

    return dataclasses.replace(
        data,
        classes=list(run_classes),
        train=relabelled(data.train),
        val=relabelled(data.val),
        test=relabelled(data.test),
    )


def hold_out_notice(data: ImageData, prepared: PreparedData, split: str, count: int) -> str:
    total = sum(len(part) for part in (data.train, data.val, data.test) if part is not None)
    what = (
        "the images of its val split"
        if data.val is not None
        else f"the images held out from it for validation ({prepared.spec.val_source.split(';')[0]})"
    )
    return (
        f"notice: {prepared.spec.name} has no {split} split of its own, so split={split} is {count} of its "
        f"{total} images: {what}. split=all evaluates all of them."
    )
