"""image_folder on generated PNG/JPEG folders in both layouts, with the usual faults."""

import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.data import prepare
from cnntrain.data.augment import build_augmentations
from cnntrain.data.folder import image_folder
from cnntrain.errors import DatasetError
from cnntrain.run import train
from tests.conftest import compose_config
from tests.helpers import run_cli

COLOURS = {"cats": (220, 40, 40), "dogs": (40, 40, 220)}


def write_image(path, colour, size=(20, 14), grey=False, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if grey:
        image = image.convert("L")
    image.save(path, format=fmt)


def make_class_folder(folder, per_class=6):
    for name, colour in COLOURS.items():
        for i in range(per_class):
            suffix = ".jpg" if i % 2 else ".png"
            write_image(folder / name / f"{name}{i}{suffix}", colour, grey=(i == 0))
    return folder


def test_single_folder_layout_mixed_grey_and_rgb(tmp_path):
    data = image_folder(root=str(make_class_folder(tmp_path / "pets")), channels=3, image_size=16)
    assert data.classes == ["cats", "dogs"]
    assert data.train.images.shape == (12, 3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.val is None and data.test is None
    assert data.train.labels.tolist() == [0] * 6 + [1] * 6
    red_cat = data.train.images[1].float().mean(dim=(1, 2))  # a colour JPEG of a "cat": red dominates
    assert red_cat[0] > 150 and red_cat[2] < 100
    grey_cat = data.train.images[0]  # saved as grey: all three channels equal
    assert torch.equal(grey_cat[0], grey_cat[1]) and torch.equal(grey_cat[1], grey_cat[2])
    assert len(data.mean) == 3 and all(0 < s for s in data.std)


def test_grey_channels_and_train_val_test_layout(tmp_path):
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        make_class_folder(tmp_path / split, per_class=count)
    data = image_folder(root=str(tmp_path), channels=1, image_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 6)
    assert data.train.images.shape[1:] == (1, 8, 8)
    prepared = prepare("image_folder", data, 0.2, seed=0)
    assert prepared.spec.val_source == "the dataset's own val split" and prepared.spec.test_size == 6
    assert prepared.spec.test_is_validation is False and prepared.spec.has_test_split is True


def test_without_test_split_the_validation_data_is_the_test(tmp_path):
    data = image_folder(root=str(make_class_folder(tmp_path / "pets")), image_size=8)
    prepared = prepare("image_folder", data, 0.25, seed=0)
    assert prepared.test is prepared.val and "no test split" in prepared.spec.val_source
    assert prepared.spec.test_is_validation is True and prepared.spec.has_test_split is False


def test_corrupt_file_is_named_or_skipped(tmp_path):
    folder = make_class_folder(tmp_path / "pets")
    bad = folder / "dogs" / "broken.jpg"
    good = folder / "dogs" / "dogs1.jpg"
    bad.write_bytes(good.read_bytes()[:200])  # a truncated JPEG
    with pytest.raises(DatasetError) as err:
        image_folder(root=str(folder), image_size=8)
    assert str(bad) in str(err.value) and "data.skip_bad_files=true" in str(err.value)
    data = image_folder(root=str(folder), image_size=8, skip_bad_files=True)
    assert len(data.train) == 12  # the 13th file was skipped


def test_empty_class_and_no_class_folders_are_clear_errors(tmp_path):
    folder = make_class_folder(tmp_path / "pets")
    (folder / "birds").mkdir()
    with pytest.raises(DatasetError, match=r"Class folder .*birds holds no images"):
        image_folder(root=str(folder))
    flat = tmp_path / "flat"
    write_image(flat / "a.png", (1, 2, 3))
    with pytest.raises(DatasetError, match="has no class subfolders"):
        image_folder(root=str(flat))
    with pytest.raises(DatasetError, match="does not exist"):
        image_folder(root=str(tmp_path / "missing"))


def test_folder_over_the_memory_bound_streams_the_same_batches(tmp_path, caplog):
    from cnntrain.data.image_files import FileImageSet
    from cnntrain.data.loader import BatchTransform, StreamingLoader, make_loader

    folder = make_class_folder(tmp_path / "pets")
    cached = image_folder(root=str(folder), image_size=16)
    streamed = image_folder(root=str(folder), image_size=16, cache_limit_mb=0, workers=2)
    assert isinstance(streamed.train, FileImageSet) and streamed.train.shape == (12, 3, 16, 16)
    assert "over data.cache_limit_mb=0: streaming them from disk" in caplog.text
    transform = BatchTransform(None, None, None, augment=build_augmentations(["hflip"]))
    for shuffle, augment, sampler in ((False, False, None), (True, True, None), (True, True, "balanced")):
        options = dict(seed=3, augment=augment, sampler=sampler)  # data.sampler=balanced: the same draws too
        in_memory = make_loader(cached.train, 5, transform, torch.device("cpu"), shuffle, **options)
        from_disk = make_loader(streamed.train, 5, transform, torch.device("cpu"), shuffle, **options)
        assert isinstance(from_disk, StreamingLoader) and len(from_disk) == len(in_memory) == 3
        in_memory.set_epoch(2), from_disk.set_epoch(2)
        for (x1, y1), (x2, y2) in zip(in_memory, from_disk, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_streamed_bad_file_is_named_or_skipped_during_training(tmp_path):
    folder = make_class_folder(tmp_path / "pets", per_class=8)
    (folder / "cats" / "zz_broken.png").write_bytes(b"not an image at all")
    base = [
        "data=image_folder",
        f"data.root={folder}",
        "data.image_size=16",
        "data.cache_limit_mb=0",
        "data.workers=1",
        "model=cifar_cnn",
        "trainer.epochs=1",
        "trainer.progress=none",
        "device=cpu",
    ]
    with pytest.raises(DatasetError) as err:
        train(compose_config(base), run_dir=tmp_path / "strict")
    assert "zz_broken.png" in str(err.value) and "data.skip_bad_files=true" in str(err.value)
    summary = train(compose_config(base + ["data.skip_bad_files=true"]), run_dir=tmp_path / "skip")
    assert summary["status"] == "completed" and summary["train_size"] + summary["val_size"] == 17


def test_training_on_a_folder_end_to_end(tmp_path):
    folder = make_class_folder(tmp_path / "pets", per_class=10)
    cfg = compose_config(
        [
            "data=image_folder",
            f"data.root={folder}",
            "data.image_size=16",
            "model=cifar_cnn",
            "trainer.epochs=2",
            "trainer.progress=none",
            "device=cpu",
            "optimizer.lr=0.05",
        ]
    )
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["train_size"] == 16 and summary["val_size"] == 4 and summary["input_size"] == 32
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert checkpoint["classes"] == ["cats", "dogs"] and len(checkpoint["preprocess"]["mean"]) == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


@pytest.fixture(scope="module")
def trained_pets_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pets_run")
    folder = make_class_folder(tmp_path / "pets", per_class=12)
    cfg = compose_config(
        [
            "data=image_folder",
            f"data.root={folder}",
            "data.image_size=16",
            "model=cifar_cnn",
            "trainer.epochs=4",
            "trainer.progress=none",
            "device=cpu",
            "optimizer.lr=0.05",
            "data.batch_size=8",
            "model.init=default",
        ]
    )
    summary = train(cfg, run_dir=tmp_path / "run")
    new_images = tmp_path / "new"
    write_image(new_images / "a_red.png", COLOURS["cats"], size=(40, 30))
    write_image(new_images / "b_blue_grey.jpg", COLOURS["dogs"], size=(10, 10))  # other size
    write_image(new_images / "c_red_grey.png", COLOURS["cats"], grey=True)
    return tmp_path / "run", new_images, summary


def test_predict_names_the_classes(trained_pets_run):
    from cnntrain.predict import predict

    run_dir, new_images, summary = trained_pets_run
    assert summary["best_val_acc"] == 1.0  # red vs blue is easy: the run has learned it
    predictions = predict(run_dir, new_images, topk=2)
    assert [p.label for p in predictions[:2]] == ["cats", "dogs"]
    assert all(
        0.5 < p.probability <= 1 and [name for name, _ in p.top] == [p.label, ({"cats", "dogs"} - {p.label}).pop()]
        for p in predictions
    )
    assert len(predictions) == 3  # the grey image is converted to 3 channels like in training


def test_predict_command_prints_and_writes_csv(trained_pets_run, tmp_path):
    import csv

    run_dir, new_images, _ = trained_pets_run
    result = run_cli(
        "cnntrain-predict",
        f"run={run_dir}",
        f"inputs={new_images / 'a_red.png'}",
        "topk=1",
        f"output={tmp_path / 'out.csv'}",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "cats" in result.stdout
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["predicted"] == "cats" and rows[0]["top_k"].startswith("cats:")
    bad = run_cli("cnntrain-predict", f"run={run_dir}", "inputs=/no/such/file", "topk=1", timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    zero = run_cli("cnntrain-predict", f"run={run_dir}", f"inputs={new_images}", "topk=0", timeout=120)
    assert zero.returncode == 2 and "topk must be a positive whole number, got '0'" in zero.stderr


@pytest.mark.parametrize("dtype, scale", [(np.uint16, 64), (np.int32, 64), (np.float32, 64 / 65535)])
def test_16_and_32_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path, dtype, scale):
    """A 16-bit gradient (saved as a 16-bit PNG where the format allows) keeps its shades:
    Pillow's convert("L") alone would clip all but the darkest 1/256 to white."""
    from cnntrain.data.image_files import image_to_array

    gradient = np.arange(1024).reshape(32, 32) * 64  # 0 .. 65472
    image = Image.fromarray((gradient * (scale / 64)).astype(dtype))
    if dtype == np.uint16:
        image.save(tmp_path / "deep.png")
        image = Image.open(tmp_path / "deep.png")
        assert image.mode in ("I;16", "I")
    array = image_to_array(image, channels=1, height=32)
    expected = np.round(gradient / 257)
    assert np.abs(array[0].astype(int) - expected).max() <= 1
    assert (array == 255).mean() < 0.01
