"""Starting weights: `model.weights=DEFAULT|<torchvision or timm weights name>|<file>|<run folder>`.

- A torchvision weights name (`DEFAULT`, `IMAGENET1K_V2`, ...; model=torchvision only)
  goes through torchvision's weights API: the file is read from torch's hub cache
  (`$TORCH_HOME/hub/checkpoints/`, `~/.cache/torch/hub/checkpoints/` by default) and
  downloaded there when missing and a network is reachable. The preprocessing the
  weights were trained with (input size, resize before the centre crop, mean/std)
  comes with them (`weights_preprocessing`).
- A timm weights name (`resnet18.a1_in1k`, `DEFAULT`; model=timm only): from the local Hugging Face
  cache, never downloaded, with the preprocessing of timm's pretrained config (timm_weights.py).
- A file: a cnntrain checkpoint, or a state dict (bare, or under "state_dict"/"model"; .safetensors too).
- A cnntrain run folder: its checkpoints/best.pt.

Loading (`load_weights`) fills every layer of the model from the file, except the head
(the classifier, see `head_name`) when the file's was made for other classes: the head
keeps its fresh initialisation, and the run says so. A stem made for 3 channels is
summed over its colour channels for grey images (the average of what the RGB filters
see). Any other difference is refused, naming the layer; weights that cannot be had
are never replaced by a silent random initialisation.
"""

from __future__ import annotations

import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnntrain import timm_weights
from cnntrain.checkpoint import load_checkpoint
from cnntrain.errors import ConfigError, first_line
from cnntrain.models.torchvision_models import HEAD_ATTRIBUTE, first_conv
from cnntrain.registry import did_you_mean
from cnntrain.run_folder import RunFolder

# Layers of torchvision checkpoints that cnntrain's builds leave out (auxiliary classifiers).
AUXILIARY_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")
# Seconds a weights download may wait for the server before the run says how to get the file by hand.
DOWNLOAD_TIMEOUT_S = 30


def is_weights_name(weights: str) -> bool:
    """`DEFAULT`, `IMAGENET1K_V2`: a torchvision weights name, not a path (no separators, no suffix, no such file)."""
    return "/" not in weights and "." not in weights and not Path(weights).exists()


def torchvision_weights(arch: str, name: str):
    """The torchvision weights enum member `name` of `arch`, any case (ConfigError naming the choices otherwise)."""
    import torchvision.models

    enum = torchvision.models.get_model_weights(arch)
    choices = list(enum.__members__)
    name = name.upper() if name.upper() in choices else name
    if name not in choices:
        raise ConfigError(
            f"model.weights={name}: torchvision has no such weights for {arch}."
            f"{did_you_mean(name, choices)} Available: {', '.join(choices)}, or a weights file, "
            f"or a cnntrain run folder."
        )
    return enum[name]


def _check_name_use(model_name: str, weights: str) -> None:
    if model_name != "torchvision":
        raise ConfigError(
            f"model.weights={weights}: there is no such file or folder, and torchvision weights "
            f"names (DEFAULT, IMAGENET1K_V1, ...) are only for model=torchvision. For model={model_name} "
            f"give a weights file or a cnntrain run folder (model.weights=outputs/<date>/<run>)."
        )


def implied_settings(model_name: str, settings: dict[str, Any], weights: str | None, channels: int) -> dict:
    """Builder settings that torchvision weights imply: googlenet's and inception_v3's ImageNet weights expect
    `transform_input` (torchvision turns it on with them), which only works on RGB images."""
    if (
        model_name == "torchvision"
        and settings.get("arch") in ("googlenet", "inception_v3")
        and channels == 3
        and isinstance(weights, str)
        and is_weights_name(weights)
        and "transform_input" not in settings
    ):
        return {"transform_input": True}
    return {}


@dataclass
class Preprocessing:
    """How the weights' images were prepared: resize the short side to `resize`, centre-crop `size`, normalise."""

    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def for_channels(self, channels: int) -> Preprocessing:
        """The same for data of `channels` channels: mean and std averaged over the colour channels
        when the count differs."""
        if channels == len(self.mean):
            return self
        mean, std = sum(self.mean) / len(self.mean), sum(self.std) / len(self.std)
        return Preprocessing(self.size, self.resize, (mean,) * channels, (std,) * channels)


def weights_preprocessing(
    recipe_name: str, settings: dict[str, Any], weights: str | None, channels: int | None = None
) -> Preprocessing | None:
    """The preprocessing that comes with torchvision weights (None for files, run folders and no weights).

    With `channels`, mean and std are averaged over the colour channels for data with another channel count.
    """
    if recipe_name == "timm" and isinstance(weights, str) and timm_weights.is_timm_weights_name(weights):
        prep = Preprocessing(**timm_weights.preprocessing(settings.get("arch", "resnet18"), weights))
        return prep.for_channels(channels) if channels else prep
    if not isinstance(weights, str) or not is_weights_name(weights):
        return None
    _check_name_use(recipe_name, weights)
    transform = torchvision_weights(settings.get("arch", "resnet18"), weights).transforms()
    prep = Preprocessing(
        size=transform.crop_size[0],
        resize=transform.resize_size[0],
        mean=tuple(transform.mean),
        std=tuple(transform.std),
    )
    return prep.for_channels(channels) if channels else prep


def weights_file_for(member) -> Path:
    """Where torchvision's weights API keeps `member`'s file (what `load_state_dict_from_url` reads)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(member.url).name


def torchvision_state_dict(arch: str, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of torchvision's `arch` weights `name`, from the hub cache or downloaded into it."""
    member = torchvision_weights(arch, name)
    path = weights_file_for(member)
    if not path.is_file():
        _download(member.url, path, name, arch)
    return _read_state_dict(path), f"torchvision's {type(member).__name__}.{member.name} ({path})"


