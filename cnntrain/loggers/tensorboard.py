"""`logger=tensorboard` (configs/logger/tensorboard.yaml): a logger that writes TensorBoard event files.

What it records, in `<run folder>/tensorboard/` (see it with `tensorboard --logdir outputs`), its tags in one
style, `<split>/<what>` (split: train, val, test):
- scalars every epoch: train/loss, train/acc, train/lr (the learning rate of the epoch's first step),
  val/loss, val/acc, val/top5 (for data with more than 5 classes), train/stage (two-stage fine-tuning);
- at the end, at the last epoch's step: test/loss, test/acc, test/top5 (best.pt on the test split) and
  val/best_acc; the HPARAMS tab gets the run's settings and those figures (tensorboard_hparams.py), so
  `tensorboard --logdir <sweep folder>` compares a sweep's jobs;
- at the start: train/augmented_batch, a grid of training images as the model sees them (after resize
  and augmentation, normalisation undone), and the model graph;
- every epoch: val/misclassified, up to `images` misclassified validation images, each titled
  "pred X / actual Y" with class names, and val/misclassified_shown, how many;
- every `histogram_every` epochs: weights/<parameter> and gradients/<parameter> histograms.
Event files written before these names (loss/train, accuracy/val, lr, ...) keep theirs.

torch.utils.tensorboard needs the `tensorboard` package, an optional dependency:
`check_tensorboard()` turns its absence into a message saying how to install it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cnntrain.errors import ConfigError
from cnntrain.loggers.catalog import LOGGERS, require_logger_package
from cnntrain.loggers.tensorboard_hparams import write_hparams
from cnntrain.loggers.tracking import last_epoch
from cnntrain.registry import is_whole
from cnntrain.run_folder import RunFolder
from cnntrain.trainer import Callback, EpochMetrics, Trainer


def check_tensorboard() -> None:
    """Raise a ConfigError that says how to install tensorboard when it is missing."""
    require_logger_package("tensorboard", "tensorboard", "torch.utils.tensorboard")


class Denormalize:
    """Undoes the batch transform's normalisation, so images show as they were ([0, 1] values)."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        self.mean = list(mean) if mean else None
        self.std = list(std) if std else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach().float().cpu().contiguous()
        if self.mean is not None:
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.std).view(1, -1, 1, 1)
            images = images * std + mean
        return images.clamp(0, 1)


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Callback):
    """Writes scalars, images, histograms and the graph of one run to `<run_folder>/tensorboard/`.

    The trainer gives it the model and both loaders; what it cannot know from the
    trainer comes in here: the class names (for the "pred / actual" titles), the
    normalisation to undo before showing images, and `notify`, which prints a line
    to the user (used when the graph cannot be traced). Its settings (logger.tensorboard.*):
    histogram_every, images, graph.
    """

    def __init__(
        self,
        run_folder: Path,
        classes: Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        histogram_every: int = 1,
        images: int = 32,
        graph: bool = True,
        notify: Callable[[str], None] = print,
    ):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(RunFolder(run_folder).tensorboard))
        self.classes = list(classes)
        self.denormalize = Denormalize(mean, std)
        self.histogram_every = histogram_every
        self.images = images
        self.graph = graph
        self.notify = notify

    @staticmethod
    def check_settings(histogram_every: int = 1, images: int = 32, graph: bool = True) -> None:
        """Bad numbers and a missing tensorboard package, answered before any data is loaded."""
        for key, value in (("histogram_every", histogram_every), ("images", images)):
            if not is_whole(value) or value < 0:
                raise ConfigError(
                    f"logger.tensorboard.{key} must be a whole number >= 0 (0 turns it off), got {value!r}."
                )
        check_tensorboard()

    # --- hooks --------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        if not (self.images or self.graph):
            return
        images, _ = first_batch(trainer.train_loader)
        if self.images:
            from torchvision.utils import make_grid

            grid = make_grid(self.denormalize(images[: self.images]), nrow=8, padding=2, pad_value=1.0)
            self.writer.add_image("train/augmented_batch", grid, global_step=0)
        if self.graph:
            self._add_graph(trainer.model, images[:2])
        self.writer.flush()

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        step = metrics.epoch
        for tag, value in (
            ("train/loss", metrics.train_loss),
            ("train/acc", metrics.train_acc),
            ("train/lr", metrics.lr),
            ("val/loss", metrics.val_loss),
            ("val/acc", metrics.val_acc),
            ("val/top5", metrics.val_top5),
            ("val/balanced_acc", metrics.val_balanced_acc),
            ("val/macro_f1", metrics.val_macro_f1),
            ("train/stage", metrics.stage),
        ):
            if value is not None:  # top-5: only for data with more than 5 classes; stage: two-stage runs
                self.writer.add_scalar(tag, value, global_step=step)
        if self.histogram_every and step % self.histogram_every == 0:
            self._add_histograms(trainer.model, step)
        if self.images:
            self._add_misclassified(trainer.model, trainer.val_loader, step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.flush()  # the test and the HPARAMS tab's session come after

    def on_test_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        step = last_epoch(trainer)
        for name, value in metrics.items():  # test_loss -> test/loss, test_acc -> test/acc, test_top5 -> test/top5
            self.writer.add_scalar(name.replace("_", "/", 1), value, global_step=step)
        self.writer.flush()

    def on_run_end(self, trainer: Trainer, summary: dict) -> None:
        write_hparams(self.writer, trainer.config, summary, last_epoch(trainer))
        self.writer.close()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self.writer.close()  # what the last epochs wrote is on disk for a run that failed or was stopped

    # --- pieces -------------------------------------------------------------------------------

    def _add_graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model graph, traced once in eval mode (a train-mode trace would update BatchNorm statistics)."""
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings are about the trace, not the user's run
                self.writer.add_graph(model, example)
        except Exception as err:  # any model torch.jit.trace cannot follow: a notice, not a failed run
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            self.notify(f"tensorboard: no model graph (tracing failed: {first_line[:200]})")
        finally:
            model.train(was_training)

    def _add_histograms(self, model: torch.nn.Module, step: int) -> None:
        """Weights and their last gradients (the gradients of the epoch's final step)."""
        for name, param in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), global_step=step)
            if param.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", param.grad.detach().float().cpu(), global_step=step)

    @torch.inference_mode()
    def _add_misclassified(self, model: torch.nn.Module, val_loader, step: int) -> None:
        """Up to `self.images` wrongly predicted validation images, titled with both class names."""
        was_training = model.training
        model.eval()
        wrong_images, predicted, actual = [], [], []
        found = 0
        for images, labels in val_loader:  # usually the first batch already holds enough
            prediction = model(images).argmax(dim=1)
            wrong = (prediction != labels).nonzero().flatten()[: self.images - found]
            wrong_images.append(images[wrong])
            predicted += prediction[wrong].tolist()
            actual += labels[wrong].tolist()
            found += len(wrong)
            if found >= self.images:
                break
        model.train(was_training)
        if found:
            figure = labelled_grid(self.denormalize(torch.cat(wrong_images)), predicted, actual, self.classes)
            from cnntrain.plots import figure_to_array

            self.writer.add_image("val/misclassified", figure_to_array(figure), global_step=step, dataformats="HWC")
        self.writer.add_scalar("val/misclassified_shown", found, global_step=step)


