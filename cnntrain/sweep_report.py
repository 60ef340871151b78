"""The report of a sweep: the table printed, the notices under it, and the files it writes.

`report_sweep(sweep_dir)` reads the job folders (sweep_jobs.py), writes sweep.csv, sweep.png
(each swept parameter against the best validation accuracy, failed jobs marked and listed) and
best.yaml, prints the table, a note when a job scored about chance level, the best job and a
notice when that job was chosen on its test images. The Hydra callback, a fail-fast stop and
`python -m cnntrain.sweep` all print it through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnntrain.sweep_jobs import NO_SUMMARY, best_job, collect_jobs, write_best, write_sweep_csv


def _is_number(value) -> bool:
    return isinstance(value, (int, float))


def at_chance_level(row: dict[str, Any]) -> bool:
    """Whether a completed job's best validation accuracy is about what guessing scores (1/classes): within
    2 points or a tenth of it (0.12 for 10 classes, 0.55 for 2). Needs summary.json's num_classes (runs
    from before it was recorded are never marked)."""
    classes, acc = row.get("num_classes"), row.get("best_val_acc")
    if row["status"] != "completed" or not _is_number(acc) or not isinstance(classes, int) or classes < 2:
        return False
    return acc < 1 / classes + max(0.02, 0.1 / classes)


def chance_level_note(rows: list[dict[str, Any]]) -> str | None:
    """The line under the table that says what "chance level" means, when a job is marked so."""
    marked = [row for row in rows if at_chance_level(row)]
    if not marked:
        return None
    classes = sorted({row["num_classes"] for row in marked})
    guess = " or ".join(f"1/{n} = {1 / n:.4f}" for n in classes)
    jobs = ", ".join(str(row["job"]) for row in marked)
    return (
        f"chance level (job{'s' if len(marked) > 1 else ''} {jobs}): a best validation accuracy about what "
        f"guessing scores ({guess}), so the model did not learn. The lr may be too high or too low "
        f"(optimizer.lr), or the epochs too few (trainer.epochs)."
    )


def sweep_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="sweep result", header_style="bold")
    for column in ("job", "overrides", "status", "best val acc", "test acc", "time"):
        table.add_column(column)

    def number(value, fmt, unit=""):
        return format(value, fmt) + unit if _is_number(value) else "-"

    for row in rows:
        status = (
            row["status"]
            if row["status"] == "completed"
            else f"[yellow]pruned {escape(row['error'])}[/]"
            if row["status"] == "pruned"
            else f"[red]{escape(row['status'])}: {escape(row['error'])}[/]"
        )
        if at_chance_level(row):
            status = "completed, [yellow]chance level[/]"
        table.add_row(
            str(row["job"]),
            escape(row["overrides"] or "(none)"),
            status,
            number(row["best_val_acc"], ".4f"),
            number(row["test_acc"], ".4f"),
            number(row["wall_seconds"], ".1f", "s"),
        )
    return table


def report_sweep(sweep_dir: Path, console: Console | None = None, stopping: bool = False) -> list[dict[str, Any]]:
    """Writes sweep.csv, sweep.png and best.yaml for the jobs in `sweep_dir` and prints the table.

    `stopping`: a fail-fast stop is under way, so a job without summary.json is one that
    was still running (with a parallel launcher) and is being stopped, not one that failed.
    """
    console = console or Console(highlight=False)
    rows = collect_jobs(sweep_dir)
    if stopping:
        for row in rows:
            if row["error"].startswith(NO_SUMMARY):
                row.update(status="stopped", error="stopped by sweep.fail_fast before it finished")
    write_sweep_csv(rows, sweep_dir / "sweep.csv")
    console.print(sweep_table(rows))
    note = chance_level_note(rows)
    if note:
        console.print(note, style="yellow", markup=False, soft_wrap=True)
    outputs = "table in sweep.csv"
    if rows:
        from cnntrain.plots import plot_sweep

        try:
            plot_sweep(rows, sweep_dir / "sweep.png")
            outputs += ", plot in sweep.png"
        except Exception as err:  # a picture must never hide the sweep's results
            console.print(f"[yellow]sweep.png not drawn: {type(err).__name__}: {escape(str(err))}[/]")
    best = best_job(rows)
    if best:
        write_best(best, sweep_dir / "best.yaml")
        outputs += ", best job in best.yaml"
        console.print(
            f"best job: {best['job']}  {best['overrides'] or '(no overrides)'}  "
            f"val acc {best['best_val_acc']:.4f}  ({best['run_dir']})",
            markup=False,
            soft_wrap=True,
        )
        if best["test_is_validation"]:
            console.print(
                "notice: the best job validated on its test images (e.g. data.val_fraction=0), so it was "
                "chosen on them and its test accuracy flatters it. To pick a job on images the test does "
                "not use, hold out validation data (data.val_fraction=0.1; a dataset without a test split "
                "needs one, e.g. a test/ folder).",
                style="yellow",
                markup=False,
                soft_wrap=True,
            )
    console.print(f"sweep folder: {sweep_dir} ({outputs})", markup=False, soft_wrap=True)
    failed = sum(row["status"] == "failed" for row in rows)
    if failed:
        console.print(f"[red]{failed} of {len(rows)} jobs failed.[/]")
    return rows
