"""Bad input gets one clear message naming what was wrong, never a traceback (docs/errors.md lists them).

The command-line cases run the real CLI in a subprocess; the value checks run
`check_config` on the composed config, which is what the CLI calls before any data loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_config
from cnntrain.errors import CnnTrainError
from cnntrain.run_folder import RunFolder
from tests.conftest import compose_config
from tests.helpers import run_cli

SMOKE = ["experiment=smoke", "trainer.epochs=1"]


def cnntrain(*args, cwd):
    return run_cli("cnntrain", *args, cwd=cwd)


# ------------------------------------------------------------------ unknown keys, before Hydra


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["trainer.epoch=3"],
            "Unknown setting 'trainer.epoch' (trainer.epoch=3). Did you mean 'trainer.epochs'? "
            "trainer has: accumulate_grad_batches, channels_last,",
        ),
        (["lr=0.1"], "Unknown setting 'lr' (lr=0.1). Did you mean 'optimizer.lr'?"),
        (["+trainer.epoch=3"], "Unknown setting 'trainer.epoch' (+trainer.epoch=3). Did you mean 'trainer.epochs'?"),
        (
            ["trainer.early_stopping.patiense=2"],
            "Did you mean 'trainer.early_stopping.patience'? trainer.early_stopping has: metric, min_delta, patience.",
        ),
        (["model.widht=3"], "Settings that configs/model/<file> does not list are added with +: +model.widht=..."),
        (["-m", "optimizer.lr=0.1,0.2", "trainer.epoch=1"], "Unknown setting 'trainer.epoch' (trainer.epoch=1)"),
        (["trainer=abc"], "trainer is a section (epochs, log_every,"),
        (
            ["-m", "optimizer=sgd,adam", "optimizer.momentum=0.5"],
            "Unknown setting 'optimizer.momentum' (optimizer.momentum=0.5). Settings that configs/optimizer/<file> "
            "does not list are added with +: +optimizer.momentum=... (the optimizer builder then checks them). "
            "(in the jobs with optimizer=adam)",
        ),
        (["~model"], "~model would remove the whole 'model' section, which every run needs."),
        (["hydra.run.dir="], "hydra.run.dir= needs a folder; leave it out for a new timestamped one under outputs/."),
        (["-m", "optimizer.lr=0.1,0.2", "hydra.sweep.subdir=same"], "hydra.sweep.subdir=same would put every job"),
    ],
)
def test_unknown_keys_get_a_did_you_mean_not_hydras_struct_error(tmp_path, args, message):
    result = cnntrain(*SMOKE, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "not in struct" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_a_removed_key_the_run_needs_is_named(tmp_path):
    result = cnntrain(*SMOKE, "~trainer.epochs", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "The config has no usable 'trainer.epochs': was it removed with ~" in result.stderr


def test_image_folder_takes_root_like_every_dataset_and_path_still_works(tmp_path):
    for key in ("root", "path"):
        cfg = compose_config(["data=image_folder", f"data.{key}={tmp_path / 'nowhere'}", "model=cifar_cnn"])
        with pytest.raises(CnnTrainError, match=r"Image folder .*nowhere does not exist \(data.root\)"):
            from cnntrain.build import build_data

            build_data(check_config(cfg))


def test_a_single_augmentation_and_a_single_import_are_not_spelled_out_letter_by_letter():
    from cnntrain.data.augment import build_augmentations
    from cnntrain.user_code import module_list

    assert len(build_augmentations("hflip")) == 1
    assert module_list("os") == ["os"] and module_list("[a,b]") == ["a", "b"]


def test_a_home_relative_path_is_expanded_and_a_non_ascii_one_read(tmp_path, monkeypatch):
    from cnntrain.override_text import expand_home, quote_for_hydra

    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_home(["data.root=~/xray", "inputs=~", "a=b~"]) == [
        f"data.root={tmp_path}/xray",
        f"inputs={tmp_path}",
        "a=b~",
    ]
    assert quote_for_hydra(["data.root=/data/café", "data.root=/plain", "x=[a,b]", "d=/data/it's"]) == [
        "data.root='/data/café'",
        "data.root=/plain",
        "x=[a,b]",
        'd="/data/it\'s"',
    ]


# ------------------------------------------------------------------ values, before data loads


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.lr=-1"], "optimizer=sgd cannot take its settings (optimizer.lr=-1,"),
        (["optimizer.lr=abc"], "optimizer.lr must be a number, got 'abc'."),
        (["optimizer.lr=[1,2]"], "optimizer.lr must be a number, got [1, 2]."),
        (["optimizer.momentum=-1"], "Invalid momentum value: -1"),
        (["scheduler=step", "scheduler.step_size=0"], "scheduler=step cannot take its settings (scheduler.step_size=0"),
        (["seed=abc"], "seed must be a whole number from 0 to 2**63 - 1, got 'abc'."),
        (
            ["data.resize=0"],
            "data.resize must be null (the model's input size) or a whole number of pixels >= 1, got 0.",
        ),
        (["data.resize=100000"], "data.resize=100000 would need at least 2,384 GiB for one batch of 64 input images"),
        (["data.eval_batch_size=0"], "data.eval_batch_size must be null (2 x batch_size) or a whole number >= 1"),
        (["data.augment=[{name:rotation,degrees:abc}]"], "degrees must be a number, got 'abc'."),
        (["data.augment=[{name:random_crop,padding:-3}]"], "data.augment[0] ({'name': 'random_crop', 'padding': -3})"),
        # true/false and text where a number goes, and the other way round (YAML reads `true` as a boolean)
        (["optimizer.momentum=true"], "optimizer.momentum must be a number, got True."),
        (["optimizer.weight_decay=true"], "optimizer.weight_decay must be a number, got True."),
        (["optimizer.nesterov=abc", "optimizer.momentum=0.9"], "optimizer.nesterov must be true or false, got 'abc'."),
        (
            ["scheduler=multistep", "scheduler.milestones=abc"],
            "scheduler.milestones must be a list such as [30, 60, 90]",
        ),
        (["trainer.grad_clip_norm=true"], "trainer.grad_clip_norm must be null (off) or a positive number, got True."),
        (["trainer.early_stopping.patience=true"], "trainer.early_stopping.patience must be null (off) or a positive"),
        (
            ["trainer.log_every=abc"],
            "trainer.log_every must be a positive whole number up to 2,147,483,647, got 'abc'.",
        ),
        (
            ["trainer.epochs=99999999999999999999"],  # trained on and on: no value past 2**31 - 1 means a run
            "trainer.epochs must be a positive whole number up to 2,147,483,647, got 99999999999999999999.",
        ),
        (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer=adam cannot take its settings"),
        (["seed=99999999999999999999"], "seed must be a whole number from 0 to 2**63 - 1"),
        (["imports=[1]"], "imports must be a list of module names, e.g. imports=[my_models], got [1]."),
        (
            ["scheduler=step", "scheduler.gamma=-1", "scheduler.step_size=1", "trainer.epochs=3"],
            "scheduler=step would set a negative learning rate (-0.1)",
        ),
        (["scheduler=cosine", "scheduler.min_lr=-1"], "scheduler=cosine would set a negative learning rate (-1)"),
    ],
)
def test_bad_values_are_named_before_any_data_loads(overrides, message):
    with pytest.raises(CnnTrainError) as caught:
        check_config(compose_config(SMOKE + overrides))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("data.num_classes=1", "data.num_classes must be a whole number >= 2, got 1."),
        ("data.train_size=0", "data.train_size must be a whole number >= 2, got 0."),
        ("data.noise=-1", "data.noise must be a number >= 0, got -1."),
        ("data.image_size=0", "data.image_size must be a whole number of pixels >= 4, got 0."),
        ("data.channels=2", "data.channels must be 1 (grey) or 3 (RGB), got 2."),
    ],
)
def test_synthetic_data_settings_are_checked(setting, message):
    from cnntrain.build import build_data

    with pytest.raises(CnnTrainError) as caught:
        build_data(check_config(compose_config(SMOKE + [setting])))
    assert message in str(caught.value)


def test_degenerate_data_is_refused():
    from cnntrain.data import ImageData, ImageSet, prepare

    def images(n, labels=None):
        return ImageSet(
            torch.zeros(n, 1, 4, 4, dtype=torch.uint8),
            torch.tensor(labels if labels is not None else [i % 2 for i in range(n)]),
        )

    cases = [
        (
            ImageData(["only"], images(4, [0] * 4), images(2, [0] * 2)),
            "has 1 class (only): a classifier needs at least 2",
        ),
        (ImageData(["a", "b"], images(0, []), images(2)), "has no train image"),
        (
            ImageData(["a", "b"], images(4), images(2, [0, 5])),
            "validation labels run from 0 to 5, but it has 2 classes",
        ),
        (
            ImageData(
                ["a", "b"], ImageSet(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1])), images(2)
            ),
            "train split has 3 images but 2 labels",
        ),
    ]
    for data, message in cases:
        with pytest.raises(CnnTrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
            prepare("mine", data, val_fraction=0.0, seed=0)


# ------------------------------------------------------------------ files


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("files") / "run"
    from cnntrain import train

    train(*SMOKE, "trainer.progress=none", run_dir=folder)
    return folder


def test_a_plain_state_dict_is_not_a_checkpoint(finished_run, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(load_checkpoint(finished_run / "checkpoints" / "best.pt")["state_dict"], path)
    with pytest.raises(CnnTrainError, match=r"is not a cnntrain checkpoint: it is a bare state dict \(weights only\)"):
        load_checkpoint(path)


def test_a_damaged_checkpoint_says_damaged(finished_run, tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes((finished_run / "checkpoints" / "last.pt").read_bytes()[:1000])
    with pytest.raises(CnnTrainError) as caught:
        load_checkpoint(path)
    assert "is damaged (" in str(caught.value) and "checkpoints/best.pt may still be whole" in str(caught.value)
    assert "Errno" not in str(caught.value)


class _Code:
    def __reduce__(self):
        return (print, ("this would run",))


def test_an_unsafe_checkpoint_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"x": _Code()}, path)
    with pytest.raises(CnnTrainError) as caught:
        load_checkpoint(path)
    assert "Refused to load checkpoint" in str(caught.value) and "could run code" in str(caught.value)
    assert "weights_only" not in str(caught.value)


def test_a_damaged_summary_on_resume_says_what_to_do(finished_run, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    (folder / "summary.json").write_text("{bad json")
    result = cnntrain(f"resume={folder}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "summary.json is damaged (" in result.stderr and "delete it and try again" in result.stderr
    with pytest.raises(CnnTrainError, match="is damaged"):
        RunFolder(folder).read_summary()


def test_a_data_root_with_only_some_files_is_an_error_naming_the_missing_ones(tmp_path):
    from cnntrain.build import build_data
    from tests.conftest import write_fake_mnist

    raw = write_fake_mnist(tmp_path / "data" / "FashionMNIST" / "raw")
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    cfg = compose_config(["data=fashion_mnist", f"data.root={tmp_path / 'data'}", "data.download=false"])
    with pytest.raises(
        CnnTrainError,
        match=r"raw holds only some of the dataset's files: t10k-labels-idx1-ubyte "
        r"\(raw or .gz\) is missing",
    ):
        build_data(check_config(cfg))


def test_the_first_line_names_where_the_data_came_from(fashion_root, tmp_path):
    from cnntrain import train

    train(
        "data=fashion_mnist",
        f"data.root={fashion_root}",
        "trainer.epochs=1",
        "trainer.progress=none",
        "data.download=false",
        run_dir=tmp_path / "run",
    )
    first = (tmp_path / "run" / "train.log").read_text().splitlines()[0]
    assert first.startswith(f"cnntrain: lenet on fashion_mnist from {fashion_root / 'FashionMNIST' / 'raw'} (")


def test_a_run_folder_that_cannot_be_made_is_one_message(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = cnntrain(*SMOKE, f"hydra.run.dir={tmp_path / 'file' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"Cannot create the folder {tmp_path / 'file' / 'run'} (hydra.run.dir): Not a directory." in result.stderr
