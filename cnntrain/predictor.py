"""Images -> predictions for any model that takes a run's normalised float batch: `Predictor`.

New images go through the same conversion as the training data: Pillow converts them
to the run's channel count and resizes them to the size the dataset was stored at,
then the training batch transform (resize to the model's input size, normalisation
with the run's mean/std) runs, without augmentation. A run's checkpoint
(`predict.LoadedRun`) and an exported ONNX file (`exported_model.ExportedModel`) are its
two kinds; both convert images with this code, so their predictions agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cnntrain.data.image_files import READ_ERRORS, image_extensions, image_to_array
from cnntrain.data.loader import BatchTransform, preprocess_transform
from cnntrain.errors import CnnTrainError
from cnntrain.evaluator import mean_log_probabilities, resolve_tta
from cnntrain.registry import is_count


@dataclass
class Prediction:
    file: str  # the image's path, or "<image i>" for images given as objects
    label: str
    probability: float
    top: list[tuple[str, float]]


class Predictor:
    """Images -> predictions, for any model that takes the run's normalised float batch (N, C, size, size)
    and returns logits. Subclasses give `classes`, `preprocess` (stored_size, size, mean, std), `in_channels`,
    `run_tta` (the run's trainer.tta) and `model`."""

    classes: list[str]
    preprocess: dict[str, Any]
    in_channels: int
    run_tta: str | None = None
    model: Callable[[torch.Tensor], torch.Tensor]

    def transform(self) -> BatchTransform:
        return preprocess_transform(self.preprocess)

    def to_array(self, image) -> torch.Tensor:
        """One image (a path, a Pillow image, or a (C, H, W) / (H, W) tensor: uint8, or float in [0, 1])
        as the uint8 (C, H, W) tensor the run's data was stored as."""
        height, width = self.preprocess["stored_size"]
        channels = self.in_channels
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as opened:
                    return torch.from_numpy(image_to_array(opened, channels, height, width))
            except READ_ERRORS as err:
                raise CnnTrainError(f"Cannot read image {image}: {err}") from err
        if isinstance(image, torch.Tensor):
            from torchvision.transforms.functional import to_pil_image

            image = to_pil_image(checked_tensor(image))
        if isinstance(image, Image.Image):
            return torch.from_numpy(image_to_array(image, channels, height, width))
        raise CnnTrainError(
            f"Cannot predict on a {type(image).__name__}: give image paths, Pillow images or image tensors."
        )

    def predict(self, images, topk: int = 3, batch_size: int = 64, tta: str = "run") -> list[Prediction]:
        """The top-`topk` classes of each image: a path (file or folder of images), a Pillow image, a tensor
        ((C, H, W), or (N, C, H, W) for several), or a list of these. `tta`: "run" (the run's trainer.tta,
        as its test measured), "none" or "hflip" (the mean of each image's and its mirror's probabilities)."""
        used_tta = resolve_tta(tta, self.run_tta)
        if not is_count(topk) or not is_count(batch_size):
            raise CnnTrainError(
                f"topk and batch_size must be whole numbers >= 1, got topk={topk!r}, batch_size={batch_size!r}."
            )
        items = list(_image_items(images))
        if not items:
            raise CnnTrainError("No images to predict on: the list or batch given is empty.")
        transform = self.transform()
        predictions = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = transform(torch.stack([self.to_array(image) for _, image in chunk]))
            with torch.inference_mode():
                logits = self.model(batch)
                if used_tta == "hflip":
                    logits = mean_log_probabilities(logits, self.model(batch.flip(-1)))
                probabilities = logits.softmax(dim=1)
            values, indices = probabilities.topk(min(topk, len(self.classes)), dim=1)
            for (name, _), top_p, top_i in zip(chunk, values.tolist(), indices.tolist()):
                top = [(self.classes[i], p) for i, p in zip(top_i, top_p)]
                predictions.append(Prediction(name, top[0][0], top[0][1], top))
        return predictions


# What a tensor image may hold: uint8 (0..255) or floats in [0, 1], as torchvision's conventions say.
TENSOR_IMAGES = (
    "a (C, H, W) or (H, W) tensor of uint8 (0..255) or of floats in [0, 1], C = 1 (grey), 3 (RGB) or 4 (RGBA)"
)


def checked_tensor(image: torch.Tensor) -> torch.Tensor:
    """A tensor image as to_pil_image takes it (on the CPU), or a CnnTrainError saying what was expected: other
    dtypes, ranges and shapes gave a traceback or a silently wrong answer (0..255 in a float tensor is
    white everywhere once clipped)."""
    image = image.detach().cpu()
    shape = tuple(image.shape)
    if image.dim() not in (2, 3) or image.numel() == 0:
        raise CnnTrainError(
            f"Cannot predict on a tensor of shape {shape}: give {TENSOR_IMAGES} (or a batch of them, (N, C, H, W))."
        )
    if image.dim() == 3 and image.shape[0] not in (1, 3, 4):
        hint = " It looks like (H, W, C): pass image.permute(2, 0, 1)." if image.shape[-1] in (1, 3, 4) else ""
        raise CnnTrainError(
            f"Cannot predict on a tensor of shape {shape}: {image.shape[0]} channels. Give {TENSOR_IMAGES}.{hint}"
        )
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise CnnTrainError(
            f"Cannot predict on a {image.dtype} tensor: give {TENSOR_IMAGES}. Convert 0..255 "
            f"values with image.to(torch.uint8)."
        )
    if not torch.isfinite(image).all():
        raise CnnTrainError(f"Cannot predict on a tensor holding nan or inf: give {TENSOR_IMAGES}.")
    low, high = image.min().item(), image.max().item()
    if low < 0 or high > 1:
        raise CnnTrainError(
            f"Cannot predict on a float tensor with values from {low:g} to {high:g}: float images "
            f"must be in [0, 1]. For 0..255 values pass a uint8 tensor (image.to(torch.uint8)) or "
            f"divide by 255; a normalised tensor (minus mean, divided by std) goes straight to "
            f"the model instead."
        )
    return image.float()


def check_against_model(predictor: Predictor, where: str, fix: str) -> None:
    """The model takes what `where` (a checkpoint, an export's json) says it takes, a batch of in_channels x size
    x size images, and gives one output per class it names: tried on one blank image, so that a class list of
    another length or another channel count is a message now, not every image "class0" or a traceback later."""
    size, channels, classes = predictor.preprocess["size"], predictor.in_channels, len(predictor.classes)
    try:
        with torch.inference_mode():
            outputs = predictor.model(torch.zeros(1, channels, size, size))
    except Exception as err:  # torch's and onnxruntime's own error kinds
        raise CnnTrainError(
            f"{where} says the model takes {channels}-channel {size}x{size} images, but the model "
            f"refuses them: {' '.join(str(err).split())[:300] or type(err).__name__}. {fix}"
        ) from None
    if tuple(outputs.shape) != (1, classes):
        gives = (
            f"{outputs.shape[1]} outputs per image"
            if outputs.dim() == 2
            else f"outputs of shape {tuple(outputs.shape)} for one image"
        )
        raise CnnTrainError(f"{where} names {classes} classes, but the model gives {gives}. {fix}")


def _image_items(images) -> Iterable[tuple[str, Any]]:
    """(name, image) pairs: a folder gives its image files, a batch tensor its images."""
    if isinstance(images, torch.Tensor) and images.dim() > 4:
        raise CnnTrainError(
            f"Cannot predict on a tensor of shape {tuple(images.shape)}: give {TENSOR_IMAGES}, or "
            f"a batch of them (N, C, H, W)."
        )
    if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, torch.Tensor) and images.dim() <= 3):
        images = [images]
    elif not isinstance(images, Iterable):
        images = [images]  # to_array names what it is and what it takes
    for i, image in enumerate(images):
        if isinstance(image, (str, Path)):
            for path in find_images(Path(image)):
                yield str(path), path
        elif isinstance(image, torch.Tensor) and image.dim() == 4:
            yield from ((f"<image {i}.{j}>", single) for j, single in enumerate(image))
        else:
            yield f"<image {i}>", image


def find_images(inputs: Path) -> list[Path]:
    if inputs.is_file():
        return [inputs]
    if inputs.is_dir():
        extensions = image_extensions()
        files = sorted(p for p in inputs.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if files:
            return files
        raise CnnTrainError(f"No images found in {inputs}.")
    raise CnnTrainError(f"{inputs} does not exist (inputs=). Give an image file or a folder of images.")
