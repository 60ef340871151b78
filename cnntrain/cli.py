"""Command-line entry points: `cnntrain` and `python -m cnntrain`, and the companion commands
cnntrain-info, -predict, -export and -eval (their arguments, help and errors: companion_line.py).

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

from cnntrain import __version__
from cnntrain.command_line import always_sweeps, override_problem, read_command_line
from cnntrain.companion_line import EXIT_INTERRUPTED, EXIT_USAGE, Grammar, companion_command, print_error
from cnntrain.config import check_group_choices, config_dir, unknown_component_name
from cnntrain.distributed import launched_by_torchrun, process_rank
from cnntrain.errors import CnnTrainError
from cnntrain.key_checks import check_override_keys
from cnntrain.override_text import expand_home, quote_for_hydra
from cnntrain.process import keep_console_optional
from cnntrain.run_folder import display_path, run_folder_problem

EXIT_FAILED_JOBS = 1  # a sweep finished but some of its jobs failed


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


INFO_USAGE = """usage: cnntrain-info [overrides]   e.g. cnntrain-info model=alexnet data=fashion_mnist
Prints each layer's name, type, output shape, parameters and multiply-adds for one image,
then totals and the activation memory of one batch (data.batch_size)."""


@companion_command(Grammar("cnntrain-info", INFO_USAGE))
def info_main(_: dict, overrides: list[str]) -> None:
    """`cnntrain-info [overrides]`: each layer's output shape and size for a config; no training."""
    from cnntrain.build import inspect_model
    from cnntrain.config import compose
    from cnntrain.inspector import render_table

    cfg = compose(overrides)
    rows, totals, size = inspect_model(cfg)
    title = f"{cfg.model.name}: {totals.input_shape[0]}x{size}x{size} input from {cfg.data.name}"
    Console(highlight=False).print(render_table(rows, totals, title=title))


PREDICT_USAGE = """usage: cnntrain-predict run=<run folder or model.onnx> inputs=<image or folder> [topk=3]
                        [checkpoint=best|last] [output=<csv file>] [imports=[my_models]] [tta=run|none|hflip]
       cnntrain-predict <run folder> <image or folder> [...]
Classifies images with the run's checkpoint, prints a table (more images than a screen holds: images per
predicted class and the least confident) and writes every prediction to predictions-<inputs' name>.csv in
the run folder, or predictions-<name>-2.csv, -3, ... when that exists: earlier predictions are kept.
output=<csv file> writes there instead (replacing a predictions CSV written before, nothing else).
A run of your own model needs the modules it was trained with named again (imports=...): modules named
in a run folder are never imported. run= may also be an .onnx file written by cnntrain-export (with its
.onnx.json beside it; needs onnxruntime): then predictions go to <file stem>.predictions-<name>.csv beside it.
tta=: the test-time augmentation, by default the run's trainer.tta (as its test measured);
none: one pass per image; hflip: the mean of each image's and its mirror's probabilities."""
# key -> default; None: required. imports "": not given.
PREDICT_OPTIONS = {
    "run": None,
    "inputs": None,
    "topk": "3",
    "checkpoint": "best",
    "output": "",
    "imports": "",
    "tta": "run",
}


@companion_command(Grammar("cnntrain-predict", PREDICT_USAGE, PREDICT_OPTIONS, positional=("run", "inputs")))
def predict_main(options: dict[str, str], _: list[str]) -> None:
    """`cnntrain-predict run=... inputs=...`: classify new images with a trained run."""
    # torch is imported after the arguments are read: a slip in them is answered at once
    from cnntrain.evaluator import resolve_tta, tta_line
    from cnntrain.predict import (
        SCREENFUL,
        check_output,
        load_predictor,
        predictions_path,
        predictions_summary,
        predictions_table,
        write_predictions,
    )

    if not (options["topk"].isascii() and options["topk"].isdigit()) or int(options["topk"]) < 1:
        raise CnnTrainError(f"topk must be a positive whole number, got '{options['topk']}'.")
    # predictions_path refuses a run= that is no run folder or .onnx file
    default_output = predictions_path(Path(options["run"]), Path(options["inputs"]))
    output = Path(options["output"]) if options["output"] else default_output
    check_output(output)  # before the work, so that a refusal costs nothing
    resolve_tta(options["tta"], None)  # a typo is answered before the model is loaded
    predictor = load_predictor(Path(options["run"]), options["checkpoint"], options["imports"] or None)
    predictions = predictor.predict(Path(options["inputs"]), topk=int(options["topk"]), tta=options["tta"])
    replaced = " (replacing the earlier predictions there)" if output.exists() else ""  # output= names it
    # first: the file is kept whatever happens to the console; a full or read-only file system is a
    # CnnTrainError offering output=
    write_predictions(predictions, output)
    console = Console(highlight=False)
    augmentation = tta_line(resolve_tta(options["tta"], predictor.run_tta), predictor.run_tta)
    if augmentation:
        console.print(augmentation, markup=False, soft_wrap=True)
    screenful = max(console.height - 10, 20) if console.is_terminal else SCREENFUL
    if len(predictions) <= screenful:
        console.print(predictions_table(predictions, options["inputs"], console.width))
    else:  # thousands of rows scroll past unread: the CSV holds them
        for table in predictions_summary(predictions, options["inputs"]):
            console.print(table)
    console.print(
        f"all {len(predictions)} predictions written to {display_path(output)}{replaced}", markup=False, soft_wrap=True
    )


