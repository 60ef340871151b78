"""timm's pretrained weights for `model=timm`, from the local Hugging Face cache only, and .safetensors files.

`model.weights=resnet18.a1_in1k` (timm's `<arch>.<tag>`, or the tag alone, or DEFAULT / pretrained for
the arch's default tag) names weights that timm keeps on the Hugging Face hub as `timm/<arch>.<tag>`.
cnntrain never downloads them: the file is looked up in the local cache, laid out as huggingface_hub lays
it out (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`:
`models--timm--<arch>.<tag>/snapshots/<revision>/model.safetensors`, `refs/main` naming the revision),
and when it is not there the message says what to fetch and where to put it. Found, it is loaded by
timm itself (`create_model(pretrained=True)` given that file, never the hub), into a model created as
the run's was (`models.timm_models.TIMM_OPTIONS`): timm's own conversions apply (a classifier for other
classes left fresh, an RGB stem summed for grey images, a ViT's position embedding resized).

The weights' preprocessing (input size, resize before the centre crop from `crop_pct`, mean/std) comes
from timm's pretrained config (`preprocessing`); pretrained.py records it as torchvision's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from cnntrain.errors import ConfigError, first_line
from cnntrain.models.timm_models import INSTALL_HINT, TIMM_OPTIONS, check_arch, import_timm
from cnntrain.models.torchvision_models import HEAD_ATTRIBUTE
from cnntrain.registry import did_you_mean

# A value with one of these endings is a file, not a timm weights name (whose tag follows a dot).
WEIGHTS_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
DEFAULT_NAMES = ("default", "pretrained")
# What timm crops to when the pretrained config does not say (timm.data.DEFAULT_CROP_PCT).
DEFAULT_CROP_PCT = 0.875
# The files timm reads from a `timm/<name>` repository, in its order of preference.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def is_timm_weights_name(weights: str) -> bool:
    """`resnet18.a1_in1k`, `a1_in1k`, `DEFAULT`: not an existing path, no folder in it, no weights file ending."""
    path = Path(weights).expanduser()
    return (
        not path.exists()
        and "/" not in weights
        and "\\" not in weights
        and path.suffix.lower() not in WEIGHTS_FILE_SUFFIXES
    )


def pretrained_cfg(arch: str, weights: str):
    """timm's pretrained config of the weights `weights` names for `arch` (ConfigError naming the choices)."""
    check_arch(arch)
    timm = import_timm()
    available = timm.list_pretrained(f"{arch}.*")
    if not available:
        raise ConfigError(
            f"model.weights={weights}: timm has no pretrained weights for {arch}. Give a weights file, a "
            f"cnntrain run folder, or model.weights=null to train from scratch."
        )
    if weights.lower() in DEFAULT_NAMES:
        return timm.models.get_pretrained_cfg(arch)
    name = weights if "." in weights else f"{arch}.{weights}"
    if name.partition(".")[0] != arch:
        raise ConfigError(
            f"model.weights={weights} are timm's weights for {name.partition('.')[0]}, but model.arch={arch}. "
            f"Use model.arch={name.partition('.')[0]}, or weights of {arch}: {', '.join(available)}."
        )
    if name not in available:
        raise ConfigError(
            f"model.weights={weights}: timm has no such weights for {arch}.{did_you_mean(name, available)} "
            f"Available: {', '.join(available)}, DEFAULT ({timm.models.get_pretrained_cfg(arch).tag}), "
            f"a weights file or a cnntrain run folder."
        )
    return timm.models.get_pretrained_cfg(name)


