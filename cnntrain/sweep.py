"""The report at the end of a multirun, and what a failed job means for the sweep.

`SweepReport` is a Hydra callback (configs/hydra/default.yaml). It reads each job's
folder (overrides from .hydra/overrides.yaml, results from summary.json) instead of
keeping results in memory, so it works with any launcher, including ones that run
jobs in other processes (joblib, submitit). It writes, into the sweep folder: sweep.csv (one row
per job), sweep.png (each swept parameter against the best validation accuracy,
failed jobs marked and listed) and best.yaml (the best job's overrides), and prints
the table and the best job.

`failed_job_result` is what the train task does after a job failed in a sweep: stop
the sweep when `sweep.fail_fast` is set, else return the score a sweeper records.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnntrain.errors import CnnTrainError
from cnntrain.run_folder import RunFolder, display_path

SWEEP_COLUMNS = [
    "job",
    "overrides",
    "status",
    "best_val_acc",
    "test_acc",
    "best_epoch",
    "wall_seconds",
    "run_dir",
    "error",
]
_failures = {"count": 0}
NO_SUMMARY = "no summary.json"
EXIT_FAILED_JOBS = 1  # the same status as cli.EXIT_FAILED_JOBS: some jobs of the sweep failed
# What a failed job returns to the sweeper. Optuna's Hydra sweeper (1.2, 1.3) aborts the whole
# search on a value that is not a finite float (None and NaN included), so a failed trial
# scores 0, the worst validation accuracy there is: the search goes on and steers away from it.
FAILED_JOB_SCORE = 0.0
# Optional Hydra plugins a config choice needs: (argument prefix, module, pip extra).
PLUGINS = (
    ("hparams_search=", "hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("hydra/sweeper=optuna", "hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "submitit"),
    ("launcher=submitit_local", "hydra_plugins.hydra_submitit_launcher", "submitit"),
    ("hydra/launcher=submitit", "hydra_plugins.hydra_submitit_launcher", "submitit"),
)
# The submitit launchers (launcher=slurm, launcher=submitit_local) submit every job of a sweep at
# once and wait for each job's result, so a failed job cannot stop the others (sweep.fail_fast).
SUBMITIT_LAUNCHERS = "hydra_plugins.hydra_submitit_launcher."
# Hydra's options that show something and run no job (nothing is submitted to Slurm).
SHOW_ONLY_OPTIONS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc")
# What submitit raises in a job that reached its time limit (hydra.launcher.timeout_min; the signal comes
# signal_delay_s before it), recorded as the job's error; the table says it in cnntrain's words.
SUBMITIT_TIMED_OUT = "Job not requeued because: timed-out"
FAIL_FAST_WITH_SUBMITIT = (
    "notice: sweep.fail_fast=true cannot stop a sweep run by the submitit launcher: it submits "
    "every job at once. Failed jobs are in the table at the end, and the exit status is 1."
)


def last_sweep_failures() -> int:
    """Number of failed jobs in the last sweep this process ran (0 without a sweep)."""
    return _failures["count"]


def _job_number(folder: Path) -> int:
    match = re.match(r"(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of `sweep_dir` (folders that hold a .hydra/ subfolder)."""
    rows = []
    for folder in sorted((p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")), key=_job_number):
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
        try:
            summary = RunFolder(folder).read_summary() or {
                "status": "failed",
                "error": f"{NO_SUMMARY} (the job stopped before finishing)",
            }
        except CnnTrainError as err:
            summary = {"status": "failed", "error": str(err)}
        rows.append(
            {
                "job": _job_number(folder),
                "overrides": " ".join(overrides),
                "override_list": overrides,
                "status": summary.get("status"),
                "best_val_acc": summary.get("best_val_acc"),
                "test_acc": summary.get("test_acc"),
                "best_epoch": summary.get("best_epoch"),
                "wall_seconds": summary.get("wall_seconds"),
                "test_is_validation": summary.get("test_is_validation", False),
                "num_classes": summary.get("num_classes"),
                "run_dir": str(folder),
                "error": _table_error((summary.get("error") or "").split("\n")[0], folder),
            }
        )
    return rows


def _table_error(error: str, folder: Path) -> str:
    if error.startswith(SUBMITIT_TIMED_OUT):
        if not RunFolder(folder).last_checkpoint.is_file():
            return "stopped at its time limit (hydra.launcher.timeout_min) before its first epoch ended"
        return (
            f"stopped at its time limit (hydra.launcher.timeout_min); checkpoints/last.pt holds its finished "
            f"epochs: cnntrain resume={display_path(folder)}"
        )
    return error


def write_sweep_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per job; after `overrides`, one column per overridden key with the job's value as
    YAML reads it (0.1 a number, true a boolean), so that pandas can pivot on it."""
    keys = list(dict.fromkeys(key for row in rows for key in override_values(row["override_list"])))
    columns = SWEEP_COLUMNS[:2] + keys + SWEEP_COLUMNS[2:]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, **override_values(row["override_list"])} for row in rows)


def override_values(overrides: list[str]) -> dict[str, Any]:
    """{key: value} of a job's overrides (a leading + dropped), values typed as YAML reads them."""
    values = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if sep and not key.startswith("hydra."):
            try:
                values[key.lstrip("+")] = yaml.safe_load(raw)
            except yaml.YAMLError:
                values[key.lstrip("+")] = raw
    return values


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


def best_job(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed job with the highest best_val_acc (the first of equals), or None: sweep.png's star too."""
    from cnntrain.plots import best_of

    return best_of(rows, "best_val_acc")


def write_best(row: dict[str, Any], path: Path) -> None:
    """best.yaml: the best job's overrides (ready to paste after `cnntrain`), score and folder."""
    best = {
        "job": row["job"],
        "overrides": list(row["override_list"]),
        "best_val_acc": row["best_val_acc"],
        "test_acc": row["test_acc"],
        "best_epoch": row["best_epoch"],
        "run_dir": row["run_dir"],
    }
    path.write_text(yaml.safe_dump(best, sort_keys=False))


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


def failed_job_result(cfg: DictConfig) -> float:
    """Called by the train task after a job of a sweep failed (its error already printed).

    With sweep.fail_fast the sweep stops here: the report of the jobs so far is written
    and the process exits with status 1 (SystemExit passes through Hydra's launchers,
    which catch only Exception). Otherwise the sweep goes on and the job scores
    FAILED_JOB_SCORE. So does a job of the submitit launcher with sweep.fail_fast: it runs in a
    process of its own that submitit waits on (an exit there would only lose the job's result
    and the table at the end), and the other jobs are already submitted.
    """
    if cfg.get("sweep") is not None and cfg.sweep.get("fail_fast", False):
        from hydra.core.hydra_config import HydraConfig

        if submitit_launched(HydraConfig.get()):
            return FAILED_JOB_SCORE
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        console = Console(highlight=False)
        report_sweep(sweep_dir, console, stopping=True)
        console.print("[red]sweep stopped at the first failed job (sweep.fail_fast=true).[/]")
        _failures["count"] += 1
        sys.stdout.flush()
        raise SystemExit(EXIT_FAILED_JOBS)
    return FAILED_JOB_SCORE


def submitit_launched(hydra_cfg: DictConfig) -> bool:
    """Whether the sweep's jobs are run by the submitit launcher (`hydra_cfg`: the `hydra` section)."""
    return str(hydra_cfg.launcher.get("_target_", "")).startswith(SUBMITIT_LAUNCHERS)


def missing_plugin(args: list[str]) -> str | None:
    """A message naming the pip extra to install when an argument needs a Hydra plugin that is missing
    (or, for launcher=slurm, saying that this machine has no Slurm to submit to)."""
    for prefix, module, extra in PLUGINS:
        if any(arg.lstrip("+").startswith(prefix) and not arg.endswith("=null") for arg in args):
            if importlib.util.find_spec(module) is None:
                return (
                    f"'{next(a for a in args if a.lstrip('+').startswith(prefix))}' needs Hydra's "
                    f"{extra} plugin ({module.split('.')[-1].replace('_', '-')}), which is not installed. "
                    f"Install it with: pip install 'cnntrain[{extra}]'"
                )
    slurm = next((arg for arg in args if arg.lstrip("+") in ("launcher=slurm", "hydra/launcher=submitit_slurm")), None)
    only_shows = any(arg.split("=")[0] in SHOW_ONLY_OPTIONS for arg in args)  # --cfg job: nothing is submitted
    if slurm and not only_shows and not (shutil.which("sbatch") and shutil.which("srun")):
        return (
            f"'{slurm}' submits the sweep's jobs with Slurm's sbatch and srun, which this machine does not have "
            f"(not on PATH). Run the command on the cluster's login node, or try the sweep here with "
            f"launcher=submitit_local."
        )
    return None


class SweepReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _failures["count"] = 0
        if config.get("sweep") is not None and config.sweep.get("fail_fast", False) and submitit_launched(config.hydra):
            Console(highlight=False).print(FAIL_FAST_WITH_SUBMITIT, style="yellow", markup=False, soft_wrap=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = report_sweep(Path(config.hydra.sweep.dir))
        _failures["count"] = sum(row["status"] != "completed" for row in rows)


def main(argv: list[str] | None = None) -> int:
    """`python -m cnntrain.sweep <sweep folder>`: the report again, from the job folders (table, sweep.csv,
    sweep.png, best.yaml), e.g. after the process that ran a Slurm sweep was stopped (its jobs go on without
    it) or a job was killed (the submitit launcher then stops with a traceback instead of the table).
    Exit status 1 when a job did not complete, 2 when the folder holds no sweep (Hydra's multirun.yaml or
    submitit's .submitit/: the report is written into it, so any other folder is refused)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not ((Path(args[0]) / "multirun.yaml").is_file() or (Path(args[0]) / ".submitit").is_dir()):
        print(
            "usage: python -m cnntrain.sweep <sweep folder>   (the folder of a `cnntrain -m` sweep, which holds "
            "multirun.yaml or .submitit/ and a folder per job)",
            file=sys.stderr,
        )
        return 2
    rows = report_sweep(Path(args[0]))
    return EXIT_FAILED_JOBS if any(row["status"] != "completed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