def _download(url: str, path: Path, name: str, arch: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a network that drops packets must not hang the run
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as err:  # no network (URLError), a proxy, a full disk: the user needs the same steps
        reason = first_line(err)
        raise ConfigError(
            f"model.weights={name}: the {arch} weights are not in {path} and could not be downloaded ({reason}). "
            f"On a machine with internet, download {url} and copy the file to {path} (TORCH_HOME moves the "
            f"folder: $TORCH_HOME/hub/checkpoints/). Or give model.weights=<file> or model.weights=null to "
            f"train from scratch."
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors: a bare state dict, or one under "state_dict"/"model" (weights_only: no code runs)."""
    if path.suffix == ".safetensors":
        return timm_weights.read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"Refused to load model.weights={path}: it holds Python objects besides tensors, and "
            f"loading those could run code. Save the weights with torch.save(model.state_dict(), "
            f"path)."
        ) from err
    except Exception as err:
        raise ConfigError(
            f"Cannot read model.weights={path}: {str(err).strip().splitlines()[0] if str(err) else err} "
            f"(is it a PyTorch weights file, and whole?)."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"model.weights={path} holds no state dict (a dict of tensors): save one with "
            f"torch.save(model.state_dict(), path), or give a cnntrain run folder."
        )
    return state


def read_weights(weights: str, model_name: str, settings: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where it came from) for a `model.weights` value."""
    if is_weights_name(weights):
        _check_name_use(model_name, weights)
        return torchvision_state_dict(settings.get("arch", "resnet18"), weights)
    path = Path(weights).expanduser()
    if path.is_dir():
        folder = RunFolder(path)
        if not folder.best_checkpoint.is_file():
            raise ConfigError(
                f"model.weights={weights} is a folder without checkpoints/best.pt: give a cnntrain "
                f"run folder (outputs/<date>/<run>) or a weights file."
            )
        checkpoint = load_checkpoint(folder.best_checkpoint)
        trained = checkpoint["model"]
        return checkpoint["state_dict"], (
            f"run {path} (checkpoints/best.pt of model={trained['name']}{_arch_text(trained.get('settings', {}))})"
        )
    if not path.is_file():
        raise ConfigError(
            f"model.weights={weights} does not exist. Give a torchvision weights name (DEFAULT; "
            f"model=torchvision only), a weights file or a cnntrain run folder."
        )
    return _read_state_dict(path), str(path)


def head_name(model: nn.Module) -> str:
    """The model's classifier head: what its builder named, else the last layer with weights (the zoo's heads)."""
    named = getattr(model, HEAD_ATTRIBUTE, None)
    if named:
        return named
    leaves = [
        name
        for name, module in model.named_modules()
        if not list(module.children()) and any(True for _ in module.parameters(recurse=False))
    ]
    return leaves[-1] if leaves else ""


def _under(key: str, prefix: str) -> bool:
    return bool(prefix) and (key == prefix or key.startswith(prefix + "."))


def _grey_stem(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """3-channel stem filters for `channels` input channels: summed for 1 channel (a grey image is R=G=B),
    else cycled and rescaled so that the output keeps its scale (timm's adapt_input_conv does the same)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def load_weights(model: nn.Module, weights: str, model_name: str, settings: dict[str, Any]) -> str:
    """Fill `model` from `weights` (see the module docstring); returns the line that says what was loaded."""
    if model_name == "timm" and timm_weights.is_timm_weights_name(weights):
        return timm_weights.load_timm_weights(model, settings.get("arch", "resnet18"), weights)
    state, source = read_weights(weights, model_name, settings)
    own = model.state_dict()
    head = head_name(model)
    stem = first_conv(model)[0] + ".weight" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else ""
    merged, head_kept, adapted = {}, False, False
    for key, value in own.items():
        theirs = state.get(key)
        if theirs is not None and theirs.shape == value.shape:
            merged[key] = theirs.to(value.dtype)
        elif _under(key, head):
            merged[key], head_kept = value, True  # a head for other classes (or another head): a fresh one
        elif (
            key == stem
            and theirs is not None
            and theirs.shape[0] == value.shape[0]
            and theirs.shape[2:] == value.shape[2:]
        ):
            merged[key], adapted = _grey_stem(theirs, value.shape[1]).to(value.dtype), True
        elif theirs is None:
            raise ConfigError(
                f"model.weights: {source} has no weights for layer '{key}': it was made for another "
                f"model (model={model_name}{_arch_text(settings)}). Give weights of the same model."
            )
        else:
            raise ConfigError(
                f"model.weights: layer '{key}' has shape {tuple(theirs.shape)} in {source} but "
                f"{tuple(value.shape)} in this model (model={model_name}{_arch_text(settings)}). "
                f"Give weights of the same model and settings."
            )
    unexpected = [
        key for key in state if key not in own and not _under(key, head) and not key.startswith(AUXILIARY_PREFIXES)
    ]
    if unexpected:
        raise ConfigError(
            f"model.weights: {source} has layers this model does not have ({', '.join(unexpected[:3])}"
            f"{', ...' if len(unexpected) > 3 else ''}): it was made for another model. Give weights "
            f"of model={model_name}{_arch_text(settings)}."
        )
    model.load_state_dict(merged)
    notes = [
        note
        for note, applies in (
            (f"new head '{head}' for these classes", head_kept),
            (f"stem summed over its colour channels for {own[stem].shape[1]}-channel images" if stem else "", adapted),
        )
        if applies
    ]
    return f"weights: {source}" + (f" ({'; '.join(notes)})" if notes else "")


def _arch_text(settings: dict[str, Any]) -> str:
    return f" model.arch={settings['arch']}" if "arch" in settings else ""
