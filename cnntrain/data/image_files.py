"""Images read from files, wherever their list came from (class folders: data/folder.py; a label
file: data/label_files.py): both give the files and labels of each split and their class names,
and `image_data` does the rest the same way for both.

Every image is decoded with Pillow, converted to `channels` (1 = grey, 3 = RGB; mixed files are
fine) and resized to `image_size` x `image_size`. Splits whose decoded images fit in
`cache_limit_mb` are decoded once and kept in memory as one uint8 tensor like the built-in
datasets, so training batches cost no decoding. Larger ones stay on disk (`FileImageSet`) and are
decoded per batch by DataLoader worker processes (`data.workers`); the rest of the pipeline
(resize, augmentation, normalisation on the device) is the same. Normalisation statistics come
from the training images (all of them in memory, a sample of 512 when streaming).
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cnntrain.data.catalog import ImageData, ImageSet
from cnntrain.errors import ConfigError, DatasetError

log = logging.getLogger("cnntrain")

# One split's images: (file, label) pairs, the label an index into the class names.
Items = list[tuple[Path, int]]


def image_extensions() -> set[str]:
    """Every file extension Pillow can open (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, ...)."""
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def decode(path: Path, channels: int, height: int, width: int | None = None) -> np.ndarray:
    """One image as a uint8 (channels, height, width) array; raises OSError/ValueError if unreadable."""
    with Image.open(path) as image:
        return image_to_array(image, channels, height, width)


def image_to_array(image: Image.Image, channels: int, height: int, width: int | None = None) -> np.ndarray:
    """A Pillow image as a uint8 (channels, height, width) array: grey or RGB, resized bilinearly."""
    image = to_8_bit(image).convert("L" if channels == 1 else "RGB")
    image = image.resize((width or height, height), Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy, so torch can share it
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grey image (Pillow modes I;16*, I, F) scaled to 8 bits; others as they are.

    Pillow's own convert("L") clips such values at 255 instead of scaling them (a 16-bit
    scan comes out almost all white). I;16 images are 16-bit by their format. For I
    (32-bit integers, also what Pillow makes of some 16-bit PNGs) and F (floats) the range
    is read from the image: at most 1.0 (floats) is [0, 1], at most 255 is 8-bit, at most
    65535 is 16-bit, above that the full 32-bit range. Negative values become 0.
    """
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:
        peak = float(values.max(initial=0.0))
        top = (
            1.0
            if image.mode == "F" and peak <= 1.0
            else 255.0
            if peak <= 255
            else 65535.0
            if peak <= 65535
            else 2.0**32 - 1
        )
    return Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8))  # 2-D uint8: mode L


READ_ERRORS = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def bad_file_error(path: Path, err: object) -> DatasetError:
    return DatasetError(
        f"Cannot read image {path}: {err}. Remove or replace the file, or set "
        f"data.skip_bad_files=true to skip unreadable images."
    )


def load_split(items: Items, channels: int, size: int, skip_bad_files: bool, split: str = "") -> ImageSet:
    """Decode every image of a split into one uint8 tensor (the files, in the same order, kept as `files`);
    `split` names it in the message when no image of it could be read."""

    def read(item):
        try:
            return decode(item[0], channels, size), item[1], item[0]
        except READ_ERRORS as err:
            if not skip_bad_files:
                raise bad_file_error(item[0], err) from err
            log.warning("skipping unreadable image %s: %s", item[0], err)
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow decodes outside the GIL
        decoded = [result for result in pool.map(read, items) if result is not None]
    skipped = len(items) - len(decoded)
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", skipped, len(items))
    if not decoded:
        raise DatasetError(
            f"No readable images left in the {split or 'data'} split: all {len(items)} of its files are "
            f"unreadable and data.skip_bad_files=true skipped them. Replace the files, or list other ones."
        )
    images = torch.from_numpy(np.stack([array for array, _, _ in decoded]))
    return ImageSet(
        images, torch.tensor([label for _, label, _ in decoded], dtype=torch.long), [path for _, _, path in decoded]
    )


class FileImageSet(torch.utils.data.Dataset):
    """A split that stays on disk; DataLoader workers decode its images batch by batch.

    An unreadable file is not raised inside the worker (where the message would come
    back wrapped in a traceback): `__getitem__` returns the error text, and the
    loader raises it, or skips the image with `skip_bad_files`, in the main process.
    """

    def __init__(
        self, files: list[Path], labels: torch.Tensor, channels: int, size: int, skip_bad_files: bool, workers: int
    ):
        self.files, self.labels = list(files), labels
        self.channels, self.size = channels, size
        self.skip_bad_files, self.workers = skip_bad_files, workers

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), self.channels, self.size, self.size)

    def subset(self, index: torch.Tensor) -> FileImageSet:
        return FileImageSet(
            [self.files[i] for i in index.tolist()],
            self.labels[index],
            self.channels,
            self.size,
            self.skip_bad_files,
            self.workers,
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            return torch.from_numpy(decode(self.files[i], self.channels, self.size)), i, ""
        except READ_ERRORS as err:
            return torch.zeros(self.shape[1:], dtype=torch.uint8), i, f"{err}"


def file_split(items: Items, channels: int, size: int, skip_bad_files: bool, workers: int) -> FileImageSet:
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return FileImageSet([path for path, _ in items], labels, channels, size, skip_bad_files, workers)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp(min=1e-3).tolist())


def check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}.")


def image_data(
    classes: list[str],
    items: dict[str, Items],
    source: str,
    channels: int,
    image_size: int,
    skip_bad_files: bool,
    cache_limit_mb: int,
    workers: int,
) -> ImageData:
    """The splits in `items` (train, and val/test when present) decoded into memory when they fit
    in `cache_limit_mb`, else streamed from disk; normalisation statistics from the train split."""
    if fits_in_memory(sum(len(v) for v in items.values()), channels, image_size, cache_limit_mb):
        sets = {
            split: load_split(split_items, channels, image_size, skip_bad_files, split)
            for split, split_items in items.items()
        }
        mean, std = channel_stats(sets["train"].images)
    else:
        sets = {
            split: file_split(split_items, channels, image_size, skip_bad_files, workers)
            for split, split_items in items.items()
        }
        sample = random.Random(0).sample(items["train"], min(512, len(items["train"])))
        mean, std = channel_stats(load_split(sample, channels, image_size, skip_bad_files=True).images)
    return ImageData(
        classes=classes,
        train=sets["train"],
        val=sets.get("val"),
        test=sets.get("test"),
        mean=mean,
        std=std,
        source=source,
    )


def fits_in_memory(count: int, channels: int, size: int, limit_mb: int) -> bool:
    needed_mb = count * channels * size * size / 2**20
    if needed_mb <= limit_mb:
        return True
    log.warning(
        "%d images at %dx%dx%d need %.0f MiB, over data.cache_limit_mb=%d: streaming them from disk "
        "with data.workers processes instead of keeping them in memory.",
        count,
        channels,
        size,
        size,
        needed_mb,
        limit_mb,
    )
    return False
