"""What cnntrain-eval prints: what was evaluated, the figures, per class, the confusion matrix, the files."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnntrain.eval_result import EvalResult
from cnntrain.evaluator import tta_line
from cnntrain.run_folder import display_path

CONSOLE_MATRIX_CLASSES = 30  # the confusion matrix is printed up to this many classes, when it fits


def print_report(result: EvalResult, console: Console) -> None:
    """What cnntrain-eval prints: what was evaluated, the figures, per class, the confusion matrix, the files."""
    evaluation = result.evaluation

    def say(text: str, style: str | None = None) -> None:
        console.print(text, style=style, markup=False, soft_wrap=True)

    say(
        f"cnntrain-eval: {display_path(result.run.path)} ({result.model}, checkpoints/{result.checkpoint}.pt, "
        f"epoch {result.epoch}) on {'all images' if result.split == 'all' else f'the {result.split} split'} of "
        f"{result.data}"
        f"{' ' + result.source if result.source and not result.own_data else ''} ({result.size:,} images)"
    )
    augmentation = tta_line(result.tta, result.run_tta)
    if augmentation:
        say(augmentation)
    for notice in result.notices:
        say(notice, style="yellow")
    top5 = f"  top-5 {evaluation.top5:.4f}" if evaluation.top5 is not None else ""
    say(
        f"loss {evaluation.loss:.4f}  accuracy {evaluation.acc:.4f}{top5}  "
        f"({result.size - len(result.misclassified):,} of {result.size:,} right)"
    )
    say(f"balanced accuracy {evaluation.balanced_acc:.4f}  macro-F1 {evaluation.macro_f1:.4f}")
    if result.run_test:
        run = result.run_test
        run_top5 = f" top-5 {run['test_top5']:.4f}" if "test_top5" in run else ""
        balanced = (  # runs from before these figures lack them
            f" balanced accuracy {run['test_balanced_acc']:.4f} macro-F1 {run['test_macro_f1']:.4f}"
            if "test_macro_f1" in run
            else ""
        )
        say(
            f"the run's summary.json (same split and checkpoint): test loss {run['test_loss']:.4f} "
            f"accuracy {run['test_acc']:.4f}{run_top5}{balanced}"
        )
    console.print(per_class_table(result))
    matrix = confusion_table(result)
    if len(result.classes) <= CONSOLE_MATRIX_CLASSES and console.measure(matrix).maximum <= console.width:
        say("confusion matrix (rows: the actual class; columns: the predicted class, numbered as the rows):")
        console.print(matrix)
    else:
        say(
            f"confusion matrix: {len(result.classes)} classes, too wide to print here: see confusion_matrix.csv "
            f"and confusion_matrix.png"
        )
    folder = result.folder
    written = [
        folder.eval_json,
        folder.per_class_csv,
        folder.confusion_csv,
        folder.confusion_png,
        folder.misclassified_csv,
    ] + ([folder.misclassified_png] if result.misclassified else [])
    say(f"misclassified: {len(result.misclassified):,} (misclassified.csv, most confident first)")
    say(f"written to {display_path(folder.path)}: {', '.join(path.name for path in written)}")


def per_class_table(result: EvalResult) -> Table:
    table = Table(title="per class", header_style="bold")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result.per_class:
        table.add_row(
            escape(row["class"]), *(_shown(row[key]) for key in ("precision", "recall", "f1")), str(row["support"])
        )
    return table


def confusion_table(result: EvalResult) -> Table:
    """Rows: the actual class (numbered); columns: the predicted one, by the same numbers (names would not fit)."""
    table = Table(header_style="bold")
    table.add_column("actual", no_wrap=True)
    for j in range(len(result.classes)):
        table.add_column(str(j), justify="right")
    for i, (name, counts) in enumerate(zip(result.classes, result.confusion.tolist())):
        cells = [
            f"[bold]{count}[/]" if j == i else str(count) if count else "[dim]0[/]" for j, count in enumerate(counts)
        ]
        table.add_row(f"{i} {escape(name)}", *cells)
    return table


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