def first_batch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch, drawn without disturbing the training's random streams.

    A DataLoader draws its workers' seed from the global torch generator; fork_rng
    puts the generator back, so turning TensorBoard on does not change the run.
    """
    with torch.random.fork_rng(devices=[]):
        return next(iter(loader))


def labelled_grid(images: torch.Tensor, predicted: Sequence[int], actual: Sequence[int], classes: Sequence[str]):
    """A matplotlib figure: the images in a grid, each under the caption "pred X / actual Y".

    One axes holding every image (each drawn into its own cell) and a text per image:
    a subplot per image would cost ~1 s per epoch for 32 images, this ~0.1 s.
    """
    from cnntrain.plots import new_figure

    count = len(images)
    columns = min(8, count)
    rows = math.ceil(count / columns)
    cell_w, cell_h, caption = 1.6, 1.8, 0.38  # inches: each cell is a caption above a square image
    figure = new_figure(cell_w * columns, cell_h * rows)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, cell_w * columns)
    axes.set_ylim(cell_h * rows, 0)  # y down, like the grid's rows
    axes.axis("off")
    side = min(cell_w, cell_h - caption) - 0.12
    for i in range(count):
        left, top = (i % columns) * cell_w, (i // columns) * cell_h
        x0, y0 = left + (cell_w - side) / 2, top + caption
        image = images[i].permute(1, 2, 0).numpy()
        gray = image.shape[2] == 1
        axes.imshow(
            image[:, :, 0] if gray else image,
            cmap="gray" if gray else None,
            vmin=0,
            vmax=1,
            extent=(x0, x0 + side, y0 + side, y0),
            interpolation="nearest",
        )
        axes.text(
            left + cell_w / 2,
            top + caption / 2,
            f"pred {class_name(classes, predicted[i])} /\nactual {class_name(classes, actual[i])}",
            ha="center",
            va="center",
            fontsize=7,
            color="tab:red",
        )
    return figure


def class_name(classes: Sequence[str], index: int) -> str:
    return str(classes[index]) if 0 <= index < len(classes) else str(index)
