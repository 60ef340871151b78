"""What `cnntrain-predict` writes and prints: predictions-<inputs>.csv (never over a file that is not its
own), the table of predictions fitted to the console, and the summary for more images than a screen holds."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from cnntrain.errors import CnnTrainError
from cnntrain.exported_model import is_exported_file
from cnntrain.opened_run import RunArgument, check_run_folder
from cnntrain.predictor import Prediction
from cnntrain.run_folder import (
    RunFolder,
    cannot_write_message,
    check_writable,
    export_predictions_csv,
    refuse_links_out_of_run,
    write_atomically,
)


def predictions_path(run: Path | str, inputs: Path | str = "images") -> Path:
    """Where cnntrain-predict writes without output=: predictions-<input name>.csv in the run folder, or
    <file stem>.predictions-<input name>.csv beside an exported .onnx file; with -2, -3, ... added when
    that file exists, so that earlier predictions are kept."""
    run = Path(run)
    if is_exported_file(run):
        if not run.is_file():
            raise CnnTrainError(
                f"run={run} does not exist. Give a run folder, or an .onnx file written by cnntrain-export."
            )
        base = export_predictions_csv(run)
    else:
        check_run_folder(
            run,
            RunArgument(
                key="run=",
                use=f"cnntrain-predict run={{}} inputs={inputs}",
                also=" or an .onnx file written by cnntrain-export",
            ),
        )
        base = RunFolder(run).predictions_csv
    named = base.with_name(f"{base.stem}-{_file_name_part(inputs)}{base.suffix}")
    return _unused(named)


def _file_name_part(inputs: Path | str) -> str:
    """The inputs' name as part of a file name: a folder's name, an image's name without its extension."""
    inputs = Path(inputs)
    name = (inputs.stem if inputs.is_file() else inputs.resolve().name) or "images"
    return re.sub(r"[^\w.-]+", "_", name)


def _unused(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... (before the extension) that does not exist."""
    number = 2
    candidate = path
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


PREDICTIONS_HEADER = ["file", "predicted", "probability", "top_k"]


def check_output(path: Path) -> None:
    """output= may be a new file or a predictions CSV written before; never anything else (a checkpoint, a
    folder, someone's data), since writing it would destroy it."""
    if path.is_dir():
        raise CnnTrainError(f"output={path} is a folder; give a CSV file name, e.g. output={path / 'predictions.csv'}.")
    refuse_links_out_of_run(path, "Replace the link, or write the predictions elsewhere with output=<csv file>.")
    if not path.exists():
        if not path.parent.is_dir():
            raise CnnTrainError(f"output={path}: the folder {path.parent} does not exist.")
        check_writable(path.parent, WRITE_ELSEWHERE)
        return
    try:
        with open(path, newline="", encoding="utf-8") as f:
            first_row = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error, OSError):
        first_row = None
    if first_row != PREDICTIONS_HEADER:
        raise CnnTrainError(
            f"output={path} exists and is not a predictions CSV written by cnntrain-predict; "
            f"it is left as it is. Give another file name."
        )
    check_writable(path.parent, WRITE_ELSEWHERE)  # it is replaced by a new file beside it


WRITE_ELSEWHERE = "Write the predictions to a folder you can write to with output=<folder>/predictions.csv."


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    """The predictions CSV, written whole or not at all (write_atomically); a file system that is read-only or
    full is a CnnTrainError saying where and offering output=."""

    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(PREDICTIONS_HEADER)
        for p in predictions:
            writer.writerow(
                [p.file, p.label, f"{p.probability:.6f}", "; ".join(f"{name}:{prob:.4f}" for name, prob in p.top)]
            )

    try:
        write_atomically(path, write, binary=False)
    except OSError as err:
        raise CnnTrainError(cannot_write_message(Path(path).parent, err, WRITE_ELSEWHERE)) from None


# Rows cnntrain-predict prints as a table when the console's height is unknown (a pipe, a file); past it
# (or past the terminal's height) it prints a summary: the CSV holds every row.
SCREENFUL = 40


def shown_path(file: str, inputs: Path | str) -> str:
    """An image's path as the table shows it: relative to the input folder (a single image: its name)."""
    inputs = Path(inputs)
    if inputs.is_file():
        return Path(file).name
    try:
        return str(Path(file).relative_to(inputs))
    except ValueError:
        return file


def predictions_table(predictions: list[Prediction], inputs: Path | str = ".", width: int = 80) -> Table:
    """One row per image, fitted to `width` columns. Paths and class names never break mid-name while the
    top-k column can give way: it wraps between its entries, and is left out (the CSV has it) when the
    paths need its room; only a path longer than the whole room is folded."""
    files = [shown_path(p.file, inputs) for p in predictions]
    tops = [", ".join(f"{n} {q:.2f}" for n, q in p.top) for p in predictions]
    label = min(max([len("predicted"), *(len(p.label) for p in predictions)]), 30)
    longest = max([len("file"), *map(len, files)])
    room = width - 13 - label - len("probability")  # 13: the borders and each column's padding (4 columns)
    with_top_k = longest <= room - 16
    if not with_top_k:
        room += 3  # one column less
    file = min(longest, max(room - (16 if with_top_k else 0), 12))
    table = Table(title=f"predictions ({len(predictions)} images)", header_style="bold")
    table.add_column("file", overflow="fold", min_width=file, max_width=file)
    table.add_column("predicted", no_wrap=True, overflow="fold", min_width=label, max_width=label)
    table.add_column("probability", justify="right", no_wrap=True)
    if with_top_k:
        table.add_column("top k", overflow="fold", min_width=room - file, max_width=room - file)
    for p, file, top in zip(predictions, files, tops):
        table.add_row(escape(file), escape(p.label), f"{p.probability:.3f}", *([escape(top)] if with_top_k else []))
    return table


def predictions_summary(predictions: list[Prediction], inputs: Path | str = ".", least: int = 5) -> list[Table]:
    """For more images than a screen holds: images per predicted class, and the `least` confident."""
    counts: dict[str, int] = {}
    for p in predictions:
        counts[p.label] = counts.get(p.label, 0) + 1
    total = len(predictions)
    per_class = Table(title=f"{total:,} images per predicted class", header_style="bold")
    per_class.add_column("predicted", overflow="fold")
    per_class.add_column("images", justify="right", no_wrap=True)
    per_class.add_column("share", justify="right", no_wrap=True)
    for label, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        per_class.add_row(escape(label), f"{count:,}", f"{count / total:.1%}")
    unsure = sorted(predictions, key=lambda p: (p.probability, p.file))[:least]
    low = predictions_table(unsure, inputs)
    low.title = f"the {len(unsure)} least confident"
    return [per_class, low]
