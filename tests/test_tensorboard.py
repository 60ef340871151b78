"""logger=tensorboard: event files read back with TensorBoard's own reader."""

import json
import re
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch import nn

from cnntrain import plots
from cnntrain.errors import ConfigError
from cnntrain.loggers import check_logger
from cnntrain.loggers.tensorboard import Denormalize, TensorBoardLogger, check_tensorboard, labelled_grid
from cnntrain.run import train
from tests.conftest import compose_config

pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'cnntrain[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

# lenet_bn: its BatchNorm statistics would change if the graph were traced in train mode.
TINY = [
    "experiment=smoke",
    "model=lenet_bn",
    "trainer.epochs=2",
    "trainer.progress=none",
    "data.train_size=160",
    "data.test_size=32",
    "logger=tensorboard",
]
SCALARS = ["train/loss", "train/acc", "train/lr", "val/loss", "val/acc"]


def read_events(folder):
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    """One run with logger=tensorboard; it also records how often curves.png was drawn."""
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    drawn = []
    real = plots.plot_curves
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            plots, "plot_curves", lambda rows, path, title="": (drawn.append(len(rows)), real(rows, path, title))
        )
        train(
            compose_config(TINY + ["logger.tensorboard.histogram_every=2", "logger.tensorboard.images=8"]),
            run_dir=run_dir,
        )
    return run_dir, read_events(run_dir / "tensorboard"), drawn


def test_curves_png_is_drawn_after_the_first_epoch_and_at_the_end(tensorboard_run):
    run_dir, _, drawn = tensorboard_run
    assert drawn == [1, 2]  # after epoch 1, and at the end with all epochs (plots.CurvesPlot)
    with Image.open(run_dir / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1000, 400)


def test_scalars_per_epoch_with_the_expected_tags_and_steps(tensorboard_run):
    run_dir, events, _ = tensorboard_run
    tags = events.Tags()
    assert set(SCALARS) <= set(tags["scalars"])
    for tag in SCALARS:
        assert [event.step for event in events.Scalars(tag)] == [1, 2]
    # The same numbers as metrics.csv (float32 in the event file).
    import csv

    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [round(e.value, 5) for e in events.Scalars("val/acc")] == [round(float(r["val_acc"]), 5) for r in rows]
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([0.1, 0.1])
    # 10 classes: top-5 validation accuracy too, as metrics.csv has it.
    assert [round(e.value, 5) for e in events.Scalars("val/top5")] == [round(float(r["val_top5"]), 5) for r in rows]
    for tag in ("balanced_acc", "macro_f1"):  # the figures that see imbalanced classes
        assert [round(e.value, 5) for e in events.Scalars(f"val/{tag}")] == [
            round(float(r[f"val_{tag}"]), 5) for r in rows
        ]


def test_the_test_figures_and_the_hparams_session_are_in_the_run_s_own_folder(tensorboard_run):
    run_dir, events, _ = tensorboard_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for tag, key in (("test/loss", "test_loss"), ("test/acc", "test_acc"), ("test/top5", "test_top5")) + (
        ("test/balanced_acc", "test_balanced_acc"),
        ("test/macro_f1", "test_macro_f1"),
    ):
        [event] = events.Scalars(tag)
        assert (event.step, event.value) == (2, pytest.approx(summary[key]))  # at the last epoch's step
    [best] = events.Scalars("val/best_acc")
    assert best.value == pytest.approx(summary["best_val_acc"])
    assert [p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()] == []  # one session: no sub-folder
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    # No experiment summary: TensorBoard works the columns out from all sessions (the settings that differ first).
    assert set(content) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {
        key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for key, value in start.hparams.items()
    }
    assert hparams == {
        "model.name": "lenet_bn",
        "data.name": "synthetic",
        "optimizer.name": "sgd",
        "optimizer.lr": pytest.approx(0.1),
        "optimizer.weight_decay": 0.0,
        "scheduler.name": "none",
        "data.batch_size": 32.0,
        "trainer.epochs": 2.0,
    }
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == 1  # STATUS_SUCCESS


