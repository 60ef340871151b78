"""`cnntrain-eval`: a trained run's checkpoint measured on labelled data, and where it goes wrong.

`evaluate_run(run_dir, split, checkpoint, overrides)` builds what the run built, through
the same functions: the config from the checkpoint, the split from `build.build_data`
(data.val_fraction, seed and data.subset split it as they did), the batch transform
from the checkpoint's recorded preprocessing, the run's evaluation batch size, and
channels_last / precision / compile as `build.place_model` resolves them; the figures
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
`resuming.apply_override`, which names typos. The data's classes must be the run's
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

import csv
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnntrain.build import build_data, place_model, resolve_device, split_loader
from cnntrain.checkpoint import RunCheckpoint
from cnntrain.checks import check_config, resolve_tta, tta_line
from cnntrain.user_code import confirmed_imports
from cnntrain.config import group_file
from cnntrain.data import ImageData, ImageSet, PreparedData, load_image_data
from cnntrain.data.folder import READ_ERRORS, FileImageSet, decode
from cnntrain.data.loader import preprocess_transform
from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.registry import did_you_mean
from cnntrain.resuming import apply_override
from cnntrain.run_folder import EvalFolder, RunFolder, display_path, not_a_run_message, write_atomically
from cnntrain.speed_switches import tune_backend
from cnntrain.trainer import Evaluation, StepOptions, Trainer

SPLITS = ("test", "val", "train", "all")
CHECKPOINTS = ("best", "last")
# What an evaluation may change: the data (data=<name>, data.<key>=...) and where it runs (device=...).
MAY_CHANGE = ("data", "device")
# Data settings that change how the data is read, not which images it holds: left out of the
# decision whether the data is the run's own, and of the output folder's name.
LOADING_KEYS = ("batch_size", "eval_batch_size", "workers", "cache_limit_mb", "download")
GRID_IMAGES = 32  # misclassified examples shown in misclassified.png (the most confident mistakes)
CONSOLE_MATRIX_CLASSES = 30  # the confusion matrix is printed up to this many classes, when it fits


@dataclass
class EvalResult:
    """One evaluation: what was measured on what, and where the files went."""

    run: RunFolder
    folder: EvalFolder
    checkpoint: str  # best or last
    epoch: int  # the epoch the checkpoint holds
    model: str
    data: str  # the dataset's name
    source: str  # where its images came from ("from <folder>", ...)
    own_data: bool  # the run's own data (no data setting changed)
    split: str
    classes: list[str]  # the run's
    evaluation: Evaluation  # loss, acc, top5 and each example's prediction
    confusion: torch.Tensor  # (classes, classes): rows the actual class, columns the predicted one
    per_class: list[dict[str, Any]]
    misclassified: list[dict[str, Any]]  # most confident first
    notices: list[str] = field(default_factory=list)
    run_test: dict[str, Any] | None = None  # the run's summary.json test figures, when they are for this split
    tta: str | None = None  # the test-time augmentation measured with (None: none)
    run_tta: str | None = None  # the run's trainer.tta

    @property
    def size(self) -> int:
        return len(self.evaluation.labels)

    def figures(self) -> dict[str, Any]:
        """What eval.json holds."""
        evaluation = self.evaluation
        figures = {"run_dir": str(self.run.path), "checkpoint": self.checkpoint, "epoch": self.epoch,
                   "model": self.model, "data": self.data, "source": self.source, "own_data": self.own_data,
                   "split": self.split, "size": self.size, "loss": evaluation.loss, "acc": evaluation.acc}
        if evaluation.top5 is not None:
            figures["top5"] = evaluation.top5
        figures.update({"misclassified": len(self.misclassified), "classes": self.classes,
                        "per_class": self.per_class, "confusion_matrix": self.confusion.tolist(),
                        "notices": self.notices, "run_test": self.run_test, "tta": self.tta})
        return figures


def evaluate_run(run_dir: Path | str, split: str = "test", checkpoint: str = "best", overrides: list[str] = (),
                 imports: str | list[str] | None = None, tta: str = "run") -> EvalResult:
    """Evaluate checkpoints/<checkpoint>.pt of the run in `run_dir` on `split` (test, val, train or all) of
    its data, or of the data `overrides` (data=<name>, data.<key>=..., device=...) describe; writes the
    results into the run folder (eval/...) and returns them. `tta`: "run" (the run's trainer.tta),
    "none" or "hflip"."""
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}' (split=).{did_you_mean(split, SPLITS)} Available: "
                          f"{', '.join(SPLITS)} (all: every image of the data).")
    resolve_tta(tta, None)  # a typo is answered before the checkpoint is read
    folder = RunFolder(run_dir)
    state = read_checkpoint(folder, checkpoint)
    folder.refuse_links_out([folder.evaluations], LINK_FIX)  # before the work: eval/ is where it all goes
    cfg = run_config(state, folder, imports)
    run_tta = cfg.trainer.get("tta")
    used_tta = resolve_tta(tta, run_tta)
    run_data = OmegaConf.to_container(cfg.data, resolve=True)
    apply_data_overrides(cfg, list(overrides), state, folder)
    data_settings = OmegaConf.to_container(cfg.data, resolve=True)
    own_data = _without_loading_keys(data_settings) == _without_loading_keys(run_data)
    checked = check_config(cfg)
    device = resolve_device(cfg.device.type)
    tune_backend(device)
    torch.manual_seed(cfg.seed)  # as build_training does before it builds the data
    data = load_data(checked)
    notices = check_classes_and_channels(data, state, own_data, f"{cfg.data.name} ({data.source or 'its images'})")
    data = with_run_classes(data, state.classes)  # labels numbered as the run numbers its classes
    prepared = build_data(checked, data)  # split as the run split its data
    examples = split_examples(data, prepared, split)
    if not own_data and split in ("test", "val") and getattr(data, split) is None:
        notices.append(_hold_out_notice(data, prepared, split, len(examples)))

    placed = place_model(checked.trainer, state.build_model(), device)
    notices += placed.notices
    transform = dataclasses.replace(preprocess_transform(state.preprocess), channels_last=placed.channels_last)
    loader = split_loader(checked, examples, split, transform, device, limited=False)
    trainer = Trainer(placed.model, None, None, None, None, device, epochs=0,
                      options=StepOptions(autocast_dtype=placed.autocast_dtype), forward=placed.forward,
                      tta=used_tta)
    evaluation = trainer.evaluate(loader, keep_outputs=True)
    if evaluation.labels is None or len(evaluation.labels) != len(examples):
        raise CnnTrainError(f"Only {0 if evaluation.labels is None else len(evaluation.labels)} of the split's "
                            f"{len(examples)} images could be read (data.skip_bad_files=true skipped the others), "
                            f"so the results cannot be matched to the files. Remove the unreadable files and "
                            f"evaluate again.")

    classes = state.classes
    confusion = confusion_matrix(evaluation.labels, evaluation.predicted, len(classes))
    result = EvalResult(
        run=folder, folder=folder.evaluation(split, checkpoint, None if own_data else data_label(data_settings),
                                             tta=None if used_tta == run_tta else used_tta or "none"),
        checkpoint=checkpoint, epoch=state.epoch, model=cfg.model.name, data=prepared.spec.name,
        source=prepared.spec.source, own_data=own_data, split=split, classes=classes, evaluation=evaluation,
        confusion=confusion, per_class=per_class_metrics(confusion, classes),
        misclassified=misclassified_rows(evaluation, examples, classes), notices=notices, tta=used_tta,
        run_tta=run_tta)
    result.run_test = comparable_run_test(folder, result, checked)
    write_results(result, examples, state)
    return result


def read_checkpoint(folder: RunFolder, checkpoint: str) -> RunCheckpoint:
    """checkpoints/<checkpoint>.pt of a run folder, or a message saying what is wrong with the folder."""
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"Unknown checkpoint '{checkpoint}' (checkpoint=).{did_you_mean(checkpoint, CHECKPOINTS)} "
                          f"Use checkpoint=best (the best validation accuracy) or checkpoint=last (the last epoch).")
    if not folder.path.is_dir():
        raise CnnTrainError(f"run={folder.path} is not a folder. Give a run folder "
                            f"(outputs/<date>/<time>_<model>_<data>).")
    path = folder.checkpoint(checkpoint)
    if not path.is_file():
        saved = [which for which in CHECKPOINTS if folder.checkpoint(which).is_file()]
        if not folder.holds_run():
            raise CnnTrainError(not_a_run_message(folder.path, "cnntrain-eval run={}"))
        if not saved:
            raise CnnTrainError(f"{folder.path} is not a cnntrain run folder with a finished epoch: it has no "
                                f"checkpoints/best.pt or checkpoints/last.pt. Give the folder a run was trained in "
                                f"(outputs/<date>/<time>_<model>_<data>).")
        raise CnnTrainError(f"{folder.path} has no checkpoints/{checkpoint}.pt (it was deleted or lost); "
                            f"use checkpoint={saved[0]}.")
    return RunCheckpoint.read(path)


def run_config(state: RunCheckpoint, folder: RunFolder, imports) -> DictConfig:
    """The config the run trained with (from its checkpoint), made safe to build the data from: no callbacks
    or loggers, its `imports` only when the user names them too, no model.weights to load."""
    cfg = OmegaConf.create(state.config)
    cfg.callbacks = []
    cfg.logger = OmegaConf.create({"name": "csv"})  # nothing is logged; no tensorboard needed
    cfg.imports = confirmed_imports(cfg.get("imports"), imports, folder.path)
    if "weights" in cfg.model:  # the checkpoint holds the weights: starting weights are never loaded
        cfg.model.weights = None
    return cfg


def apply_data_overrides(cfg: DictConfig, overrides: list[str], state: RunCheckpoint, folder: RunFolder) -> None:
    """data=<name> (another dataset's file), data.<key>=... and device=... applied to the run's config."""
    for override in overrides:
        key = override.lstrip("+").partition("=")[0]
        section = key.split(".")[0]
        if section not in MAY_CHANGE:
            rest = key.partition(".")[2]
            hint = did_you_mean(section, MAY_CHANGE).replace("'?", f".{rest}'?" if rest else "'?")
            raise ConfigError(f"cnntrain-eval cannot apply {override}: it evaluates the run's checkpoint as it was "
                              f"trained, and takes only data=<name>, data.<key>=... and device=... overrides.{hint}")
    choices = [o for o in overrides if o.lstrip("+").partition("=")[0] == "data"]
    for override in choices[-1:]:  # the dataset first, as Hydra does: its settings then apply to it
        name = override.partition("=")[2]
        if name != cfg.data.name:
            group_file("data", name)  # an unknown name: a message with the choices there are
            run_data = cfg.data
            apply_override(cfg, f"data={name}", folder.path, may_change=MAY_CHANGE)
            switched_dataset_settings(cfg, run_data, state)
    for override in overrides:
        if override not in choices:
            apply_override(cfg, override, folder.path, may_change=MAY_CHANGE)


def switched_dataset_settings(cfg: DictConfig, run_data: DictConfig, state: RunCheckpoint) -> None:
    """Another dataset's file, set to read images as the run's model takes them: the run's batch sizes and,
    where the dataset has these settings, the model's channels and the size the run stored its images at."""
    cfg.data.batch_size = run_data.batch_size
    cfg.data.eval_batch_size = run_data.get("eval_batch_size")
    if "channels" in cfg.data:
        cfg.data.channels = state.in_channels
    if "image_size" in cfg.data:
        cfg.data.image_size = state.preprocess["stored_size"][0]


def _without_loading_keys(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key not in LOADING_KEYS}


def data_label(settings: dict) -> str:
    """A folder name for data other than the run's: its name, its root's folder name, a digest of its settings."""
    root = settings.get("root") or settings.get("path")
    digest = hashlib.sha1(json.dumps(_without_loading_keys(settings), sort_keys=True, default=str).encode())
    parts = [settings["name"], Path(str(root)).name if root else "", digest.hexdigest()[:8]]
    return "-".join(part for part in parts if part)


def load_data(checked) -> ImageData:
    """The dataset as its builder returns it (build_data then splits it as for a run)."""
    try:
        return load_image_data(checked.dataset.name, checked.dataset.settings)
    except OSError as err:
        raise CnnTrainError(f"Cannot load the data ({checked.cfg.data.name}): {err}. Check data.root and the "
                            f"files' permissions.") from err


def check_classes_and_channels(data: ImageData, state: RunCheckpoint, own_data: bool, where: str) -> list[str]:
    """The data must have the run's classes (by name) and the channels its model takes; notices otherwise."""
    classes, data_classes, channels = state.classes, list(data.classes), data.train.shape[1]
    extra = [name for name in data_classes if name not in classes]
    missing = [name for name in classes if name not in data_classes]
    if extra:
        raise CnnTrainError(
            f"The classes of {where} differ from the run's: the run's model does not know "
            f"{_names(extra)}" + (f", and the data has no {_names(missing)}" if missing else "") +
            f". The run was trained on {len(classes)} classes: {', '.join(classes)}. Evaluate it on data with "
            f"these classes (for data=image_folder: one folder per class, named as these).")
    notices = []
    if missing:
        notices.append(f"notice: {where} has no images of {_names(missing)} ({len(data_classes)} of the run's "
                       f"{len(classes)} classes); their recall is undefined.")
    elif data_classes != classes and not own_data:
        notices.append(f"notice: {where} lists the run's classes in another order; they are matched by name.")
    if channels != state.in_channels:
        raise CnnTrainError(f"{where} has {channels}-channel images, but the run's model takes "
                            f"{state.in_channels}-channel ones. Set data.channels={state.in_channels} "
                            f"(1: grey, 3: RGB) if the dataset has that setting.")
    return notices


def _names(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def split_examples(data: ImageData, prepared: PreparedData, split: str):
    """The images of `split`: a split of the prepared data, or all of the data's images for `all`."""
    if split != "all":
        return getattr(prepared, split)
    sets = [part for part in (data.train, data.val, data.test) if part is not None]
    if len(sets) == 1:
        return sets[0]
    if all(isinstance(part, FileImageSet) for part in sets):
        first = sets[0]
        return FileImageSet([path for part in sets for path in part.files], torch.cat([part.labels for part in sets]),
                            first.channels, first.size, first.skip_bad_files, first.workers)
    files = [path for part in sets for path in part.files] if all(part.files is not None for part in sets) else None
    return ImageSet(torch.cat([part.images for part in sets]), torch.cat([part.labels for part in sets]), files)


def with_run_classes(data: ImageData, run_classes: list[str]) -> ImageData:
    """`data` with the run's class list, its labels numbered as the run numbers its classes (the data may
    order them otherwise, or lack some). Sizes and order stay, so the splits are drawn as before."""
    if list(data.classes) == run_classes:
        return data
    mapping = torch.tensor([run_classes.index(name) for name in data.classes])

    def relabelled(part):
        if part is None:
            return None
        part = dataclasses.replace(part) if isinstance(part, ImageSet) else part.subset(torch.arange(len(part)))
        part.labels = mapping[part.labels]
        return part

    return dataclasses.replace(data, classes=list(run_classes), train=relabelled(data.train),
                               val=relabelled(data.val), test=relabelled(data.test))


def _hold_out_notice(data: ImageData, prepared: PreparedData, split: str, count: int) -> str:
    total = sum(len(part) for part in (data.train, data.val, data.test) if part is not None)
    what = ("the images of its val split" if data.val is not None else
            f"the images held out from it for validation ({prepared.spec.val_source.split(';')[0]})")
    return (f"notice: {prepared.spec.name} has no {split} split of its own, so split={split} is {count} of its "
            f"{total} images: {what}. split=all evaluates all of them.")


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, classes) counts: row = actual class, column = predicted class."""
    return torch.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def per_class_metrics(confusion: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows actual, columns
    predicted). None where undefined: precision of a class never predicted, recall of one with no example."""
    rows = []
    for i, name in enumerate(classes):
        hits, support, predicted = int(confusion[i, i]), int(confusion[i].sum()), int(confusion[:, i].sum())
        precision = hits / predicted if predicted else None
        recall = hits / support if support else None
        f1 = (2 * precision * recall / (precision + recall) if precision + recall else 0.0) \
            if precision is not None and recall is not None else None
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def misclassified_rows(evaluation: Evaluation, examples, classes: list[str]) -> list[dict[str, Any]]:
    """Each wrongly classified example: its file (image folders) or index in the split, the true and predicted
    class, the probability of the prediction and of the true class; the most confident mistakes first."""
    files = getattr(examples, "files", None)
    wrong = (evaluation.predicted != evaluation.labels).nonzero().flatten().tolist()
    rows = []
    for i in wrong:
        actual, predicted = int(evaluation.labels[i]), int(evaluation.predicted[i])
        rows.append({"index": i, "file": str(files[i]) if files is not None else None,
                     "true": classes[actual], "predicted": classes[predicted],
                     "probability": float(evaluation.probabilities[i, predicted]),
                     "true_probability": float(evaluation.probabilities[i, actual])})
    return sorted(rows, key=lambda row: -row["probability"])


def comparable_run_test(folder: RunFolder, result: EvalResult, checked) -> dict[str, Any] | None:
    """The run's own test figures (summary.json), when they measure what this evaluation measured."""
    summary = folder.read_summary()
    if not (result.own_data and result.split == "test" and result.tta == result.run_tta
            and summary.get("status") == "completed"
            and summary.get("tested_checkpoint") == f"{result.checkpoint}.pt"):
        return None
    if "limit_test_batches" in checked.limits:
        result.notices.append("notice: the run's test figures in summary.json cover only part of the test split "
                              "(trainer.limit_test_batches); this evaluation covers all of it.")
        return None
    return {key: summary[key] for key in ("test_loss", "test_acc", "test_top5") if key in summary}


# --- the files --------------------------------------------------------------------------------

LINK_FIX = "Replace the link with a folder, or evaluate a copy of the run folder."


def write_results(result: EvalResult, examples, state: RunCheckpoint) -> None:
    """eval.json, per_class.csv, confusion_matrix.csv/.png, misclassified.csv/.png into the result's folder."""
    folder = result.folder
    result.run.refuse_links_out(folder.files(), LINK_FIX)
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        write_atomically(folder.eval_json, lambda f: f.write(json.dumps(result.figures(), indent=2, default=str)
                                                             + "\n"), binary=False)
        _write_csv(folder.per_class_csv, ["class", "precision", "recall", "f1", "support"],
                   [[row["class"], _cell(row["precision"]), _cell(row["recall"]), _cell(row["f1"]), row["support"]]
                    for row in result.per_class])
        _write_csv(folder.confusion_csv, ["actual/predicted", *result.classes],
                   [[name, *counts] for name, counts in zip(result.classes, result.confusion.tolist())])
        named = getattr(examples, "files", None) is not None
        _write_csv(folder.misclassified_csv, ["file" if named else "index", "true", "predicted", "probability",
                                              "true_probability"],
                   [[row["file"] if named else row["index"], row["true"], row["predicted"],
                     f"{row['probability']:.6f}", f"{row['true_probability']:.6f}"] for row in result.misclassified])
        plot_confusion(result)
        plot_misclassified(result, examples, state)
    except OSError as err:
        raise CnnTrainError(f"Cannot write the evaluation into {folder.path}: {err.strerror or err}. "
                            f"Give the run folder space or write permission.") from err


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    write_atomically(path, write, binary=False)


def plot_confusion(result: EvalResult) -> None:
    """confusion_matrix.png: counts coloured by the share of their row (the actual class), class names on
    the axes, the counts written in the cells up to 30 classes."""
    from cnntrain.plots import new_figure, save_figure

    confusion, classes = result.confusion, result.classes
    count = len(classes)
    side = min(4 + 0.45 * count, 40)
    figure = new_figure(side + 1.5, side, layout="constrained")
    axes = figure.subplots()
    shares = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    image = axes.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the actual class")
    font = 9 if count <= 15 else 7 if count <= 40 else 5
    axes.set_xticks(range(count), classes, rotation=90 if count > 8 else 45, ha="right" if count <= 8 else "center",
                    fontsize=font)
    axes.set_yticks(range(count), classes, fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    if count <= 30:
        for actual in range(count):
            for predicted in range(count):
                value = int(confusion[actual, predicted])
                if value:
                    axes.text(predicted, actual, str(value), ha="center", va="center", fontsize=font,
                              color="white" if shares[actual, predicted] > 0.5 else "black")
    axes.set_title(f"{result.model} on {result.data} {result.split} ({result.checkpoint}.pt): "
                   f"accuracy {result.evaluation.acc:.4f}", fontsize=10)
    save_figure(figure, result.folder.confusion_png)


def plot_misclassified(result: EvalResult, examples, state: RunCheckpoint) -> None:
    """misclassified.png: the most confident mistakes (up to GRID_IMAGES), captioned "pred X / actual Y";
    none when nothing was misclassified (an older one is removed)."""
    from cnntrain.plots import save_figure
    from cnntrain.tensorboard_logger import labelled_grid

    shown = result.misclassified[:GRID_IMAGES]
    if not shown:
        result.folder.misclassified_png.unlink(missing_ok=True)
        return
    images = torch.stack([_stored_image(examples, row["index"], state) for row in shown]).float().div(255)
    index = {name: i for i, name in enumerate(result.classes)}
    figure = labelled_grid(images, [index[row["predicted"]] for row in shown], [index[row["true"]] for row in shown],
                           result.classes)
    save_figure(figure, result.folder.misclassified_png)


def _stored_image(examples, i: int, state: RunCheckpoint) -> torch.Tensor:
    """Example `i` as the data stored it (uint8 C, H, W)."""
    if isinstance(examples, FileImageSet):
        try:
            return torch.from_numpy(decode(examples.files[i], examples.channels, examples.size))
        except READ_ERRORS:
            return torch.zeros(examples.shape[1:], dtype=torch.uint8)
    return examples.images[i]


# --- the console ------------------------------------------------------------------------------

def print_report(result: EvalResult, console: Console) -> None:
    """What cnntrain-eval prints: what was evaluated, the figures, per class, the confusion matrix, the files."""
    evaluation = result.evaluation

    def say(text: str, style: str | None = None) -> None:
        console.print(text, style=style, markup=False, soft_wrap=True)

    say(f"cnntrain-eval: {display_path(result.run.path)} ({result.model}, checkpoints/{result.checkpoint}.pt, "
        f"epoch {result.epoch}) on {'all images' if result.split == 'all' else f'the {result.split} split'} of "
        f"{result.data}"
        f"{' ' + result.source if result.source and not result.own_data else ''} ({result.size:,} images)")
    augmentation = tta_line(result.tta, result.run_tta)
    if augmentation:
        say(augmentation)
    for notice in result.notices:
        say(notice, style="yellow")
    top5 = f"  top-5 {evaluation.top5:.4f}" if evaluation.top5 is not None else ""
    say(f"loss {evaluation.loss:.4f}  accuracy {evaluation.acc:.4f}{top5}  "
        f"({result.size - len(result.misclassified):,} of {result.size:,} right)")
    if result.run_test:
        run_top5 = f" top-5 {result.run_test['test_top5']:.4f}" if "test_top5" in result.run_test else ""
        say(f"the run's summary.json (same split and checkpoint): test loss {result.run_test['test_loss']:.4f} "
            f"accuracy {result.run_test['test_acc']:.4f}{run_top5}")
    console.print(per_class_table(result))
    matrix = confusion_table(result)
    if len(result.classes) <= CONSOLE_MATRIX_CLASSES and console.measure(matrix).maximum <= console.width:
        say("confusion matrix (rows: the actual class; columns: the predicted class, numbered as the rows):")
        console.print(matrix)
    else:
        say(f"confusion matrix: {len(result.classes)} classes, too wide to print here: see confusion_matrix.csv "
            f"and confusion_matrix.png")
    folder = result.folder
    written = [folder.eval_json, folder.per_class_csv, folder.confusion_csv, folder.confusion_png,
               folder.misclassified_csv] + ([folder.misclassified_png] if result.misclassified else [])
    say(f"misclassified: {len(result.misclassified):,} (misclassified.csv, most confident first)")
    say(f"written to {display_path(folder.path)}: {', '.join(path.name for path in written)}")


def per_class_table(result: EvalResult) -> Table:
    table = Table(title="per class", header_style="bold")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result.per_class:
        table.add_row(escape(row["class"]), *(_shown(row[key]) for key in ("precision", "recall", "f1")),
                      str(row["support"]))
    return table


def confusion_table(result: EvalResult) -> Table:
    """Rows: the actual class (numbered); columns: the predicted one, by the same numbers (names would not fit)."""
    table = Table(header_style="bold")
    table.add_column("actual", no_wrap=True)
    for j in range(len(result.classes)):
        table.add_column(str(j), justify="right")
    for i, (name, counts) in enumerate(zip(result.classes, result.confusion.tolist())):
        cells = [f"[bold]{count}[/]" if j == i else str(count) if count else "[dim]0[/]"
                 for j, count in enumerate(counts)]
        table.add_row(f"{i} {escape(name)}", *cells)
    return table


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