def preprocessing(arch: str, weights: str) -> dict[str, Any]:
    """How timm prepares images for these weights at evaluation (pretrained.Preprocessing's fields): resize to
    size / crop_pct (rounded down, as timm's transforms do), centre-crop `size`, normalise. (timm resizes
    bicubic for most weights; cnntrain's loaders resize bilinear with antialiasing.)"""
    cfg = pretrained_cfg(arch, weights)
    size = int(cfg.input_size[-1])
    resize = math.floor(size / (cfg.crop_pct or DEFAULT_CROP_PCT))
    return {"size": size, "resize": max(resize, size), "mean": tuple(cfg.mean), "std": tuple(cfg.std)}


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded repositories on this machine (read at each call)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_weights_file(cfg, weights: str) -> Path:
    """The weights' file in the local caches (timm's hub repository, else torch's cache for a URL)."""
    from huggingface_hub import try_to_load_from_cache

    if cfg.hf_hub_id:
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
        for file in files:
            found = try_to_load_from_cache(cfg.hf_hub_id, file, cache_dir=hub_cache())
            if isinstance(found, str):
                return Path(found)
        raise ConfigError(missing_hub_message(cfg.hf_hub_id, files[0], weights))
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url or "").path).name
    if cfg.url and path.is_file():
        return path
    raise ConfigError(
        f"model.weights={weights}: timm's {cfg.architecture}.{cfg.tag} weights are not in {path}, and cnntrain "
        f"does not download them. On a machine with internet, download {cfg.url} and copy the file to {path}. "
        f"Or give model.weights=<file> or model.weights=null to train from scratch."
    )


def missing_hub_message(repo: str, file: str, weights: str) -> str:
    folder = hub_cache() / f"models--{repo.replace('/', '--')}"
    return (
        f"model.weights={weights}: the weights of {repo} ({file}) are not in the local Hugging Face cache "
        f"({folder}/snapshots/<revision>/{file}, refs/main naming the revision), and cnntrain does not "
        f"download them. On a machine with internet run `hf download {repo}` (or `huggingface-cli download "
        f"{repo}`), then copy models--{repo.replace('/', '--')} from its Hugging Face cache "
        f"(~/.cache/huggingface/hub there) into {hub_cache()} here (HF_HUB_CACHE or HF_HOME move that "
        f"folder). Or give the downloaded {file} as model.weights=<file>, "
        f"or model.weights=null to train from scratch."
    )


@contextlib.contextmanager
def timm_logs_quiet():
    """timm logs every load at INFO and a replaced classifier as a warning, which Hydra's logging prints;
    the run's weights line says both (a failure still raises)."""
    logger = logging.getLogger("timm")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_timm_weights(model: nn.Module, arch: str, weights: str) -> str:
    """timm's pretrained `weights` into `model` (built by models.timm_models); the line saying what was loaded."""
    cfg = pretrained_cfg(arch, weights)
    path = cached_weights_file(cfg, weights)
    options = getattr(model, TIMM_OPTIONS)
    # The loaded copy's random initialisation must not move the run's random streams.
    with torch.random.fork_rng(devices=[]), timm_logs_quiet():
        try:
            loaded = import_timm().create_model(
                f"{arch}.{cfg.tag}", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **options
            )
        except Exception as err:  # a cut-short download, a file of other weights: the user needs the same step
            reason = first_line(err)
            raise ConfigError(
                f"model.weights={weights}: timm cannot load {path} ({reason}). Download it again "
                f"(`hf download {cfg.hf_hub_id or cfg.url}`), or give model.weights=null to train from scratch."
            ) from None
    model.load_state_dict(loaded.state_dict())
    notes = []
    if options["num_classes"] != cfg.num_classes:
        notes.append(f"new head '{getattr(model, HEAD_ATTRIBUTE)}' for these classes")
    channels, trained_channels = options["in_chans"], cfg.input_size[0]
    if channels != trained_channels:
        how = "summed over its colour channels" if channels == 1 else f"adapted from {trained_channels} channels"
        notes.append(f"stem {how} for {channels}-channel images")
    note = f" ({'; '.join(notes)})" if notes else ""
    return f"weights: timm's {arch}.{cfg.tag} ({path}){note}"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors (the format timm and Hugging Face publish weights in)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(
            f"model.weights={path} is a .safetensors file, which needs the safetensors package: {INSTALL_HINT}"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        reason = first_line(err)
        raise ConfigError(
            f"Cannot read model.weights={path}: {reason} (is it a .safetensors file, and whole?)."
        ) from None