def test_hparams_columns_are_the_base_settings_and_the_command_line_s_keys():
    from cnntrain.loggers.tensorboard_hparams import hparam_values, override_keys

    keys = override_keys(["model=alexnet", "optimizer.lr=0.1", "+trainer.mixup.alpha=0.2", "~foo", "experiment=smoke"])
    assert keys == ["model", "optimizer.lr", "trainer.mixup.alpha", "foo", "experiment"]
    config = {
        "model": {"name": "alexnet"},
        "optimizer": {"lr": 0.1, "nesterov": True},
        "data": {"mean": [0.5], "x": None},
    }
    assert hparam_values(config, keys + ["optimizer.lr", "optimizer.nesterov", "data.mean", "data.x"]) == {
        "model.name": "alexnet",  # a group choice shows as its name
        "optimizer.lr": 0.1,
        "optimizer.nesterov": "true",  # text, not 1.0
        "data.mean": "[0.5]",
        "data.x": "null",
    }


def test_images_histograms_and_graph(tensorboard_run):
    _, events, _ = tensorboard_run
    tags = events.Tags()
    [batch] = events.Images("train/augmented_batch")
    # 8 images of 28x28 (lenet_bn's input) in one row of make_grid, 2-pixel padding.
    assert (batch.step, batch.width, batch.height) == (0, 8 * 30 + 2, 32)
    shown = [(e.step, e.value) for e in events.Scalars("val/misclassified_shown")]
    assert [step for step, _ in shown] == [1, 2] and all(0 <= value <= 8 for _, value in shown)
    assert [e.step for e in events.Images("val/misclassified")] == [step for step, value in shown if value > 0]
    # histogram_every=2: weights and gradients at epoch 2 only, for every parameter of the model.
    assert "weights/0.weight" in tags["histograms"] and "gradients/0.weight" in tags["histograms"]
    assert [e.step for e in events.Histograms("gradients/0.weight")] == [2]
    weights = [t for t in tags["histograms"] if t.startswith("weights/")]
    assert len(weights) == 18  # lenet_bn: 5 conv/linear + 4 BatchNorm layers, weight and bias each
    assert tags["graph"] is True


def test_misclassified_images_are_titled_with_class_names():
    images = torch.rand(3, 1, 8, 8)
    figure = labelled_grid(images, predicted=[0, 2, 1], actual=[1, 0, 2], classes=["shirt", "coat", "bag"])
    [axes] = figure.axes
    assert [text.get_text() for text in axes.texts] == [
        "pred shirt /\nactual coat",
        "pred bag /\nactual shirt",
        "pred coat /\nactual bag",
    ]
    assert len(axes.images) == 3


class AlwaysZero(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("this model cannot be traced\nsecond line")
        return self.bias.expand(len(x), 3)


def test_only_wrong_predictions_are_shown_and_a_failed_trace_is_a_notice(tmp_path):
    notices = []
    logger = TensorBoardLogger(tmp_path, classes=["a", "b", "c"], images=8, notify=notices.append)
    batches = [(torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])), (torch.rand(2, 1, 4, 4), torch.tensor([1, 0]))]
    trainer = SimpleNamespace(model=AlwaysZero(), train_loader=batches, val_loader=batches)
    logger.on_fit_start(trainer)
    assert notices == ["tensorboard: no model graph (tracing failed: this model cannot be traced)"]
    logger._add_misclassified(trainer.model, batches, step=1)
    logger.on_fit_end(trainer)
    events = read_events(tmp_path / "tensorboard")
    assert [e.value for e in events.Scalars("val/misclassified_shown")] == [3.0]  # labels 1, 2 and 1
    assert trainer.model.training is True  # put back in the mode it was in


