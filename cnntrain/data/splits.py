"""From a dataset's splits to the ones a run uses: `prepare` holds out the validation fraction,
checks that every split can be trained or measured on, and describes the result in a
`DatasetSpec`, from which the model is built (classes, channels) and the loader configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnntrain.data.catalog import ImageData, ImageSet
from cnntrain.errors import ConfigError, DatasetError


@dataclass
class DatasetSpec:
    """What the rest of the tool needs to know about the data."""

    name: str
    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    val_size: int
    test_size: int
    val_source: str  # where validation data comes from, for the log
    source: str = ""  # where the images came from (ImageData.source)
    # Validation and the test are the same images (data.val_fraction=0, or no test split): the
    # epoch chosen on validation is then chosen on the test images, and run.py says so.
    test_is_validation: bool = False
    has_test_split: bool = True  # False: the final test runs on the validation images

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class PreparedData:
    spec: DatasetSpec
    train: ImageSet
    val: ImageSet
    test: ImageSet
    extra: dict = field(default_factory=dict)


def prepare(name: str, data: ImageData, val_fraction: float, seed: int, subset: int | None = None) -> PreparedData:
    """Split off validation data and describe the splits; `subset`: keep that many training images
    (a seeded random choice, drawn after the validation hold-out so that validation stays the same)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(
            f"data.val_fraction must be in [0, 1), got {val_fraction}. "
            f"Use e.g. 0.1 to hold out 10% of train, or 0 to validate on the test split."
        )
    check_pairs(name, {"train": data.train, "validation": data.val, "test": data.test})  # before any split
    train, val = data.train, data.val  # mixes them: a hold-out of 300 images and 150 labels pairs them up
    if val is not None:
        source = "the dataset's own val split"
    elif val_fraction > 0:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, round(len(train) * val_fraction))
        train, val = data.train.subset(order[n_val:]), data.train.subset(order[:n_val])
        source = f"{val_fraction:.0%} of train, held out with seed {seed}"
    elif data.test is not None:
        val = data.test
        source = "the test split (data.val_fraction=0)"
    else:
        raise ConfigError(
            "This dataset has no val or test split, so data.val_fraction must be above 0 "
            "(e.g. data.val_fraction=0.2) to hold out validation data."
        )
    test = data.test
    if test is None:
        test = val
        source += "; no test split, so the final test is on the validation data"
    check_splits(name, list(data.classes), {"train": train, "validation": val, "test": test})
    if subset is not None and subset < len(train):
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))[:subset])
    _, channels, height, width = train.shape
    spec = DatasetSpec(
        name=name,
        classes=list(data.classes),
        channels=channels,
        image_size=(height, width),
        mean=tuple(data.mean),
        std=tuple(data.std),
        train_size=len(train),
        val_size=len(val),
        test_size=len(test),
        val_source=source,
        source=data.source,
        test_is_validation=test is val,
        has_test_split=data.test is not None,
    )
    return PreparedData(spec, train, val, test)


def check_splits(name: str, classes: list[str], splits: dict[str, ImageSet]) -> None:
    """Data nobody can train or measure on is refused, not trained on silently: fewer than two
    classes, an empty split, labels outside the classes, images and labels that do not pair up."""
    if len(classes) < 2:
        raise DatasetError(
            f"{name} has {len(classes)} class{'es' if len(classes) != 1 else ''} "
            f"({', '.join(classes) or 'none'}): a classifier needs at least 2."
        )
    for split, images in splits.items():
        if len(images) == 0:
            hint = " Hold out more with data.val_fraction, or add a val/ folder." if split == "validation" else ""
            raise DatasetError(f"{name} has no {split} image.{hint}")
        labels = images.labels
        check_pairs(name, {split: images})
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= len(classes):
            raise DatasetError(
                f"{name}'s {split} labels run from {low} to {high}, but it has {len(classes)} "
                f"classes (labels 0-{len(classes) - 1}): the label file does not fit the dataset."
            )


def check_pairs(name: str, splits: dict[str, ImageSet | None]) -> None:
    """Each split's images (N, C, H, W) and labels (N,) pair up one to one; else a DatasetError."""
    for split, images in splits.items():
        stored = getattr(images, "images", None)
        if not isinstance(stored, torch.Tensor):  # None, or a split streamed from files (one label per file)
            continue
        if stored.dim() != 4:
            raise DatasetError(
                f"{name}'s {split} images have shape {tuple(stored.shape)}; a dataset's images must "
                f"be (count, channels, height, width)."
            )
        if len(stored) != len(images.labels):
            raise DatasetError(
                f"{name}'s {split} split has {len(stored)} images but {len(images.labels)} labels: "
                f"its files do not belong together."
            )
