"""Command-line entry points: `cnntrain` and `python -m cnntrain`.

Entry points only: parse, print, exit codes. What the config tree holds is config.py's
business, running a job run.py's; torch is imported when a job starts, so
`cnntrain --help`, `--version` and a mistyped group choice answer quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from cnntrain import __version__
from cnntrain.config import (check_group_choices, check_override_keys, config_dir, expand_home, quote_for_hydra,
                             unknown_component_name)
from cnntrain.errors import CnnTrainError
from cnntrain.registry import did_you_mean
from cnntrain.run_folder import RunFolder, run_folder_problem

EXIT_USAGE = 2  # a config or data problem the message explains
EXIT_FAILED_JOBS = 1  # a sweep finished but some of its jobs failed
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


def print_error(message: str) -> None:
    # escape(): text such as imports=[my_models] or [topk=3] is not rich markup.
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


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
        return train(cfg)["best_val_acc"]
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


def info_main() -> None:
    """`cnntrain-info [overrides]`: each layer's output shape and size for a config; no training."""
    args = sys.argv[1:]
    if args and args[0] in ("-h", "--help"):
        print("usage: cnntrain-info [overrides]   e.g. cnntrain-info model=alexnet data=fashion_mnist\n"
              "Prints each layer's name, type, output shape, parameters and multiply-adds for one image,\n"
              "then totals and the activation memory of one batch (data.batch_size).")
        return
    problem = check_group_choices(args)
    if problem:
        print_error(problem)
        sys.exit(EXIT_USAGE)
    from cnntrain.build import inspect_model
    from cnntrain.config import compose
    from cnntrain.inspector import render_table

    try:
        cfg = compose(args)
        rows, totals, size = inspect_model(cfg)
    except CnnTrainError as err:
        print_error(str(err))
        sys.exit(EXIT_USAGE)
    title = f"{cfg.model.name}: {totals.input_shape[0]}x{size}x{size} input from {cfg.data.name}"
    Console(highlight=False).print(render_table(rows, totals, title=title))


PREDICT_USAGE = """usage: cnntrain-predict run=<run folder> inputs=<image or folder> [topk=3] [checkpoint=best|last]
                        [output=<csv file>] [imports=[my_models]]
Classifies images with the run's checkpoint, prints a table and writes predictions.csv
into the run folder (or to output=<csv file>). A run of your own model needs the modules
it was trained with named again (imports=...): modules named in a run folder are never imported."""
# key -> default; None: required. imports "": not given.
PREDICT_OPTIONS = {"run": None, "inputs": None, "topk": "3", "checkpoint": "best", "output": "", "imports": ""}


def parse_key_values(args: list[str], options: dict[str, str | None]) -> dict[str, str]:
    """key=value arguments checked against `options` (key -> default, None when required)."""
    values = dict(options)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            raise CnnTrainError(f"Unexpected argument '{arg}'.{did_you_mean(key, options)}\n{PREDICT_USAGE}")
        values[key] = value
    missing = [key + "=" for key, value in values.items() if value is None]
    if missing:
        raise CnnTrainError(f"Missing {', '.join(missing)}\n{PREDICT_USAGE}")
    if not (values["topk"].isascii() and values["topk"].isdigit()) or int(values["topk"]) < 1:
        raise CnnTrainError(f"topk must be a positive whole number, got '{values['topk']}'.")
    return values


def predict_main() -> None:
    """`cnntrain-predict run=... inputs=...`: classify new images with a trained run."""
    args = expand_home(sys.argv[1:])
    if not args or args[0] in ("-h", "--help"):
        print(PREDICT_USAGE)
        return
    from cnntrain.predict import check_output, predict, predictions_table, write_predictions

    try:
        options = parse_key_values(args, PREDICT_OPTIONS)
        if not Path(options["run"]).is_dir():
            raise CnnTrainError(f"run={options['run']} is not a folder. Give a run folder "
                                f"(outputs/<date>/<time>_<model>_<data>).")
        output = Path(options["output"]) if options["output"] else RunFolder(options["run"]).predictions_csv
        check_output(output)  # before the work, so that a refusal costs nothing
        predictions = predict(Path(options["run"]), Path(options["inputs"]), topk=int(options["topk"]),
                              checkpoint=options["checkpoint"], imports=options["imports"] or None)
    except CnnTrainError as err:
        print_error(str(err))
        sys.exit(EXIT_USAGE)
    write_predictions(predictions, output)
    console = Console(highlight=False)
    console.print(predictions_table(predictions))
    console.print(f"written to {output}", markup=False, soft_wrap=True)


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


def main() -> None:
    """`cnntrain [overrides]`: train once; `cnntrain -m [overrides]`: one job per combination;
    `cnntrain resume=<run folder>`: continue a run."""
    args = expand_home(sys.argv[1:])
    if args in (["--version"], ["-V"]):
        print(f"cnntrain {__version__}")
        return
    try:
        args = [arg.lstrip("+") if arg.lstrip("+").startswith("resume=") else arg for arg in args]
        resumes = [arg for arg in args if arg.startswith("resume=") and arg != "resume=null"]
        if len(resumes) > 1:
            print_error(f"Give one run folder to resume, got {', '.join(resumes)}.")
            sys.exit(EXIT_USAGE)
        if resumes:
            resume_main(args)
            return
        sys.argv[1:] = args = quote_for_hydra(args)  # Hydra reads sys.argv
        from cnntrain.sweep import missing_plugin

        problem = (check_group_choices(args) or check_override_keys(args) or missing_plugin(args)
                   or run_folder_problem(args))
        if problem:
            print_error(problem)
            sys.exit(EXIT_USAGE)
        _run_job()
    except KeyboardInterrupt as err:  # train() has already said what was saved and how to resume
        sys.exit(getattr(err, "exit_code", EXIT_INTERRUPTED))
    from cnntrain.sweep import last_sweep_failures

    if last_sweep_failures():
        sys.exit(EXIT_FAILED_JOBS)
