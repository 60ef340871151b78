"""Any torchvision classifier with starting weights, freezing, and the two-stage fine-tuning.

No network: the weights `model.weights=DEFAULT` stands for are a seeded state dict the
tests write where torchvision's weights API looks ($TORCH_HOME/hub/checkpoints/), so
the real loading code runs offline.
"""

from __future__ import annotations

import csv
import urllib.error

import pytest
import torch
import torchvision

from cnntrain import Callback, resume, train
from cnntrain.build import build_training
from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_config
from cnntrain.errors import ConfigError, RunInterrupted
from cnntrain.models import build_model
from cnntrain.pretrained import weights_file_for
from tests.conftest import StopAt, compose_config

# A small grey dataset and the torchvision ResNet-18 at 32 pixels: seconds per run on a CPU.
DATA = [
    "data=synthetic",
    "data.train_size=120",
    "data.test_size=40",
    "data.image_size=32",
    "data.batch_size=32",
    "data.num_classes=4",
    "device=cpu",
    "trainer.progress=none",
    "trainer.log_every=1",
]
TV = ["model=torchvision", "model.arch=resnet18", "data.resize=32"]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache, and no downloads: what a machine without network has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home"


def imagenet_resnet18(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


@pytest.fixture
def default_weights(torch_home) -> dict[str, torch.Tensor]:
    """A seeded ImageNet-shaped ResNet-18 where torchvision's DEFAULT weights file is expected."""
    state = imagenet_resnet18()
    path = weights_file_for(torchvision.models.ResNet18_Weights.DEFAULT)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def parts_for(*overrides: str):
    return build_training(check_config(compose_config([*DATA, *overrides])))


def test_any_torchvision_classifier_gets_the_datasets_classes_and_channels():
    for arch, head in (
        ("resnet18", "fc"),
        ("mobilenet_v3_small", "classifier.3"),
        ("squeezenet1_1", "classifier.1"),
        ("vit_b_16", "heads.head"),
    ):
        model = build_model(
            {"name": "torchvision", "settings": {"arch": arch}, "num_classes": 7, "in_channels": 1, "input_size": 224}
        )
        assert model.cnntrain_head == head
        assert model(torch.rand(2, 1, 224, 224)).shape == (2, 7), arch


def test_unknown_arch_and_head_get_did_you_mean():
    with pytest.raises(ConfigError, match="Unknown torchvision classifier 'resnet5' .*Did you mean 'resnet50'"):
        parts_for("model=torchvision", "model.arch=resnet5")
    with pytest.raises(ConfigError, match="Unknown model.head 'concat'.*Did you mean 'concat_pool'"):
        parts_for(*TV, "model.head=concat")
    with pytest.raises(ConfigError, match="concat_pool needs a network that ends in avgpool \\+ fc"):
        parts_for("model=torchvision", "model.arch=mobilenet_v3_small", "model.head=concat_pool", "data.resize=32")


def test_default_weights_load_from_torchs_cache_with_their_preprocessing(default_weights):
    parts = parts_for("model=torchvision", "model.arch=resnet18", "model.weights=DEFAULT")
    state = parts.model.state_dict()
    assert torch.equal(state["layer4.1.bn2.running_var"], default_weights["layer4.1.bn2.running_var"])
    assert torch.equal(state["layer2.0.conv1.weight"], default_weights["layer2.0.conv1.weight"])
    # Grey images: the stem's RGB filters summed; the head is new (4 classes, not 1000).
    assert torch.allclose(state["conv1.weight"], default_weights["conv1.weight"].sum(dim=1, keepdim=True))
    assert state["fc.weight"].shape == (4, 512)
    assert "new head 'fc'" in parts.weights_note and "stem summed" in parts.weights_note
    # ResNet18_Weights.IMAGENET1K_V1: resize to 256, centre-crop 224, ImageNet mean/std averaged for grey.
    assert parts.recipe["input_size"] == 224 and parts.transform.resize_before_crop == 256
    assert parts.transform.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert parts.run_info()["preprocess"]["resize_before_crop"] == 256


def test_the_tutorials_head_on_pretrained_weights(default_weights):
    parts = parts_for(
        "model=torchvision", "model.arch=resnet18", "model.weights=default", "model.head=concat_pool", "data.resize=32"
    )
    layers = [type(m).__name__ for m in parts.model.fc]
    assert layers == ["Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert parts.model.fc[3].in_features == 1024 and parts.model.fc[7].out_features == 4
    assert torch.equal(parts.model.state_dict()["layer1.0.conv2.weight"], default_weights["layer1.0.conv2.weight"])


def test_googlenet_imagenet_weights_get_their_input_transform_and_keep_it_in_the_recipe(torch_home):
    torch.manual_seed(0)
    state = torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict()  # with aux1/aux2
    path = weights_file_for(torchvision.models.GoogLeNet_Weights.DEFAULT)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    parts = parts_for("model=torchvision", "model.arch=googlenet", "model.weights=DEFAULT", "data.channels=3")
    assert parts.model.transform_input and parts.recipe["settings"]["transform_input"] is True
    assert torch.equal(
        parts.model.state_dict()["inception5b.branch1.conv.weight"], state["inception5b.branch1.conv.weight"]
    )
    assert build_model(parts.recipe).transform_input  # what prediction, eval and export rebuild
    grey = parts_for("model=torchvision", "model.arch=googlenet", "model.weights=DEFAULT")
    assert not grey.model.transform_input  # it reads three colour channels


def test_missing_weights_say_where_the_file_goes_and_how_to_get_it(torch_home):
    expected = weights_file_for(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    with pytest.raises(ConfigError) as err:
        parts_for("model=torchvision", "model.arch=resnet50", "model.weights=DEFAULT")
    message = str(err.value)
    assert str(expected) in message and "could not be downloaded (<urlopen error no network>)" in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message and "TORCH_HOME" in message


def test_weights_name_errors(torch_home):
    with pytest.raises(ConfigError, match="no such weights for resnet18.*Did you mean 'IMAGENET1K_V1'"):
        parts_for(*TV, "model.weights=IMAGENET1K_V3")
    with pytest.raises(
        ConfigError,
        match="no such file or folder, and torchvision weights names .* are only for "
        "model=torchvision. For model=lenet give a weights file",
    ):
        parts_for("model=lenet", "model.weights=DEFAULT")
    with pytest.raises(ConfigError, match="model.weights=nowhere.pt does not exist"):
        parts_for(*TV, "model.weights=nowhere.pt")


def test_a_weights_file_of_another_shape_names_the_layer(tmp_path, torch_home):
    state = imagenet_resnet18()
    state["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        ConfigError,
        match=r"layer 'layer3.1.conv2.weight' has shape \(256, 256, 1, 1\) in .* but "
        r"\(256, 256, 3, 3\) in this model",
    ):
        parts_for(*TV, f"model.weights={tmp_path / 'bad.pth'}")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ConfigError, match="has layers this model does not have .*made for another model"):
        parts_for(*TV, f"model.weights={tmp_path / 'resnet34.pth'}")
    torch.save({"not": "tensors"}, tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="holds no state dict"):
        parts_for(*TV, f"model.weights={tmp_path / 'junk.pt'}")


def test_weights_from_a_run_with_other_classes_keep_all_but_the_head(tmp_path):
    source = train(
        *DATA, "model=lenet_classic", "trainer.epochs=1", "data.num_classes=10", run_dir=tmp_path / "pretrain"
    )
    pretrained = load_checkpoint(source.run_dir / "checkpoints" / "best.pt")["state_dict"]
    parts = parts_for("model=lenet_classic", f"model.weights={source.run_dir}")
    state = parts.model.state_dict()
    head = parts.weights_note.split("new head '")[1].split("'")[0]
    assert state[f"{head}.weight"].shape[0] == 4 and pretrained[f"{head}.weight"].shape[0] == 10
    for key, value in pretrained.items():
        if not key.startswith(head + "."):
            assert torch.equal(state[key], value), key


class ParameterSnapshots(Callback):
    """The model's state after each epoch and best.pt's then: in after_epoch_end, which runs once that epoch's
    checkpoints are written and fine-tuning's stage two has begun (the built-in callbacks come first)."""

    def __init__(self, best_checkpoint=None):
        self.best_checkpoint = best_checkpoint
        self.after_epoch, self.best_then = [], []

    def after_epoch_end(self, trainer, metrics):
        self.after_epoch.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        if self.best_checkpoint:
            self.best_then.append(load_checkpoint(self.best_checkpoint)["state_dict"])


@pytest.fixture
def start_file(tmp_path):
    """Starting weights for the tiny runs: a seeded 4-class grey ResNet-18 state dict."""
    model = build_model(
        {"name": "torchvision", "settings": {"arch": "resnet18"}, "num_classes": 4, "in_channels": 1, "input_size": 32}
    )
    path = tmp_path / "start.pt"
    torch.save(model.state_dict(), path)
    return path


def test_freezing_trains_only_the_head_and_frozen_batchnorm_stats_stay(tmp_path, start_file):
    start = torch.load(start_file)
    snapshots = ParameterSnapshots()
    train(
        *DATA,
        *TV,
        f"model.weights={start_file}",
        "model.freeze=backbone",
        "trainer.epochs=1",
        callbacks=[snapshots],
        run_dir=tmp_path / "frozen",
    )
    after = snapshots.after_epoch[0]
    changed = sorted(k for k in start if not torch.equal(start[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"]  # running means/vars of the frozen BN layers included


def test_two_stage_finetune_unfreezes_at_the_scaled_lr_from_the_best_checkpoint(tmp_path, start_file):
    snapshots = ParameterSnapshots(tmp_path / "two_stage" / "checkpoints" / "best.pt")
    result = train(
        *DATA,
        *TV,
        f"model.weights={start_file}",
        "model.freeze=backbone",
        "optimizer.lr=0.05",
        "trainer.epochs=3",
        "finetune.unfreeze_at=2",
        "finetune.lr_scale=0.01",
        callbacks=[snapshots],
        run_dir=tmp_path / "two_stage",
    )
    with open(result.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["stage"] for row in rows] == ["1", "1", "2"]
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.05, 0.05, 0.0005])
    log = (result.run_dir / "train.log").read_text()
    assert "stage 2 after epoch 2: best checkpoint reloaded, all 11,172,292 parameters unfrozen, lr 0.0005" in log
    epoch_lines = [line for line in log.splitlines() if line.startswith("epoch")]
    assert [line.rsplit("  ", 1)[-1] for line in epoch_lines] == ["stage 1", "stage 1", "stage 2"]
    # Stage two starts from the best checkpoint of epochs 1-2 and moves every weight, the stem's too.
    stage_two_start, after = snapshots.after_epoch[1], snapshots.after_epoch[2]
    assert all(torch.equal(stage_two_start[k], snapshots.best_then[1][k]) for k in stage_two_start)
    weights = [k for k in after if k.endswith("weight")]
    assert len(weights) == 41 and all(not torch.equal(stage_two_start[k], after[k]) for k in weights)


def test_stage_two_can_keep_the_frozen_batchnorm_statistics(tmp_path, start_file):
    snapshots = ParameterSnapshots()
    train(
        *DATA,
        *TV,
        f"model.weights={start_file}",
        "model.freeze=backbone",
        "trainer.epochs=2",
        "finetune.unfreeze_at=1",
        "finetune.keep_norm_statistics=true",
        callbacks=[snapshots],
        run_dir=tmp_path / "keep",
    )
    start, after = snapshots.after_epoch
    statistics = [k for k in after if k.endswith(("running_mean", "running_var")) and not k.startswith("fc")]
    assert len(statistics) == 40 and all(torch.equal(start[k], after[k]) for k in statistics)
    assert not torch.equal(start["layer1.0.bn1.weight"], after["layer1.0.bn1.weight"])  # scale and shift train
    assert not torch.equal(start["conv1.weight"], after["conv1.weight"])


@pytest.mark.parametrize("stop_at", [(3, 1), (2, 3)], ids=["mid-epoch-in-stage-two", "end-of-switching-epoch"])
def test_resume_in_either_stage_is_exact(tmp_path, start_file, stop_at):
    run = [
        *DATA,
        *TV,
        f"model.weights={start_file}",
        "model.freeze=backbone",
        "optimizer.momentum=0.9",
        "trainer.epochs=4",
        "finetune.unfreeze_at=2",
        "trainer.checkpoint_every_minutes=null",
    ]
    whole = train(*run, run_dir=tmp_path / "whole")
    with pytest.raises(RunInterrupted):
        train(*run, callbacks=[StopAt(*stop_at)], run_dir=tmp_path / "cut")
    start_file.unlink()  # a resume takes the weights from its checkpoint, not from model.weights again
    resumed = resume(tmp_path / "cut")
    assert [m.stage for m in resumed.history] == [1, 1, 2, 2]
    assert [m.val_loss for m in resumed.history] == [m.val_loss for m in whole.history]
    a = load_checkpoint(whole.run_dir / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["finetune.unfreeze_at=1"], "nothing is frozen. Add model.freeze=backbone"),
        (
            ["model.freeze=backbone", "finetune.unfreeze_at=3", "trainer.epochs=3"],
            "finetune.unfreeze_at must be null .* from 1 to 2",
        ),
        (
            ["model.freeze=backbone", "finetune.unfreeze_at=1", "finetune.lr_scale=0"],
            "finetune.lr_scale must be a number > 0",
        ),
        (["model.freeze=head"], "model.freeze must be backbone"),
        (
            ["model.freeze=backbone", "finetune.unfreeze_at=1", "finetune.keep_norm_statistics=yes"],
            "finetune.keep_norm_statistics must be true or false",
        ),
        (["model.freeze=9"], "model.freeze=9: this model has 7 stages"),
    ],
)
def test_freeze_and_finetune_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parts_for(*TV, *overrides)


def test_the_weights_resize_then_centre_crop_is_what_prediction_applies_too():
    from cnntrain.data.loader import preprocess_transform

    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    transform = preprocess_transform({"size": 4, "mean": [], "std": [], "resize_before_crop": 8})
    assert torch.equal(transform(images), images[..., 2:6, 2:6].float() / 255)
    assert transform.resize_before_crop == 8 and transform.mean is None
