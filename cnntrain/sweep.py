"""What Hydra and the command line ask of a sweep: the callback, a failed job's result, the plugins.

`SweepReport` is a Hydra callback (configs/hydra/default.yaml). Its `on_multirun_end` runs in the
process that launched the sweep and prints the report (sweep_report.py), which reads each job's
folder (sweep_jobs.py) instead of keeping results in memory, so it works with any launcher,
including ones that run jobs in other processes (joblib, submitit).

`failed_job_result` is what the train task does after a job failed in a sweep: stop
the sweep when `sweep.fail_fast` is set, else return the score a sweeper records.
`missing_plugin` names the pip extra a launcher or sweeper choice needs before Hydra runs, and
`main` (`python -m cnntrain.sweep <sweep folder>`) writes the report again from the job folders.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console

from cnntrain.sweep_jobs import failed_jobs
from cnntrain.sweep_report import report_sweep

_failures = {"count": 0}
EXIT_FAILED_JOBS = 1  # cnntrain -m's exit status when the sweep finished but some of its jobs failed
# What a failed job returns to the sweeper: 0, the worst validation accuracy there is, a finite float
# any sweeper accepts (hydra-optuna-sweeper aborted the search on None or NaN). cnntrain's Optuna sweeper
# reads the job's summary.json instead and tells the study the trial failed.
FAILED_JOB_SCORE = 0.0
# Optional Hydra plugins a config choice needs: (argument prefix, module, pip extra). cnntrain's Optuna
# sweeper is always there (hydra_plugins/cnntrain_optuna_sweeper): it is Optuna itself that may be missing.
PLUGINS = (
    ("hparams_search=", "optuna", "optuna"),
    ("hydra/sweeper=optuna", "optuna", "optuna"),
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
FAIL_FAST_WITH_SUBMITIT = (
    "notice: sweep.fail_fast=true cannot stop a sweep run by the submitit launcher: it submits "
    "every job at once. Failed jobs are in the table at the end, and the exit status is 1."
)


def last_sweep_failures() -> int:
    """Number of failed jobs in the last sweep this process ran (0 without a sweep)."""
    return _failures["count"]


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
        rows = report_sweep(sweep_dir, console, stopping=True)
        from cnntrain.loggers.mlflow_store import end_sweep  # the sweep ends here: so does MLflow's parent run

        end_sweep(sweep_dir, rows, "FAILED")
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
                what = (
                    module
                    if "." not in module
                    else f"Hydra's {extra} plugin ({module.split('.')[-1].replace('_', '-')})"
                )
                return (
                    f"'{next(a for a in args if a.lstrip('+').startswith(prefix))}' needs {what}, which is not "
                    f"installed. Install it with: pip install 'cnntrain[{extra}]'"
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
        _failures["count"] = failed_jobs(rows)
        from cnntrain.loggers.mlflow_store import end_sweep  # logger=mlflow's parent run (nothing without one)

        end_sweep(Path(config.hydra.sweep.dir), rows, "FAILED" if _failures["count"] else "FINISHED")


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
    return EXIT_FAILED_JOBS if failed_jobs(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
