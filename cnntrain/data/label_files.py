"""`data=csv`: images listed in a label file (CSV or TSV) instead of sorted into class folders
(`data=image_folder data.labels=<file>` is the same).

    file,label            one row per image: the file relative to data.root (default: the label
    file,label,split      file's folder) or absolute, its class name, and train, val or test

data/label_rows.py reads the rows (delimiter, header, malformed rows). Without a split column every
row is train and data.val_fraction holds out validation, as for one class folder. Class names are the
labels, sorted (as numbers when all are whole numbers), or data.classes, whose order then fixes the
label numbers. The rows give each split's (file, label) pairs; decoding, memory or streaming and bad
files are data/image_files.py's, as for class folders (data/folder.py).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from cnntrain.data.catalog import DATASETS, ImageData
from cnntrain.data.image_files import Items, check_channels, image_data
from cnntrain.data.label_rows import SHOWN, SPLITS, Row, lines_text, parse_rows, read_label_file, with_split_names
from cnntrain.errors import ConfigError, DatasetError, first_few

log = logging.getLogger("cnntrain")


def sorted_names(names: set[str]) -> list[str]:
    """Class names sorted, as numbers when all are whole numbers (2 before 10)."""
    if all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))  # 1 and 01: one order in every process
    return sorted(names)


def labels_text(rows: list[Row]) -> str:
    """ "'bird' (line 9), 'fish' (3 rows from line 4)" for the first few labels of `rows`, then how many more."""
    by_label: dict[str, list[int]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row.line)
    shown = [
        f"'{label}' ({f'{len(lines)} rows from ' if len(lines) > 1 else ''}line {lines[0]})"
        for label, lines in by_label.items()
    ]
    return first_few(shown, SHOWN, "more labels")


def class_names(path: Path, rows: list[Row], given: list | None) -> list[str]:
    """The labels, sorted, or `given` (data.classes) in its order; a DatasetError for a label that
    `given` lacks, or (without `given`) for a label no train row has: the model could not learn it."""
    trained = {row.label for row in rows if row.split == "train"}
    if given is None:
        untrained = [row for row in rows if row.label not in trained]
        if untrained:
            raise DatasetError(
                f"Label file {path}: {len(untrained)} val/test row(s) have a label no train row has: "
                f"{labels_text(untrained)}. The model cannot learn a class it never "
                f"sees: add train rows of these classes, or remove those rows."
            )
        return sorted_names(trained)
    names = [str(name) for name in given]  # YAML reads [0, 1] as numbers; the file's labels are text
    outside = [row for row in rows if row.label not in names]
    if outside:
        raise DatasetError(
            f"Label file {path}: {len(outside)} row(s) have a label data.classes does not list: "
            f"{labels_text(outside)}. data.classes is [{', '.join(names)}]: add "
            f"these labels to it, fix the rows, or set data.classes=null to take the classes from the file."
        )
    untrained = [name for name in names if name not in trained]
    if untrained:
        log.warning("data.classes lists %s, which no train row of %s has", ", ".join(untrained), path)
    return names


def split_items(path: Path, rows: list[Row], root: Path, classes: list[str], skip_missing: bool) -> dict[str, Items]:
    """Each split's (file, label) pairs; a DatasetError for a file listed twice, for missing files
    (unless `skip_missing`: data.skip_bad_files leaves them out) and for a split left with none."""
    files = [root / row.file for row in rows]  # an absolute file name stays as it is
    check_listed_once(path, rows, files)
    exists = [file.is_file() for file in files]
    missing = [row for row, found in zip(rows, exists, strict=True) if not found]
    if missing:
        report_missing(path, root, rows, missing, skip_missing)
    numbers = {name: label for label, name in enumerate(classes)}
    items = {}
    for split in sorted({row.split for row in rows}, key=SPLITS.index):
        listed = [
            (file, row, found) for file, row, found in zip(files, rows, exists, strict=True) if row.split == split
        ]
        items[split] = [(file, numbers[row.label]) for file, row, found in listed if found]
        if not items[split]:
            raise DatasetError(
                f"None of the {len(listed)} {split} files that {path} lists exists, so data.skip_bad_files=true "
                f"left the {split} split empty. Check data.root ({root}) and the file names."
            )
    return items


def check_listed_once(path: Path, rows: list[Row], files: list[Path]) -> None:
    """A DatasetError naming both lines of every file listed twice (a/../b.png and ./b.png are one file)."""
    first_line, twice = {}, []
    for row, file in zip(rows, files, strict=True):
        key = os.path.normcase(os.path.abspath(file))
        if key in first_line:
            twice.append(f"{row.file} (lines {first_line[key]} and {row.line})")
        first_line.setdefault(key, row.line)
    if twice:
        raise DatasetError(
            f"Label file {path} lists {len(twice)} file(s) twice: {first_few(twice, SHOWN)}. "
            "An image has one class and one split: remove the repeated rows."
        )


def report_missing(path: Path, root: Path, rows: list[Row], missing: list[Row], skip_missing: bool) -> None:
    """Rows whose file does not exist: a DatasetError, or a warning when data.skip_bad_files leaves them out."""
    if skip_missing:
        log.warning(
            "leaving out %d row(s) of %s whose file does not exist (data.skip_bad_files=true): %s",
            len(missing),
            path,
            lines_text(missing),
        )
        return
    header = " If line 1 is a header, name its columns file, label and split." if missing[0].line == 1 else ""
    raise DatasetError(
        f"{len(missing)} of the {len(rows)} files that {path} lists do not exist under {root}: "
        f"{lines_text(missing)}. File names are relative to data.root (default: the label file's folder): "
        f"fix data.root or the rows, or set data.skip_bad_files=true to leave those rows out.{header}"
    )


def label_file_data(
    labels: str,
    root: str | None,
    classes: list | None,
    channels: int,
    image_size: int,
    skip_bad_files: bool,
    cache_limit_mb: int,
    workers: int,
) -> ImageData:
    """The images a label file lists, read as class folders are (data/image_files.py)."""
    check_channels(channels)
    path = Path(labels).expanduser()
    text = read_label_file(path)
    root = Path(root).expanduser() if root else path.parent
    if not root.is_dir():
        raise DatasetError(
            f"data.root={root} is not a folder. It is the folder the file names in {path} are relative "
            f"to; leave it unset to use the label file's folder."
        )
    rows = with_split_names(path, parse_rows(path, text, root))
    names = class_names(path, rows, classes)
    items = split_items(path, rows, root, names, skip_bad_files)
    return image_data(names, items, f"from {path}", channels, image_size, skip_bad_files, cache_limit_mb, workers)


@DATASETS.register("csv")
def label_file(
    labels: str | None = None,
    root: str | None = None,
    classes: list | None = None,
    channels: int = 3,
    image_size: int = 64,
    skip_bad_files: bool = False,
    cache_limit_mb: int = 4096,
    workers: int = 4,
) -> ImageData:
    """Images listed in a CSV/TSV label file at `image_size`: in memory when they fit, else streamed."""
    if not labels:
        raise ConfigError(
            "data=csv needs data.labels=<file>: a CSV or TSV file with one file,label row per image "
            "(and optionally a split column: train, val, test)."
        )
    return label_file_data(labels, root, classes, channels, image_size, skip_bad_files, cache_limit_mb, workers)
