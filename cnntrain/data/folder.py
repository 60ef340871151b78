"""`image_folder`: your own images, one subfolder per class.

Two layouts are understood:

    <path>/<class>/<image>                  one folder, split by data.val_fraction
    <path>/train/<class>/<image>            train/ plus optional val/ and test/
    <path>/val/<class>/...  <path>/test/<class>/...

Class names are the folder names (sorted), saved with the run. Every image is decoded
once with Pillow, converted to `channels` (1 = grey, 3 = RGB; mixed folders are fine)
and resized to `image_size` x `image_size`.

Folders whose decoded images fit in `cache_limit_mb` are decoded once and kept in
memory as one uint8 tensor like the built-in datasets, so training batches cost no
decoding. Larger folders stay on disk (`FileImageSet`) and are decoded per batch by
DataLoader worker processes (`data.workers`); the rest of the pipeline (resize,
augmentation, normalisation on the device) is the same. Normalisation statistics
come from the training images (all of them in memory, a sample of 512 when streaming).
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cnntrain.data.catalog import DATASETS, ImageData, ImageSet
from cnntrain.errors import ConfigError, DatasetError

log = logging.getLogger("cnntrain")

SPLITS = ("train", "val", "test")


def image_extensions() -> set[str]:
    """Every file extension Pillow can open (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, ...)."""
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def list_class_images(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (file, label) pairs below `folder`; `classes` fixes the names (val/test)."""
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise DatasetError(
            f"{folder} has no class subfolders. Put each class's images in a folder of its own: "
            f"{folder}/<class name>/<image>, or use train/, val/, test/ folders that each hold class folders."
        )
    if classes is None:
        classes = subfolders
    unknown = sorted(set(subfolders) - set(classes))
    if unknown:
        raise DatasetError(
            f"{folder} has class folders that train/ does not have: {', '.join(unknown)}. "
            f"Every class must have training images."
        )
    extensions = image_extensions()
    items = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue  # a val/test split may lack a class
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not files:
            raise DatasetError(
                f"Class folder {class_dir} holds no images (looked for files ending in "
                f"{', '.join(sorted(extensions)[:8])}, ...). Add images or remove the folder."
            )
        items += [(path, label) for path in files]
    return classes, items


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


def load_split(items: list[tuple[Path, int]], channels: int, size: int, skip_bad_files: bool) -> ImageSet:
    """Decode every image of a split into one uint8 tensor (the files, in the same order, kept as `files`)."""

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
        raise DatasetError("No readable images left in this split.")
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


def file_split(
    items: list[tuple[Path, int]], channels: int, size: int, skip_bad_files: bool, workers: int
) -> FileImageSet:
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return FileImageSet([path for path, _ in items], labels, channels, size, skip_bad_files, workers)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp(min=1e-3).tolist())


@DATASETS.register("image_folder")
def image_folder(
    root: str | None = None,
    channels: int = 3,
    image_size: int = 64,
    skip_bad_files: bool = False,
    cache_limit_mb: int = 4096,
    workers: int = 4,
    path: str | None = None,
) -> ImageData:
    """Images in class subfolders at `image_size`: in memory when they fit, else streamed.

    `root`, as every dataset names its folder; `path` is the older name, still accepted.
    """
    if root and path and Path(root).expanduser() != Path(path).expanduser():
        raise ConfigError(
            f"data.root={root} and data.path={path} name two folders; data.path is the old name of "
            f"data.root: give only data.root."
        )
    if not (root or path):
        raise ConfigError("data=image_folder needs data.root=<folder with one subfolder per class>.")
    root = Path(root or path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Image folder {root} does not exist (data.root).")
    if channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}.")
    split_dirs = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if "train" not in split_dirs:
        split_dirs = {"train": root}
    classes, train_items = list_class_images(split_dirs["train"])
    items = {"train": train_items}
    for split in ("val", "test"):
        if split in split_dirs:
            items[split] = list_class_images(split_dirs[split], classes)[1]
    if fits_in_memory(sum(len(v) for v in items.values()), channels, image_size, cache_limit_mb):
        sets = {
            split: load_split(split_items, channels, image_size, skip_bad_files) for split, split_items in items.items()
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
        source=f"from {root}",
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
