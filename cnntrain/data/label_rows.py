"""A label file (data=csv, data/label_files.py) read into `Row`s: line, file, label, split.

    file,label            one row per image; split: train, val or test
    file,label,split      (any case; valid and validation are val)

The delimiter comes from the extension (.tsv, .tab: a tab) or else from the first line (a tab, or
the more frequent of comma and semicolon). A first row is a header when it names a file column and
a label column (`FILE_COLUMNS`, `LABEL_COLUMNS`, `SPLIT_COLUMNS`) and its file field is no file; a
header lets the columns come in any order, and other columns are ignored. Every problem is a
DatasetError naming the lines (the first few of them) and the fix.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from cnntrain.errors import DatasetError, first_few
from cnntrain.registry import did_you_mean

# Header names (lower case, spaces and dashes as underscores) that name each column.
FILE_COLUMNS = ("file", "filename", "file_name", "filepath", "file_path", "path", "image", "image_path", "img")
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target")
SPLIT_COLUMNS = ("split", "subset", "set")
SPLITS = ("train", "val", "test")
# A split column's values, as written -> the split (case is ignored).
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# How many rows a message lists before "...".
SHOWN = 5


@dataclass(frozen=True)
class Row:
    """One image's row: the line it starts on (1-based, header included), its fields as written."""

    line: int
    file: str
    label: str
    split: str = "train"


def lines_text(rows: list[Row], describe=lambda row: row.file) -> str:
    """'line 3 (a.png), line 9 (b.png)' for the first few rows, then how many more."""
    return first_few([f"line {row.line} ({describe(row)})" for row in rows], SHOWN)


def read_label_file(path: Path) -> str:
    """The label file's text; a DatasetError for a file that is missing, a folder, not text or empty."""
    if path.is_dir():
        raise DatasetError(f"data.labels={path} is a folder; give the CSV or TSV file that lists the images.")
    if not path.is_file():
        raise DatasetError(
            f"Label file {path} does not exist (data.labels). Give the path of a CSV or TSV file of "
            f"file,label rows (relative paths are from the folder cnntrain runs in)."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: the byte-order mark spreadsheets write
    except UnicodeDecodeError as err:
        raise DatasetError(f"Label file {path} is not UTF-8 text ({err}); save it as UTF-8 CSV.") from err
    if not text.strip():
        raise DatasetError(f"Label file {path} is empty; it needs one file,label row per image.")
    return text


def delimiter_of(path: Path, text: str) -> str:
    """A tab for .tsv/.tab files; else as the first line has it: a tab, or the more frequent of , and ;"""
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    first = next(line for line in text.splitlines() if line.strip())
    if "\t" in first:
        return "\t"
    return ";" if first.count(";") > first.count(",") else ","


def header_columns(fields: list[str], root: Path) -> dict[str, int] | None:
    """{role: column} when `fields` is a header row (it names a file and a label column, and its file
    field is not a file under `root`); None when it is a row of data."""
    names = [re.sub(r"[\s-]+", "_", field.strip().lower()) for field in fields]
    columns = {}
    for role, words in (("file", FILE_COLUMNS), ("label", LABEL_COLUMNS), ("split", SPLIT_COLUMNS)):
        found = [i for i, name in enumerate(names) if name in words]
        if found:
            columns[role] = found[0]
    if "file" not in columns or "label" not in columns or (root / fields[columns["file"]].strip()).is_file():
        return None
    return columns


def parse_rows(path: Path, text: str, root: Path) -> list[Row]:
    """The label file's rows (blank lines skipped; "train" where there is no split column); a DatasetError
    naming the lines whose field count differs from the first row's or whose file or label is empty."""
    records = records_of(path, text)
    first_line, width = records[0][0], len(records[0][1])
    columns = header_columns(records[0][1], root)
    if columns is not None:
        records = records[1:]
        if not records:
            raise DatasetError(f"Label file {path} has a header but no rows; add one file,label row per image.")
    elif width in (2, 3):
        columns = {"file": 0, "label": 1, "split": 2} if width == 3 else {"file": 0, "label": 1}
    else:
        raise DatasetError(
            f"Label file {path}: line {first_line} has {width} field(s), but a label file without a header "
            f"has 2 (file,label) or 3 (file,label,split). Fix the row, or start the file with a header naming "
            f"its columns (file,label,split; other columns are then ignored)."
        )
    rows, bad = [], []
    for line, fields in records:
        problem = malformed(fields, columns, width)
        if problem:
            bad.append(f"line {line} {problem}")
        else:
            split = fields[columns["split"]] if "split" in columns else "train"
            rows.append(Row(line, fields[columns["file"]], fields[columns["label"]], split))
    if bad:
        raise DatasetError(
            f"Label file {path} has {len(bad)} malformed row(s): {first_few(bad, SHOWN)}. "
            f"Every row needs the {width} fields of line {first_line} "
            f"({', '.join(columns)} in columns {', '.join(str(i + 1) for i in columns.values())}), with a file "
            f"name and a label; quote a field that holds the delimiter."
        )
    return rows


def records_of(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(the line it starts on, stripped fields) of every row that is not blank; a DatasetError for text
    csv cannot split."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter_of(path, text))
    records, end = [], 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num  # a quoted field may span lines
            if any(map(str.strip, fields)):
                records.append((start, [field.strip() for field in fields]))
    except csv.Error as err:
        raise DatasetError(
            f"Label file {path}: line {end + 1} cannot be read as CSV ({err}). Fix its quotes, "
            f"or save the file again as CSV or TSV."
        ) from err
    if not records:
        raise DatasetError(f"Label file {path} has no rows, only empty fields; it needs one file,label row per image.")
    return records


def malformed(fields: list[str], columns: dict[str, int], width: int) -> str:
    """What is wrong with a data row: a quote left open (it swallows the lines after it), another field
    count than the first row's, an empty file or label ('' when nothing)."""
    if any("\n" in field for field in fields):
        return "opens a quote it does not close"
    if len(fields) != width:
        return f"has {len(fields)} field(s)"
    if not fields[columns["file"]]:
        return "has no file name"
    if not fields[columns["label"]]:
        return "has no label"
    return ""


def with_split_names(path: Path, rows: list[Row]) -> list[Row]:
    """`rows` with their split as train, val or test (any case; valid and validation are val); a
    DatasetError for another value, or for a file without train rows."""
    unknown = [row for row in rows if row.split.lower() not in SPLIT_VALUES]
    if unknown:
        hint = did_you_mean(unknown[0].split.lower(), SPLIT_VALUES)
        raise DatasetError(
            f"Label file {path}: {len(unknown)} row(s) have a split that is not train, val or test: "
            f"{lines_text(unknown, lambda row: repr(row.split))}.{hint} "
            f"Write train, val or test in the split column (or leave the column out: all rows train, "
            f"data.val_fraction held out)."
        )
    rows = [Row(row.line, row.file, row.label, SPLIT_VALUES[row.split.lower()]) for row in rows]
    if not any(row.split == "train" for row in rows):
        raise DatasetError(
            f"Label file {path} has no train rows: the split column of all {len(rows)} rows says val or test. "
            f"Mark the images to train on as train."
        )
    return rows
