"""`cnntrain-eval`: a trained run's checkpoint measured on labelled data, and where it goes wrong.

`evaluate_run(run_dir, split, checkpoint, overrides)` builds what the run built, through
the same functions: the config from the checkpoint, the split from `build.build_data`
(data.val_fraction, seed and data.subset split it as they did), the batch transform
from the checkpoint's recorded preprocessing, the run's evaluation batch size, and
channels_last / precision / compile as `model_setup.place_model` resolves them; the figures
come from `Trainer.evaluate`, the code that measured the run's validation and test
splits. So the run's own test split with the checkpoint it tested gives exactly the
test_loss and test_acc of its summary.json. The weights are the checkpoint's
(`RunCheckpoint.build_model`: with trainer.ema, the averaged ones, as the run's test measured);
model.weights (pretrained starting weights) is never loaded. The run's trainer.tta applies, unless
`tta=none` or `tta=hflip` says otherwise (results then go to a folder of their own, see below).

Other data: `data.<key>=...` changes a setting of the run's dataset (data.root for the
same dataset somewhere else); `data=<name>` takes another dataset's config file, with
the run's batch sizes and, where the dataset has these settings, the model's channels
and the size the run's images were stored at. Overrides go through
`opened_run.apply_override`, which names typos. The data's classes must be the run's
(matched by name: another order, or some of them missing, is fine; a class the run
does not know is an error naming it). `split=all` evaluates every image of the data
(a folder of new labelled images has no test split of its own).

What is written, in `RunFolder.evaluation(...)`: eval/<split>_<checkpoint>/ on the run's
own data, eval/<data>_<split>_<checkpoint>/ on other data, where <data> is the dataset's
name, the folder name of its data.root and a digest of its settings (so results on
different data do not overwrite each other): eval.json (every figure), per_class.csv,
confusion_matrix.csv/.png, misclassified.csv/.png (see run_folder.EvalFolder). With a test-time
augmentation other than the run's, the folder name ends in _tta-<none|hflip>.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from cnntrain.build import build_data, place_model, resolve_device, split_loader
from cnntrain.checks import check_config
from cnntrain.data.loader import preprocess_transform
from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.eval_data import (
    apply_data_overrides,
    check_classes_and_channels,
    data_label,
    hold_out_notice,
    load_data,
    split_examples,
    with_run_classes,
    without_loading_keys,
)
from cnntrain.eval_files import LINK_FIX, write_results
from cnntrain.eval_report import print_report
from cnntrain.eval_result import EvalResult, confusion_matrix, misclassified_rows, per_class_metrics
from cnntrain.evaluator import resolve_tta
from cnntrain.loggers.mlflow_store import log_evaluation
from cnntrain.opened_run import RunArgument, open_run
from cnntrain.registry import did_you_mean
from cnntrain.run_folder import RunFolder
from cnntrain.speed_switches import tune_backend
from cnntrain.trainer import StepOptions, Trainer

# Importable from here as before the split: the command line prints with it, tests use the figures.
__all__ = [
    "SPLITS",
    "EvalResult",
    "evaluate_run",
    "print_report",
    "confusion_matrix",
    "per_class_metrics",
    "misclassified_rows",
]

SPLITS = ("test", "val", "train", "all")
# How cnntrain-eval names the run, for open_run's messages.
EVAL_RUN = RunArgument(key="run=", use="cnntrain-eval run={}")


def evaluate_run(
    run_dir: Path | str,
    split: str = "test",
    checkpoint: str = "best",
    overrides: list[str] = (),
    imports: str | list[str] | None = None,
    tta: str = "run",
) -> EvalResult:
    """Evaluate checkpoints/<checkpoint>.pt of the run in `run_dir` on `split` (test, val, train or all) of
    its data, or of the data `overrides` (data=<name>, data.<key>=..., device=...) describe; writes the
    results into the run folder (eval/...) and returns them. `tta`: "run" (the run's trainer.tta),
    "none" or "hflip"."""
    if split not in SPLITS:
        raise ConfigError(
            f"Unknown split '{split}' (split=).{did_you_mean(split, SPLITS)} Available: "
            f"{', '.join(SPLITS)} (all: every image of the data)."
        )
    resolve_tta(tta, None)  # a typo is answered before the checkpoint is read
    opened = open_run(run_dir, checkpoint, imports, EVAL_RUN, import_modules=False)  # check_config imports them
    folder, state = opened.folder, opened.checkpoint
    folder.refuse_links_out([folder.evaluations], LINK_FIX)  # before the work: eval/ is where it all goes
    # Nothing is logged, and the checkpoint holds the weights: starting weights are never loaded.
    cfg = opened.config(keep_loggers=False, keep_weights=False)
    run_tta = cfg.trainer.get("tta")
    used_tta = resolve_tta(tta, run_tta)
    run_data = OmegaConf.to_container(cfg.data, resolve=True)
    apply_data_overrides(cfg, list(overrides), state, folder)
    data_settings = OmegaConf.to_container(cfg.data, resolve=True)
    own_data = without_loading_keys(data_settings) == without_loading_keys(run_data)
    checked = check_config(cfg)
    device = resolve_device(cfg.device.type)
    tune_backend(device, checked.trainer.deterministic)  # the run's: its evaluations agree to the bit too
    torch.manual_seed(cfg.seed)  # as build_training does before it builds the data
    data = load_data(checked)
    notices = check_classes_and_channels(data, state, own_data, f"{cfg.data.name} ({data.source or 'its images'})")
    data = with_run_classes(data, state.classes)  # labels numbered as the run numbers its classes
    prepared = build_data(checked, data)  # split as the run split its data
    examples = split_examples(data, prepared, split)
    if not own_data and split in ("test", "val") and getattr(data, split) is None:
        notices.append(hold_out_notice(data, prepared, split, len(examples)))

    placed = place_model(checked.trainer, state.build_model(), device)
    notices += placed.notices
    transform = dataclasses.replace(preprocess_transform(state.preprocess), channels_last=placed.channels_last)
    loader = split_loader(checked, examples, split, transform, device, limited=False)
    trainer = Trainer(
        placed.model,
        None,
        None,
        None,
        None,
        device,
        epochs=0,
        options=StepOptions(autocast_dtype=placed.autocast_dtype),
        forward=placed.forward,
        tta=used_tta,
    )
    evaluation = trainer.evaluate(loader, keep_outputs=True)
    if evaluation.labels is None or len(evaluation.labels) != len(examples):
        raise CnnTrainError(
            f"Only {0 if evaluation.labels is None else len(evaluation.labels)} of the split's "
            f"{len(examples)} images could be read (data.skip_bad_files=true skipped the others), "
            f"so the results cannot be matched to the files. Remove the unreadable files and "
            f"evaluate again."
        )

    classes = state.classes
    confusion = confusion_matrix(evaluation.labels, evaluation.predicted, len(classes))
    result = EvalResult(
        run=folder,
        folder=folder.evaluation(
            split,
            checkpoint,
            None if own_data else data_label(data_settings),
            tta=None if used_tta == run_tta else used_tta or "none",
        ),
        checkpoint=checkpoint,
        epoch=state.epoch,
        model=cfg.model.name,
        data=prepared.spec.name,
        source=prepared.spec.source,
        own_data=own_data,
        split=split,
        classes=classes,
        evaluation=evaluation,
        confusion=confusion,
        per_class=per_class_metrics(confusion, classes),
        misclassified=misclassified_rows(evaluation, examples, classes),
        notices=notices,
        tta=used_tta,
        run_tta=run_tta,
    )
    result.run_test = comparable_run_test(folder, result, checked)
    write_results(result, examples, state)
    result.notices += log_evaluation(folder, result.folder.path)  # the run's MLflow run gets them too (if any)
    return result


def comparable_run_test(folder: RunFolder, result: EvalResult, checked) -> dict[str, Any] | None:
    """The run's own test figures (summary.json), when they measure what this evaluation measured."""
    summary = folder.read_summary()
    if not (
        result.own_data
        and result.split == "test"
        and result.tta == result.run_tta
        and summary.get("status") == "completed"
        and summary.get("tested_checkpoint") == f"{result.checkpoint}.pt"
    ):
        return None
    if "limit_test_batches" in checked.limits:
        result.notices.append(
            "notice: the run's test figures in summary.json cover only part of the test split "
            "(trainer.limit_test_batches); this evaluation covers all of it."
        )
        return None
    keys = ("test_loss", "test_acc", "test_top5", "test_balanced_acc", "test_macro_f1")
    return {key: summary[key] for key in keys if key in summary}
