"""The DATASETS registry and what a dataset builder returns: `ImageData`, uint8 images (N, C, H, W)
and int64 labels for its train and test splits (and a val split when the dataset has its own).

The dataset modules register their builders here (`@DATASETS.register(...)`);
cnntrain/data/__init__.py imports them. `load_image_data` builds one, kept for the next job
of a multirun in the same process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnntrain.registry import Registry

DATASETS = Registry("dataset", "data.name")

# Keys of the data config that the loader uses; the others go to the dataset builder.
LOADER_KEYS = ("name", "batch_size", "eval_batch_size", "val_fraction", "resize", "normalize", "augment", "subset")
LOADER_KEYS += ("sampler",)  # data.sampler: the training loader's order (data/sampling.py)


@dataclass
class ImageSet:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,); `files`: the image file each came
    from, for datasets read from files (image_folder, csv), so that evaluation can name them; else None."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        files = None if self.files is None else [self.files[i] for i in index.tolist()]
        return ImageSet(self.images[index], self.labels[index], files)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape)


@dataclass
class ImageData:
    """What a dataset builder returns."""

    classes: list[str]
    train: ImageSet
    test: ImageSet | None  # None: the dataset has no test split; validation data stands in
    val: ImageSet | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    source: str = ""  # where the images came from ("from <folder>", "generated ..."), named in the run's first line


# Parsed datasets, kept so that the jobs of a multirun in one process parse each dataset once.
_CACHE: dict[tuple, ImageData] = {}


def load_image_data(name: str, settings: dict) -> ImageData:
    """Build (or reuse) the dataset `name` with its builder `settings`, as long as its files are unchanged."""
    key = (name, tuple(sorted((k, repr(v)) for k, v in settings.items())), files_stamp(settings))
    if key not in _CACHE:
        _CACHE.clear()  # keep at most one dataset in memory
        _CACHE[key] = DATASETS.build(name, settings)
    return _CACHE[key]


def files_stamp(settings: dict) -> tuple:
    """When the files a dataset's settings name last changed: a label file's time and size, an image folder's and
    its subfolders' times (two levels: <root>/<class>/ and <root>/train/<class>/; a file added to or removed from
    one changes its folder's time). In one process (a notebook, cnntrain.train then resume) an edited label file
    or a new class folder is then read again rather than taken from the cache."""
    stamp = []
    for key in ("labels", "root", "path"):
        value = settings.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        try:
            if path.is_file():
                stamp.append((key, path.stat().st_mtime_ns, path.stat().st_size))
            elif path.is_dir():
                folders = [path, *(d for d in path.iterdir() if d.is_dir())]
                folders += [d for f in folders[1:] for d in f.iterdir() if d.is_dir()]
                stamp.append((key, tuple(f.stat().st_mtime_ns for f in folders)))
        except OSError:  # unreadable: the builder says so
            continue
    return tuple(stamp)
