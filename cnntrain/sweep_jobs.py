"""A sweep's job folders read back, and the files written from them into the sweep folder.

Each job's overrides come from its .hydra/overrides.yaml and its results from its summary.json
(none: it stopped before finishing), so any launcher's jobs can be read, in this process or
after it (`python -m cnntrain.sweep`). `collect_jobs` gives one row per job; sweep.csv holds the
rows (one column per overridden key) and best.yaml the best job's overrides, score and folder.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import yaml

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
NO_SUMMARY = "no summary.json"
FINISHED = ("completed", "pruned")  # the statuses of jobs that did not fail
# What submitit raises in a job that reached its time limit (hydra.launcher.timeout_min; the signal comes
# signal_delay_s before it), recorded as the job's error; the table says it in cnntrain's words.
SUBMITIT_TIMED_OUT = "Job not requeued because: timed-out"


def _job_number(folder: Path) -> int:
    match = re.match(r"(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of `sweep_dir` (folders that hold a .hydra/ subfolder)."""
    rows = []
    for folder in sorted((p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")), key=_job_number):
        overrides = [
            o for o in yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or [] if not _is_address(o)
        ]
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
                "status": job_status(summary),
                "best_val_acc": summary.get("best_val_acc"),
                "test_acc": summary.get("test_acc"),
                "best_epoch": summary.get("best_epoch"),
                "wall_seconds": summary.get("wall_seconds"),
                "test_is_validation": summary.get("test_is_validation", False),
                "num_classes": summary.get("num_classes"),
                "run_dir": str(folder),
                "error": pruned_text(summary) or _table_error((summary.get("error") or "").split("\n")[0], folder),
            }
        )
    return rows


def _is_address(override: str) -> bool:
    """sweep.trial=...: where an Optuna search's job reports to (set by the sweeper), not a setting it tried."""
    return override.lstrip("+").startswith("sweep.trial=")


def job_status(summary: dict[str, Any]) -> str | None:
    """summary.json's status, except "pruned" for a run an Optuna pruner stopped (it completed: tested, summed up)."""
    return "pruned" if summary.get("status") == "completed" and summary.get("pruned") else summary.get("status")


def pruned_text(summary: dict[str, Any]) -> str:
    """What the table says of a pruned job ("" for any other): its epoch and the pruner."""
    pruned = summary.get("pruned") if summary.get("status") == "completed" else None
    if not isinstance(pruned, dict):
        return ""
    name = str(pruned.get("pruner"))
    return f"at epoch {pruned.get('epoch')} by the {name}{' pruner' if name.islower() else ''}"


def failed_jobs(rows: list[dict[str, Any]]) -> int:
    """Jobs that did not finish: neither completed nor pruned (a pruner's stop is a search's normal course)."""
    return sum(row["status"] not in FINISHED for row in rows)


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
