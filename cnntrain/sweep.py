"""The report at the end of a multirun: one row per job, on the console and in sweep.csv.

`SweepReport` is a Hydra callback (configs/hydra/default.yaml). It reads each job's
folder (overrides from .hydra/overrides.yaml, results from summary.json) instead of
keeping results in memory, so it works with any launcher, including ones that run
jobs in other processes.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

SWEEP_COLUMNS = ["job", "overrides", "status", "best_val_acc", "test_acc", "best_epoch", "wall_seconds",
                 "run_dir", "error"]
_failures = {"count": 0}


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
        summary_file = folder / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {
            "status": "failed", "error": "no summary.json (the job stopped before finishing)"}
        rows.append({
            "job": _job_number(folder), "overrides": " ".join(overrides), "status": summary.get("status"),
            "best_val_acc": summary.get("best_val_acc"), "test_acc": summary.get("test_acc"),
            "best_epoch": summary.get("best_epoch"), "wall_seconds": summary.get("wall_seconds"),
            "run_dir": str(folder), "error": (summary.get("error") or "").split("\n")[0],
        })
    return rows


def write_sweep_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def sweep_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="sweep result", header_style="bold")
    for column in ("job", "overrides", "status", "best val acc", "test acc", "time"):
        table.add_column(column)

    def number(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    for row in rows:
        status = row["status"] if row["status"] == "completed" else f"[red]{row['status']}: {row['error']}[/]"
        table.add_row(str(row["job"]), row["overrides"] or "(none)", status, number(row["best_val_acc"], ".4f"),
                      number(row["test_acc"], ".4f"), number(row["wall_seconds"], ".1f") + "s")
    return table


class SweepReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _failures["count"] = 0

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_jobs(sweep_dir)
        write_sweep_csv(rows, sweep_dir / "sweep.csv")
        console = Console(highlight=False)
        console.print(sweep_table(rows))
        console.print(f"sweep folder: {sweep_dir} (table in sweep.csv)")
        _failures["count"] = sum(row["status"] != "completed" for row in rows)
        if _failures["count"]:
            console.print(f"[red]{_failures['count']} of {len(rows)} jobs failed.[/]")
