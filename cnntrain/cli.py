"""Command-line entry points: `cnntrain` and `python -m cnntrain` (its checks before Hydra, its Hydra
job, resume=, torchrun), and the console scripts of the companion commands cnntrain-info, -predict,
-export and -eval (their bodies: companion_commands.py; their arguments, help and errors: companion_line.py).

Entry points only: parse, print, exit codes. What the config tree holds is config.py's
business, running a job run.py's; torch is imported when a job starts, so
`cnntrain --help`, `--version` and a mistyped group choice answer quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnntrain import __version__
from cnntrain.command_line import always_sweeps, override_problem, read_command_line
from cnntrain.companion_commands import (  # noqa: F401 (the console scripts pyproject.toml names as cnntrain.cli's)
    eval_main,
    export_main,
    info_main,
    predict_main,
)
from cnntrain.companion_line import EXIT_INTERRUPTED, EXIT_USAGE, print_error
from cnntrain.config import check_group_choices, config_dir, unknown_component_name
from cnntrain.distributed import launched_by_torchrun, process_rank
from cnntrain.errors import CnnTrainError
from cnntrain.hydra_folders import run_folder_problem
from cnntrain.key_checks import check_override_keys
from cnntrain.override_text import expand_home, quote_for_hydra
from cnntrain.process import count_from_process_start, keep_console_optional


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _run_job(cfg: DictConfig) -> float | None:
    """One training job; returns the best validation accuracy (what a sweeper maximises).

    A failed job of a sweep returns sweep.failed_job_result's score (or stops a fail-fast sweep).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    problem = None if in_sweep else unknown_component_name(cfg)  # a sweep job records its error in its folder
    if problem:
        print_error(problem)
        sys.exit(EXIT_USAGE)
    from cnntrain.run import train  # imports torch: after the checks that can do without it

    try:
        return train(cfg, command_line=list(HydraConfig.get().overrides.task))["best_val_acc"]
    except CnnTrainError as err:
        print_error(str(err))
        if not in_sweep:
            sys.exit(EXIT_USAGE)
    except Exception as err:  # a bug or library failure: one job's, the sweep goes on
        if not in_sweep:
            raise
        print_error(f"job failed: {type(err).__name__}: {err}")
    from cnntrain.sweep import failed_job_result

    return failed_job_result(cfg)


def resume_main(args: list[str]) -> None:
    """`cnntrain resume=<run folder> [key=value ...]`: continue a run in its folder (see resuming.py)."""
    if any(arg in ("-m", "--multirun") for arg in args):
        print_error("resume= continues one run; it cannot be part of a sweep (-m).")
        sys.exit(EXIT_USAGE)
    [run_dir] = [arg.split("=", 1)[1] for arg in args if arg.startswith("resume=")][:1]
    from cnntrain.resuming import resume

    try:
        resume(Path(run_dir), [arg for arg in args if not arg.startswith("resume=")])
    except CnnTrainError as err:
        print_error(str(err))
        sys.exit(EXIT_USAGE)


def join_torchrun_group(args: list[str]) -> list[str]:
    """Under torchrun: join the process group and take rank 0's start time (one run folder for all);
    the extra overrides the other ranks run with (they leave .hydra/ to rank 0)."""
    processes = launched_by_torchrun()
    if processes <= 1:
        return []
    if any(arg in ("-m", "--multirun") for arg in args):
        print_error(
            f"torchrun started {processes} processes for one training; a sweep (-m) cannot run inside "
            f"it. Run each job under torchrun, or sweep with a launcher (launcher=slurm)."
        )
        sys.exit(EXIT_USAGE)
    from datetime import datetime

    from cnntrain.config import share_start_time
    from cnntrain.distributed import from_rank_zero, join_group

    join_group()
    share_start_time(from_rank_zero(datetime.now))  # the run folder's name: rank 0's, in every rank
    return ["hydra.output_subdir=null"] if process_rank() > 0 else []


def main() -> None:
    """`cnntrain [overrides]`: train once; `cnntrain -m [overrides]`: one job per combination;
    `cnntrain resume=<run folder>`: continue a run."""
    keep_console_optional()  # a closed `| tee`, `| head` or terminal never fails a run, nor its last words
    count_from_process_start()  # trainer.time_limit: the user times the whole command
    args = expand_home(sys.argv[1:])
    if "--version" in args or "-V" in args:  # anywhere, as Hydra's --version was
        import hydra

        print(f"cnntrain {__version__}\nHydra {hydra.__version__}")
        return
    try:
        args = [arg.lstrip("+") if arg.lstrip("+").startswith("resume=") else arg for arg in args]
        resumes = [arg for arg in args if arg.startswith("resume=") and arg != "resume=null"]
        if len(resumes) > 1:
            print_error(f"Give one run folder to resume, got {', '.join(resumes)}.")
            sys.exit(EXIT_USAGE)
        if resumes:
            problem = override_problem([arg for arg in args if arg not in ("-m", "--multirun")], sweeps="")
            if problem:
                print_error(problem)
                sys.exit(EXIT_USAGE)
            resume_main(args)
            return
        _run_job_checked(args)
    except KeyboardInterrupt as err:  # train() has already said what was saved and how to resume
        sys.exit(getattr(err, "exit_code", EXIT_INTERRUPTED))
    from cnntrain.sweep import EXIT_FAILED_JOBS, last_sweep_failures

    if last_sweep_failures():
        sys.exit(EXIT_FAILED_JOBS)


def _run_job_checked(args: list[str]) -> None:
    """Hydra's flags told from the overrides, the overrides checked (grammar, names, keys, plugins, the run
    folder) without torch, then Hydra runs. -sc (tab completion) goes to Hydra as it is: its
    install=bash / query=bash are not settings."""
    try:
        command = read_command_line(args)
    except CnnTrainError as err:
        print_error(str(err))
        sys.exit(EXIT_USAGE)
    if command.flags.shell_completion:
        sys.argv[1:] = command.argv()
        _run_job()
        return
    overrides = quote_for_hydra(command.overrides)
    multirun = command.multirun or always_sweeps(overrides) or command.other_configs
    problem = override_problem(command.overrides, overrides, multirun=multirun)
    if problem:
        print_error(problem)
        sys.exit(EXIT_USAGE)
    overrides += join_torchrun_group(command.argv())
    args = command.options + overrides
    sys.argv[1:] = args  # Hydra reads sys.argv
    from cnntrain.sweep import missing_plugin

    problem = (
        check_group_choices(args)
        or check_override_keys(args)
        or missing_plugin(args)
        or (run_folder_problem(args) if process_rank() == 0 and command.runs_a_job else None)
    )
    if problem:  # rank 0 makes the folder; --cfg, --info and --help write none
        print_error(problem)
        sys.exit(EXIT_USAGE)
    _run_job()
