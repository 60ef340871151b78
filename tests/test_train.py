"""End to end through the Python entry `train(cfg)`, on tiny Fashion-MNIST-format files."""

import csv
import json
import math

import pytest
import torch

from cnntrain.checkpoint import RunCheckpoint, load_checkpoint
from cnntrain.data import load_image_data, prepare
from cnntrain.data.loader import BatchTransform, InMemoryLoader
from cnntrain.run import train
from cnntrain.trainer import Trainer
from tests.conftest import compose_config

FAST = [
    "model=mlp",
    "optimizer.lr=0.1",
    "data.batch_size=32",
    "trainer.epochs=3",
    "trainer.progress=none",
    "device=cpu",
    "data.download=false",
]


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def finished_run(tmp_path, fashion_root):
    cfg = compose_config(FAST + [f"data.root={fashion_root}"])
    summary = train(cfg, run_dir=tmp_path / "run")
    return tmp_path / "run", summary


def test_run_folder_holds_metrics_summary_checkpoints_and_log(finished_run):
    run_dir, summary = finished_run
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "epoch_seconds",
        "train_examples_per_s",
        "val_top5",
        "val_balanced_acc",
        "val_macro_f1",
    ]  # top-5: fashion_mnist has 10 classes
    for row in rows:
        assert all(math.isfinite(float(v)) for v in row.values())
        assert float(row["lr"]) == 0.1 and 0 <= float(row["val_acc"]) <= 1
    # The data is learnable: far above the 10% of chance after three epochs.
    assert float(rows[-1]["train_acc"]) > 0.5

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["status"] == "completed" and on_disk["epochs"] == 3
    assert on_disk["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert on_disk["best_epoch"] == int(max(rows, key=lambda r: float(r["val_acc"]))["epoch"])
    assert on_disk["params"] == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert on_disk["train_size"] == 360 and on_disk["val_size"] == 40 and on_disk["test_size"] == 200
    assert set(on_disk["versions"]) == {"cnntrain", "python", "torch", "torchvision", "hydra"}
    assert on_disk["device"].startswith("cpu") and on_disk["wall_seconds"] > 0

    log = (run_dir / "train.log").read_text()
    assert "cnntrain: mlp on fashion_mnist" in log and "epoch 3/3" in log and "test acc" in log
    assert "name: mlp" in (run_dir / ".hydra" / "config.yaml").read_text()


def test_best_checkpoint_reloads_and_reproduces_test_accuracy(finished_run, fashion_root):
    run_dir, summary = finished_run
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")  # weights_only=True inside
    assert best["epoch"] == summary["best_epoch"]
    assert best["model"]["name"] == "mlp" and best["classes"][0] == "T-shirt/top"
    model = RunCheckpoint(run_dir / "checkpoints" / "best.pt", best).build_model()

    data = prepare(
        "fashion_mnist", load_image_data("fashion_mnist", {"root": str(fashion_root), "download": False}), 0.1, 42
    )
    size = best["preprocess"]["size"]
    loader = InMemoryLoader(data.test, 64, BatchTransform((size, size), None, None), torch.device("cpu"))
    trainer = Trainer(model, None, None, None, None, torch.device("cpu"), epochs=0)
    test_loss, test_acc = trainer.evaluate(loader)
    assert test_acc == summary["test_acc"]
    assert test_loss == pytest.approx(summary["test_loss"], rel=1e-5)

    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and set(last) >= {"optimizer", "scheduler", "rng", "config", "state_dict"}
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_same_seed_gives_identical_metrics(tmp_path, fashion_root):
    def run(name):
        cfg = compose_config(FAST + [f"data.root={fashion_root}", "trainer.epochs=2", "model=lenet_classic"])
        train(cfg, run_dir=tmp_path / name)
        return [
            {k: v for k, v in row.items() if k not in ("epoch_seconds", "train_examples_per_s")}
            for row in read_metrics(tmp_path / name)
        ]

    first, second = run("a"), run("b")
    assert first == second and len(first) == 2


def test_val_fraction_zero_validates_on_test(tmp_path, fashion_root):
    cfg = compose_config(FAST + [f"data.root={fashion_root}", "trainer.epochs=1", "data.val_fraction=0"])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["val_size"] == summary["test_size"] == 200 and summary["train_size"] == 400
    assert summary["best_val_acc"] == summary["test_acc"]


def test_classic_lenet_gets_32px_input_from_28px_data(tmp_path, fashion_root):
    cfg = compose_config(FAST + [f"data.root={fashion_root}", "trainer.epochs=1", "model=lenet_classic"])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["input_size"] == 32
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]["input_size"] == 32


def test_nan_loss_stops_with_advice_and_keeps_finished_epochs(tmp_path, fashion_root):
    from cnntrain.errors import TrainingError

    cfg = compose_config(
        FAST
        + [
            f"data.root={fashion_root}",
            "trainer.epochs=3",
            "optimizer.lr=1e6",
            "model=lenet_classic",
            "trainer.log_every=1",
        ]
    )
    with pytest.raises(TrainingError) as err:
        train(cfg, run_dir=tmp_path / "run")
    assert "lower learning rate" in str(err.value) and "lr 1e+06" in str(err.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "training loss became" in summary["error"]


def test_user_model_module_from_imports(tmp_path, monkeypatch):
    (tmp_path / "user_models_for_test.py").write_text(
        "from torch import nn\n"
        "from cnntrain.models import MODELS\n\n"
        "@MODELS.register('user_tiny_for_test')\n"
        "def tiny(num_classes=10, in_channels=1, input_size=28, width=8):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(width, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)  # the module is found in the current folder, as for a user
    from cnntrain.models import MODELS

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # the test's model leaves with the test
    cfg = compose_config(
        [
            "data=synthetic",
            "trainer.epochs=1",
            "trainer.progress=none",
            "device=cpu",
            "imports=[user_models_for_test]",
            "model.name=user_tiny_for_test",
            "model.init=default",
            "+model.width=5",
        ]
    )
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["params"] == 1 * 5 * 9 + 5 + 5 * 10 + 10


def test_missing_user_module_is_a_config_error(tmp_path):
    from cnntrain.errors import ConfigError

    cfg = compose_config(["data=synthetic", "imports=[no_such_module_here]"])
    with pytest.raises(ConfigError, match="Cannot import 'no_such_module_here' \\(imports\\)"):
        train(cfg, run_dir=tmp_path / "run")
