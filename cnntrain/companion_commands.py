"""The companion commands' bodies: cnntrain-info, -predict, -export and -eval, each with its usage and options.

Each body is `(options, overrides) -> None` made a console script by companion_line.py's
`companion_command(Grammar(...))` (help, version, the arguments read, errors and Ctrl-C); the
console scripts are named in pyproject.toml as cnntrain.cli's, which imports them from here.
Torch is imported inside each body, after the arguments are read: a slip is answered at once.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cnntrain.companion_line import Grammar, companion_command
from cnntrain.errors import CnnTrainError
from cnntrain.run_folder import display_path

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

    # data=, device= and dotted keys (data.root=...) go to the run's config; eval_data.MAY_CHANGE says which may change.
    result = evaluate_run(
        Path(options["run"]),
        split=options["split"],
        checkpoint=options["checkpoint"],
        overrides=overrides,
        imports=options["imports"] or None,
        tta=options["tta"],
    )
    print_report(result, Console(highlight=False))
