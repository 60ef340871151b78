"""`image_folder`: your own images, one subfolder per class.

Two layouts are understood:

    <path>/<class>/<image>                  one folder, split by data.val_fraction
    <path>/train/<class>/<image>            train/ plus optional val/ and test/
    <path>/val/<class>/...  <path>/test/<class>/...

Class names are the folder names (sorted), saved with the run. The files found are decoded,
kept in memory or streamed by data/image_files.py, as those of a label file are
(`data.labels=<file>` here is `data=csv`: data/label_files.py).
"""

from __future__ import annotations

from pathlib import Path

from cnntrain.data.catalog import DATASETS, ImageData
from cnntrain.data.image_files import Items, check_channels, image_data, image_extensions
from cnntrain.data.label_files import label_file_data
from cnntrain.errors import ConfigError, DatasetError

SPLITS = ("train", "val", "test")


def list_class_images(folder: Path, classes: list[str] | None = None) -> tuple[list[str], Items]:
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


@DATASETS.register("image_folder")
def image_folder(
    root: str | None = None,
    channels: int = 3,
    image_size: int = 64,
    skip_bad_files: bool = False,
    cache_limit_mb: int = 4096,
    workers: int = 4,
    path: str | None = None,
    labels: str | None = None,
    classes: list[str] | None = None,
) -> ImageData:
    """Images in class subfolders at `image_size`: in memory when they fit, else streamed.

    `root`, as every dataset names its folder; `path` is the older name, still accepted.
    `labels`: a label file instead of class folders, read as data=csv reads it (`classes` with it).
    """
    if root and path and Path(root).expanduser() != Path(path).expanduser():
        raise ConfigError(
            f"data.root={root} and data.path={path} name two folders; data.path is the old name of "
            f"data.root: give only data.root."
        )
    loading = dict(
        channels=channels,
        image_size=image_size,
        skip_bad_files=skip_bad_files,
        cache_limit_mb=cache_limit_mb,
        workers=workers,
    )
    if labels:
        return label_file_data(labels, root or path, classes, **loading)
    if classes is not None:
        raise ConfigError(
            "data.classes applies to a label file (data.labels=<file>); with class folders the class names "
            "are the folder names. Remove data.classes, or list the images in a label file."
        )
    if not (root or path):
        raise ConfigError("data=image_folder needs data.root=<folder with one subfolder per class>.")
    root = Path(root or path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Image folder {root} does not exist (data.root).")
    check_channels(channels)
    split_dirs = {split: root / split for split in SPLITS if (root / split).is_dir()}
    if "train" not in split_dirs:
        split_dirs = {"train": root}
    classes, train_items = list_class_images(split_dirs["train"])
    items = {"train": train_items}
    for split in ("val", "test"):
        if split in split_dirs:
            items[split] = list_class_images(split_dirs[split], classes)[1]
    return image_data(classes, items, f"from {root}", **loading)
