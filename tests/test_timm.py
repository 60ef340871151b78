"""`model=timm`: any timm model fitted to the data, its pretrained weights from the local Hugging Face cache.

No network: the weights `model.weights=DEFAULT` stands for are seeded state dicts the tests write into a
temporary Hugging Face cache laid out as huggingface_hub lays it out (blobs, snapshots/<revision>/ links,
refs/main), with HF_HUB_OFFLINE=1, sockets refused and the hub's download function replaced by one that
fails the test: the real loading code runs, and nothing tries to download. timm's tiny test models
(`test_resnet`, `test_efficientnet`, `test_vit`) keep every run at a few seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import math
import socket
import sys

import huggingface_hub
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from cnntrain import Callback, train
from cnntrain.build import build_training
from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_config
from cnntrain.errors import ConfigError
from cnntrain.export import export_run
from cnntrain.models import build_model
from cnntrain.models.timm_models import check_arch
from cnntrain.models.torchvision_models import first_conv
from cnntrain.predict import load_exported, load_run
from tests.conftest import compose_config
from tests.helpers import run_cli

# Grey 28-pixel synthetic data, 4 classes: seconds per run.
GREY = [
    "data=synthetic",
    "data.train_size=64",
    "data.test_size=32",
    "data.image_size=28",
    "data.batch_size=32",
    "data.num_classes=4",
    "device=cpu",
    "trainer.progress=none",
    "trainer.log_every=1",
    "model=timm",
    "model.input_size=null",
]
RESNET = [*GREY, "model.arch=test_resnet"]
# test_resnet's weights: 160 pixels, centre crop 0.95, mean/std 0.5 (timm's pretrained config).
RESNET_WEIGHTS = "test_resnet.r160_in1k"


def parts_for(*overrides: str):
    return build_training(check_config(compose_config(list(overrides))))


def imagenet_state(arch: str, seed: int = 0, **options) -> dict[str, torch.Tensor]:
    """A seeded `arch` as timm publishes it: 1000 ImageNet classes, RGB."""
    torch.manual_seed(seed)
    return timm.create_model(arch, **options).state_dict()


def publish(cache, name: str, state: dict[str, torch.Tensor]) -> None:
    """`state` as `hf download timm/<name>` leaves it: the file in blobs/<sha256>, linked from
    snapshots/<revision>/model.safetensors, refs/main naming the revision."""
    repo = cache / f"models--timm--{name}"
    (repo / "blobs").mkdir(parents=True)
    temporary = repo / "blobs" / "download"
    save_file(state, temporary)
    blob = repo / "blobs" / hashlib.sha256(temporary.read_bytes()).hexdigest()
    temporary.rename(blob)
    revision = hashlib.sha1(name.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(f"../../blobs/{blob.name}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and a machine without network that fails the test on any download."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


@pytest.fixture
def resnet_weights(hf_cache) -> dict[str, torch.Tensor]:
    state = imagenet_state("test_resnet")
    publish(hf_cache, RESNET_WEIGHTS, state)
    return state


def test_any_timm_model_gets_the_datasets_classes_and_channels():
    for arch, head, channels, size in (
        ("test_resnet", "fc", 1, 28),
        ("test_resnet", "fc", 3, 32),
        ("test_efficientnet", "classifier", 1, 28),
        ("test_efficientnet", "classifier", 3, 32),
        ("test_vit", "head", 1, 32),
        ("test_vit", "head", 3, 32),
    ):
        recipe = {"name": "timm", "settings": {"arch": arch}, "num_classes": 7, "in_channels": channels}
        model = build_model({**recipe, "input_size": size})
        assert model.cnntrain_head == head
        assert first_conv(model)[1].in_channels == channels
        assert model(torch.rand(2, channels, size, size)).shape == (2, 7), arch
    vit = build_model({**recipe, "input_size": 32})
    assert vit.pos_embed.shape[1] == 1 + (32 // 16) ** 2  # a ViT is built for the run's input size
    with pytest.raises(ConfigError, match="cuts images into 16-pixel patches.*got 28. Set data.resize=32 "):
        build_model({**recipe, "input_size": 28})


def test_unknown_arch_names_the_closest_and_timm_missing_names_the_extra(monkeypatch):
    with pytest.raises(ConfigError, match=r"Unknown timm model 'resnet5' \(model.arch\). Did you mean 'resnet50'"):
        parts_for(*GREY, "model.arch=resnet5")
    with pytest.raises(
        ConfigError, match=r"'RESNET18' \(model.arch\). Did you mean 'resnet18'\?.*list_models\('resn\*'\)"
    ):
        check_arch("RESNET18")
    with pytest.raises(ConfigError, match=r"^model=timm needs model.arch=<a timm model>, e.g. model.arch=resnet18.$"):
        check_arch("")
    with pytest.raises(ConfigError, match="give the architecture and the weights apart, model.arch=resnet18 "):
        parts_for(*GREY, "model.arch=resnet18.a1_in1k")
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` does when it is not installed
    with pytest.raises(ConfigError) as err:
        build_model({"name": "timm", "settings": {}, "num_classes": 4, "in_channels": 1, "input_size": 28})
    assert str(err.value) == ("model=timm needs the timm package, which is not installed: pip install 'cnntrain[timm]'")


def test_default_weights_load_from_the_hugging_face_cache_with_their_preprocessing(resnet_weights):
    parts = parts_for(*RESNET, "model.weights=DEFAULT")
    state = parts.model.state_dict()
    assert torch.equal(state["layer2.0.conv1.weight"], resnet_weights["layer2.0.conv1.weight"])
    assert torch.equal(state["layer4.0.bn2.running_var"], resnet_weights["layer4.0.bn2.running_var"])
    # Grey images: the stem's RGB filters summed; the head is new (4 classes, not 1000).
    assert torch.allclose(state["conv1.0.weight"], resnet_weights["conv1.0.weight"].sum(dim=1, keepdim=True))
    assert state["fc.weight"].shape == (4, 96)
    assert parts.weights_note.startswith(f"weights: timm's {RESNET_WEIGHTS} ({parts.weights_note.split('(')[1]}")
    assert "new head 'fc' for these classes; stem summed over its colour channels" in parts.weights_note
    # timm's pretrained config: 160 pixels, crop_pct 0.95 -> resized to floor(160 / 0.95) = 168 first.
    assert parts.recipe["input_size"] == 160 and parts.transform.resize_before_crop == math.floor(160 / 0.95)
    preprocess = parts.run_info()["preprocess"]
    assert (preprocess["size"], preprocess["resize_before_crop"]) == (160, 168)
    assert (preprocess["mean"], preprocess["std"]) == ([0.5], [0.5])


def test_every_spelling_of_the_weights_name_loads_the_same(resnet_weights):
    for name in ("pretrained", "r160_in1k", RESNET_WEIGHTS):
        state = parts_for(*RESNET, f"model.weights={name}", "data.resize=32").model.state_dict()
        assert torch.equal(state["layer3.0.conv2.weight"], resnet_weights["layer3.0.conv2.weight"]), name


def test_weights_name_errors(hf_cache):
    with pytest.raises(ConfigError, match="no such weights for test_resnet. Did you mean 'test_resnet.r160_in1k'"):
        parts_for(*RESNET, "model.weights=r16_in1k")
    with pytest.raises(ConfigError, match="are timm's weights for resnet18, but model.arch=test_resnet"):
        parts_for(*RESNET, "model.weights=resnet18.a1_in1k")
    with pytest.raises(ConfigError, match="timm has no pretrained weights for test_coatnet"):
        parts_for(*GREY, "model.arch=test_coatnet", "model.weights=DEFAULT")
    with pytest.raises(ConfigError, match="model.weights=nowhere.safetensors does not exist"):
        parts_for(*RESNET, "model.weights=nowhere.safetensors")


def test_missing_weights_name_the_repository_the_file_and_the_command(hf_cache):
    with pytest.raises(ConfigError) as err:
        parts_for(*GREY, "model.arch=test_efficientnet", "model.weights=DEFAULT")
    message = str(err.value)
    repo = "timm/test_efficientnet.r160_in1k"
    assert f"the weights of {repo} (model.safetensors) are not in the local Hugging Face cache" in message
    assert f"{hf_cache}/models--timm--test_efficientnet.r160_in1k/snapshots/<revision>/model.safetensors" in message
    assert f"run `hf download {repo}` (or `huggingface-cli download {repo}`)" in message
    assert "does not download them" in message and "HF_HUB_CACHE" in message


def test_a_vits_position_embedding_is_resized_for_the_input_size(hf_cache):
    state = imagenet_state("test_vit")
    publish(hf_cache, "test_vit.r160_in1k", state)
    parts = parts_for(*GREY, "data.channels=3", "model.arch=test_vit", "model.weights=DEFAULT", "data.resize=32")
    loaded = parts.model.state_dict()
    assert state["pos_embed"].shape[1] == 1 + 10 * 10 and loaded["pos_embed"].shape[1] == 1 + 2 * 2
    assert torch.equal(loaded["pos_embed"][0, 0], state["pos_embed"][0, 0])  # the class token's position is kept
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert torch.equal(loaded["patch_embed.proj.weight"], state["patch_embed.proj.weight"])  # RGB: the stem as is
    assert parts.transform.size == (32, 32) and parts.transform.mean == (0.5, 0.5, 0.5)


def test_a_safetensors_file_of_other_classes_keeps_all_but_the_head(tmp_path):
    state = imagenet_state("test_resnet")
    save_file(state, tmp_path / "resnet.safetensors")
    parts = parts_for(*RESNET, f"model.weights={tmp_path / 'resnet.safetensors'}")
    loaded = parts.model.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            assert loaded[key].shape[0] == 4
        elif key == "conv1.0.weight":
            assert torch.allclose(loaded[key], value.sum(dim=1, keepdim=True))
        else:
            assert torch.equal(loaded[key], value), key
    assert "new head 'fc'" in parts.weights_note
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "resnet.safetensors").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="Cannot read model.weights=.*cut.safetensors: .*and whole"):
        parts_for(*RESNET, f"model.weights={tmp_path / 'cut.safetensors'}")


def test_freezing_stages_and_the_two_stage_finetune(tmp_path, resnet_weights):
    frozen = parts_for(*RESNET, "model.weights=DEFAULT", "data.resize=32", "model.freeze=2")
    frozen_names = {name for name, p in frozen.model.named_parameters() if not p.requires_grad}
    assert frozen_names == {n for n, _ in frozen.model.named_parameters() if n.startswith(("conv1.", "bn1."))}
    assert "conv1.0.weight" in frozen_names and "layer1.0.conv1.weight" not in frozen_names  # the deep stem's 2 stages
    snapshots = []

    class Snapshots(Callback):
        def after_epoch_end(self, trainer, metrics):
            snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    start = parts_for(*RESNET, "model.weights=DEFAULT", "data.resize=32").model.state_dict()
    result = train(
        *RESNET,
        "model.weights=DEFAULT",
        "data.resize=32",
        "model.freeze=backbone",
        "finetune.unfreeze_at=1",
        "trainer.epochs=2",
        callbacks=[Snapshots()],
        run_dir=tmp_path / "finetune",
    )
    first = sorted(k for k in start if not torch.equal(start[k], snapshots[0][k]))
    assert first == ["fc.bias", "fc.weight"]  # stage one: the head only, frozen BN statistics included
    second = [k for k in start if not torch.equal(snapshots[0][k], snapshots[1][k])]
    assert "layer1.0.conv1.weight" in second and "conv1.0.weight" in second
    assert [epoch.stage for epoch in result.history] == [1, 2]


@pytest.fixture(scope="module")
def command_line_run(tmp_path_factory):
    """One epoch from the command line with test_resnet's weights in a Hugging Face cache, in a fresh process
    offline from its start: HF_HUB_OFFLINE=1, and any HTTP(S) request sent to a proxy that is not there."""
    folder = tmp_path_factory.mktemp("timm_cli")
    publish(folder / "hf_cache", RESNET_WEIGHTS, imagenet_state("test_resnet"))
    proxy = "http://127.0.0.1:9"
    offline = {
        "HF_HUB_CACHE": str(folder / "hf_cache"),
        "HF_HUB_OFFLINE": "1",
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
    }
    overrides = [*RESNET, "model.weights=DEFAULT", "data.resize=32", "trainer.epochs=1"]
    done = run_cli("python -m cnntrain", *overrides, f"hydra.run.dir={folder / 'run'}", env=offline)
    return done, folder


def test_one_epoch_from_the_command_line_offline(command_line_run):
    done, folder = command_line_run
    assert done.returncode == 0, done.stderr
    log = (folder / "run" / "train.log").read_text()
    assert f"weights: timm's {RESNET_WEIGHTS} ({folder}/hf_cache/models--timm--{RESNET_WEIGHTS}/snapshots/" in log
    assert "input 28px -> 32px" in log and "Loading pretrained weights" not in done.stdout + done.stderr
    assert log.startswith("cnntrain: timm test_resnet on ")  # the architecture named, not only the family
    best = load_checkpoint(folder / "run" / "checkpoints" / "best.pt")
    assert best["model"]["settings"]["arch"] == "test_resnet" and best["model"]["input_size"] == 32
    # data.resize wins over the weights' 160 pixels (and their crop); their mean and std stay.
    preprocess = {k: best["preprocess"].get(k) for k in ("size", "resize_before_crop", "mean", "std")}
    assert preprocess == {"size": 32, "resize_before_crop": None, "mean": [0.5], "std": [0.5]}


def test_predicting_with_the_onnx_export_equals_predicting_with_the_run(command_line_run, tmp_path):
    run_dir = command_line_run[1] / "run"
    generator = torch.Generator().manual_seed(0)
    for i, image in enumerate(torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=generator)):
        Image.fromarray(image.numpy()).save(tmp_path / f"{i}.png")
    from_run = load_run(run_dir).predict(tmp_path, topk=2)
    said = []
    exported = export_run(run_dir, "onnx", say=said.append)
    assert exported.info["preprocess"]["mean"] == [0.5] and exported.info["preprocess"]["size"] == 32
    assert (exported.info["model"], exported.info["arch"]) == ("timm", "test_resnet")  # the file says which
    assert said[0].startswith("exporting timm test_resnet (")
    from_file = load_exported(exported.path).predict(tmp_path, topk=2)
    assert [p.label for p in from_file] == [p.label for p in from_run]
    assert [q for p in from_file for _, q in p.top] == pytest.approx([q for p in from_run for _, q in p.top], abs=1e-4)


@pytest.mark.slow
def test_the_weights_resize_and_crop_are_what_prediction_and_export_apply(tmp_path, resnet_weights):
    run_dir = train(*RESNET, "model.weights=DEFAULT", "trainer.epochs=1", run_dir=tmp_path / "run").run_dir
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert (best["preprocess"]["size"], best["preprocess"]["resize_before_crop"]) == (160, 168)
    transform = load_run(run_dir).transform()
    assert transform.size == (160, 160) and transform.resize_before_crop == 168
    exported = export_run(run_dir, "onnx", say=lambda line: None)
    assert (exported.info["preprocess"]["size"], exported.info["preprocess"]["resize_before_crop"]) == (160, 168)


def test_the_command_line_answers_an_unknown_arch_in_one_line():
    done = run_cli("python -m cnntrain", *GREY, "model.arch=efficientnet_b9")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: Unknown timm model 'efficientnet_b9' (model.arch). Did you mean 'efficientnet_b" in done.stderr


def test_cnntrain_info_prints_a_timm_model():
    done = run_cli(
        "cnntrain-info", "model=timm", "model.arch=test_efficientnet", "data=synthetic", "model.input_size=32"
    )
    assert done.returncode == 0, done.stderr
    assert "conv_stem" in done.stdout and "classifier" in done.stdout and "1x32x32" in done.stdout
