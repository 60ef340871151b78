"""What a run says, on the console and in train.log: its first lines and, at its end, the result table and notices.

`report_start`: what trains on what (sizes, input size, parameters, device, processes), the
recipe line, the weights' note, the run folder, "quick look" when limits are set, the build's
notices and the one-step-epoch notice. `report_end`: the result table, the notice that best.pt
was chosen on the images it was tested on (`chosen_on_test_notice`), the run folder again.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from cnntrain.build import TrainingParts
from cnntrain.display import Reporter
from cnntrain.metrics import EpochMetrics
from cnntrain.recipes import recipe_summary
from cnntrain.run_folder import RunFolder, display_path


def chosen_on_test_notice(best_epoch: int, last: EpochMetrics, has_test_split: bool) -> str:
    """Validation ran on the test images (data.val_fraction=0), or the test on the validation images
    (a dataset without a test split), so best.pt was picked on the images it is tested on: say so,
    with what the last epoch measured (the figure the book reports in that set-up)."""
    remedy = (
        "hold out validation images with data.val_fraction=0.1"
        if has_test_split
        else "give the dataset a test split (a test/ folder)"
    )
    return (
        f"notice: validation and the test used the same images (the first line says why), so best.pt (epoch "
        f"{best_epoch}) was chosen on the images it is tested on and its test accuracy flatters it; the "
        f"last epoch ({last.epoch}) measured {last.val_acc:.4f}. For a test figure nothing was chosen on, "
        f"{remedy}."
    )


def report_start(parts: TrainingParts, folder: RunFolder, reporter: Reporter, command_line: list[str] | None) -> None:
    """The run's first lines: what trains on what, where the folder is, the switches not honoured."""
    spec, checked = parts.spec, parts.checked
    origin = f" {spec.source}" if spec.source else ""
    reporter.line(
        f"cnntrain: {checked.model.title} on {spec.name}{origin} ({spec.train_size:,} train / {spec.val_size:,} val "
        f"from {spec.val_source} / {spec.test_size:,} test), input {spec.image_size[0]}px -> "
        f"{parts.recipe['input_size']}px, {parts.params:,} parameters, device {parts.device}"
        + (
            f" x {parts.group.world_size} process{'es' if parts.group.world_size > 1 else ''} "
            f"(DistributedDataParallel; global batch "
            f"{checked.data.batch_size})"
            if parts.group.ddp
            else ""
        )
    )
    reporter.line(recipe_summary(checked.cfg, command_line))
    if parts.weights_note:
        reporter.line(parts.weights_note)
    reporter.line(f"run folder: {display_path(folder.path)}")
    if parts.checked.limits:
        reporter.line(f"quick look, not a full run: {limits_text(parts)}", style="yellow")
    for notice in parts.notices:
        reporter.line(notice, style="yellow")
    notice = one_step_epoch_notice(checked.data.batch_size, spec.train_size)
    if notice:
        reporter.line(notice, style="yellow")


def one_step_epoch_notice(batch_size: int, train_size: int) -> str | None:
    """A batch as large as the training set makes every epoch one optimizer step, which trains little (a tiny
    image folder with the default batch of 256, say): say so, with a batch size that gives a few steps."""
    if train_size < 2 or batch_size < train_size:
        return None
    smaller = 2 ** max(0, (train_size // 4).bit_length() - 1)  # a power of two, about a quarter of the images
    relation = "is larger than" if batch_size > train_size else "equals"
    return (
        f"notice: data.batch_size={batch_size} {relation} the {train_size:,} training images, so each epoch is "
        f"one step of {train_size:,} images. For more steps per epoch set a smaller batch, e.g. "
        f"data.batch_size={smaller} ({-(-train_size // smaller)} steps)."
    )


def limits_text(parts: TrainingParts) -> str:
    loaders = {"train": parts.train_loader, "val": parts.val_loader, "test": parts.test_loader}
    texts = [
        f"{len(loaders[split])} {split} batches"
        for split in loaders
        if f"limit_{split}_batches" in parts.checked.limits
    ]
    if "subset" in parts.checked.limits:
        texts.append(f"a subset of {parts.spec.train_size:,} training images (data.subset)")
    return ", ".join(texts)


# The result table's short names of the metrics trainer.checkpoint.monitor may name.
SHORT_NAMES = {"val_balanced_acc": "val bal.acc", "val_macro_f1": "val macro-F1", "val_top5": "val top-5"}


def summary_table(summary: dict[str, Any], balanced: bool = False) -> Table:
    """The result table; the run folder goes on a line of its own after it (`report_end`), since a
    table cell would break the path across lines. A monitor other than val_acc (trainer.checkpoint) gets a
    column with the value that chose best.pt and a caption naming it; `balanced` (the epoch lines showed the
    balanced figures: ProgressDisplay.balanced), the test's balanced accuracy and macro-F1."""
    monitor = summary.get("best_metric", "val_acc")  # what chose best.pt (trainer.checkpoint.monitor)
    best = summary.get("best") or {}
    caption = None
    columns = {"best epoch": f"{summary['best_epoch']}/{summary['epochs']}"}
    if monitor != "val_acc" and best:
        columns[SHORT_NAMES.get(monitor, monitor.replace("_", " "))] = f"{best['value']:.4f}"
        caption = f"best epoch: the {'lowest' if best.get('mode') == 'min' else 'highest'} {monitor}"
    columns["val acc"] = f"{summary['best_val_acc']:.4f}"
    columns["test acc"] = f"{summary['test_acc']:.4f}"
    if balanced and summary.get("test_balanced_acc") is not None:
        columns["test bal.acc"] = f"{summary['test_balanced_acc']:.4f}"
        columns["test macro-F1"] = f"{summary['test_macro_f1']:.4f}"
    columns["time"] = f"{summary['wall_seconds']:.1f}s"
    table = Table(title="cnntrain result", caption=caption, show_header=True, header_style="bold")
    for column in columns:
        table.add_column(column)
    table.add_row(*columns.values())
    return table


def report_end(summary: dict[str, Any], reporter: Reporter, notice: str | None, balanced: bool = False) -> None:
    reporter.renderable(summary_table(summary, balanced))
    if notice:
        reporter.line(notice, style="yellow")
    reporter.line(f"run folder: {display_path(summary['run_dir'])}")