def test_denormalize_gives_back_the_images():
    images = torch.rand(2, 3, 5, 5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalized = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(Denormalize(mean, std)(normalized), images, atol=1e-6)
    assert torch.equal(Denormalize(None, None)(images), images)


def test_missing_tensorboard_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(
        ConfigError,
        match=r"logger=tensorboard needs the tensorboard package.*"
        r"pip install 'cnntrain\[tensorboard\]'",
    ):
        check_tensorboard()
    # Through train(): refused before any data is loaded, and recorded in summary.json.
    with pytest.raises(ConfigError, match=r"cnntrain\[tensorboard\]"):
        train(compose_config(TINY), run_dir=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "or use logger=csv" in summary["error"]
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_bad_logger_settings_are_named():
    with pytest.raises(
        ConfigError, match=r"Unknown logger 'tensorbord' \(logger.tensorbord\). Did you mean 'tensorboard'"
    ):
        check_logger({"csv": {}, "tensorbord": {}})
    with pytest.raises(
        ConfigError,
        match=r"logger.tensorboard.images must be a whole number >= 0 \(0 turns it off\), "
        r"got -1",
    ):
        check_logger({"tensorboard": {"images": -1}})
    with pytest.raises(
        ConfigError,
        match=r"logger 'tensorboard' has no setting 'histograms' "
        r"\(logger.tensorboard.histograms\). Did you mean 'histogram_every'\? "
        r"Valid settings: histogram_every, images, graph",
    ):
        check_logger({"tensorboard": {"histograms": 3}})
    with pytest.raises(ConfigError, match=r"logger.tensorboard.graph must be true or false, got 'yes'"):
        check_logger({"tensorboard": {"graph": "yes"}})
    with pytest.raises(ConfigError, match=r"logger.csv must be the logger's settings \(a section, \{\} for none\)"):
        check_logger({"csv": 3})
    assert check_logger(None) == [] and check_logger({}) == []  # logger=[]: metrics.csv and curves.png only
    assert [(c.name, c.settings) for c in check_logger({"csv": {}, "tensorboard": {"images": 0}})] == [
        ("csv", {}),
        ("tensorboard", {"images": 0}),
    ]


def test_the_old_one_logger_spelling_reads_as_the_new_one():
    """Run folders from before the registry hold logger: {name: tensorboard, ...}: they resume and evaluate."""
    old = check_logger({"name": "tensorboard", "images": 4, "histogram_every": 0, "graph": False})
    assert [(c.name, c.settings) for c in old] == [("tensorboard", {"images": 4, "histogram_every": 0, "graph": False})]
    with pytest.raises(
        ConfigError,
        match=r"logger.name=tensorboard is the old spelling: choose loggers with logger=tensorboard "
        r"\(several at once: logger=\[csv,tensorboard\]\)",
    ):
        check_logger({"name": "tensorboard", "csv": {}})


@pytest.mark.slow  # a second training run (~6 s)
def test_tensorboard_does_not_change_the_training(tensorboard_run, tmp_path):
    """Drawing a batch, tracing the graph and predicting on val must not move any random stream."""
    import csv

    train(compose_config([o for o in TINY if o != "logger=tensorboard"]), run_dir=tmp_path / "csv")

    def numbers(run_dir):
        with open(run_dir / "metrics.csv") as f:
            return [(r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"]) for r in csv.DictReader(f)]

    assert numbers(tmp_path / "csv") == numbers(tensorboard_run[0])


def test_logger_choices_compose_several_and_a_typo_in_any_is_named():
    """logger=x and logger=[x,y] (lightning-hydra-template's spelling) from the command line's torch-free
    checks and from cnntrain.compose; the registry holds exactly the files of configs/logger/."""
    from cnntrain.config import check_group_choices, compose, group_choices
    from cnntrain.key_checks import check_override_keys
    from cnntrain.loggers import LOGGERS

    assert LOGGERS.names() == group_choices("logger") == ["csv", "mlflow", "tensorboard", "wandb"]
    assert list(compose([]).logger) == ["csv"]
    assert list(compose(["logger=[csv,tensorboard]"]).logger) == ["csv", "tensorboard"]
    assert compose(["logger=[]"]).get("logger") is None and check_logger(compose(["logger=[]"]).get("logger")) == []
    assert compose(["logger=tensorboard", "logger.tensorboard.images=8"]).logger.tensorboard.images == 8
    typo = (
        "Unknown logger 'tensorbord' (logger=tensorbord). Did you mean 'tensorboard'? Available: csv, mlflow, "
        "tensorboard, wandb"
    )
    for args in (["logger=[csv,tensorbord]"], ["logger=tensorbord"], ["-m", "logger=[csv],[tensorbord]"]):
        assert check_group_choices(args) == typo
        with pytest.raises(ConfigError, match=re.escape(typo)):
            compose([a for a in args if a != "-m"])
    assert check_override_keys(["logger.name=tensorboard"]) == (
        "logger.name=tensorboard is the old spelling: choose loggers with logger=tensorboard (several at once: "
        "logger=[csv,tensorboard]), and set theirs with logger.tensorboard.<key>=..."
    )
    assert "Did you mean 'logger.tensorboard.images'?" in check_override_keys(
        ["logger=[csv,tensorboard]", "logger.tensorboard.imags=3"]
    )