EXPORT_USAGE = """usage: cnntrain-export run=<run folder> format=onnx|torchscript|exported_program
                       [checkpoint=best|last] [output=<file>] [imports=[my_models]]
       cnntrain-export <run folder> format=... [...]
Writes the run's model (default: <run folder>/export/model.onnx, model.torchscript.pt or
model.pt2) taking a normalised float batch of any size, and <file>.json beside it (classes,
preprocessing, where it came from), after checking the file against PyTorch on the run's
validation images: it fails when a logit differs by more than 1e-4. format=onnx needs
pip install 'cnntrain[onnx]'; cnntrain-predict run=<file.onnx> predicts with it."""
EXPORT_OPTIONS = {"run": None, "format": None, "checkpoint": "best", "output": "", "imports": ""}


@companion_command(Grammar("cnntrain-export", EXPORT_USAGE, EXPORT_OPTIONS))
def export_main(options: dict[str, str], _: list[str]) -> None:
    """`cnntrain-export run=... format=...`: a trained run's model as an ONNX, TorchScript or torch.export file."""
    from cnntrain.export import export_run  # torch: after the arguments are read

    console = Console(highlight=False)
    result = export_run(
        options["run"],
        options["format"],
        checkpoint=options["checkpoint"],
        output=options["output"] or None,
        imports=options["imports"] or None,
        say=lambda line: console.print(line, markup=False, soft_wrap=True),
    )
    console.print(result.verification.summary(), markup=False, soft_wrap=True)
    size = f"{result.path.stat().st_size / 2**20:.1f} MiB" + (", replacing the earlier one" if result.replaced else "")
    console.print(
        f"written to {display_path(result.path)} ({size}) and {display_path(result.info_path)} in "
        f"{result.seconds:.1f} s",
        markup=False,
        soft_wrap=True,
    )


EVAL_USAGE = """usage: cnntrain-eval run=<run folder> [split=test|val|train|all] [checkpoint=best|last] [imports=[my_models]]
                     [tta=run|none|hflip] [data=<name>] [data.<key>=<value> ...] [device=auto|cpu|cuda|mps]
       cnntrain-eval <run folder> [...]
Measures the run's checkpoint on a split of its data, built as the run built it (the run's own
test split gives the test figures of its summary.json), or on other labelled data with the run's
classes (data=image_folder data.root=<folder>; split=all: every image of it). Prints loss, accuracy,
top-5 (more than 5 classes), precision/recall/F1 per class and the confusion matrix, and writes them
with the misclassified examples to <run folder>/eval/<split>_<checkpoint>/ (other data:
eval/<data>-<root folder>-<digest>_<split>_<checkpoint>/). tta=: the test-time augmentation, by
default the run's trainer.tta; another one (none, hflip) writes to a folder ending in _tta-<it>."""  # noqa: E501 (the usage as printed)
EVAL_OPTIONS = {"run": None, "split": "test", "checkpoint": "best", "imports": "", "tta": "run"}
EVAL_OVERRIDES = ("data", "device")  # key=value arguments of these sections go to the run's config


@companion_command(Grammar("cnntrain-eval", EVAL_USAGE, EVAL_OPTIONS, sections=EVAL_OVERRIDES))
def eval_main(options: dict[str, str], overrides: list[str]) -> None:
    """`cnntrain-eval run=... [split=...] [data overrides]`: evaluate a trained run on labelled data."""
    from cnntrain.evaluation import evaluate_run, print_report  # torch: after the arguments are read

    # data=, device= and dotted keys (data.root=...) go to the run's config; evaluation.py says which may change.
    result = evaluate_run(
        Path(options["run"]),
        split=options["split"],
        checkpoint=options["checkpoint"],
        overrides=overrides,
        imports=options["imports"] or None,
        tta=options["tta"],
    )
    print_report(result, Console(highlight=False))


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
    from cnntrain.sweep import last_sweep_failures

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
