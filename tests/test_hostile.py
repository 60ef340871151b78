"""Hostile and careless input (issue 24): each class of input that used to pass unchecked.

Non-finite settings, the Python API's override checks, data files that disagree with
themselves, a new spelling replacing an old one, links out of a run folder, sidecar files
and checkpoints that do not fit their model, tensors of the wrong kind, read-only and full
file systems. docs/errors.md lists the messages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnntrain.checks import check_config
from cnntrain.errors import CnnTrainError, ConfigError
from tests.conftest import compose_config

SMOKE = ["experiment=smoke", "trainer.epochs=1"]


def script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run_command(*command, cwd, timeout=300):
    return subprocess.run([script(command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- settings that mean nothing

@pytest.mark.parametrize("overrides, key, shown", [
    (["trainer.mixup.alpha=inf"], "trainer.mixup.alpha", "inf"),
    (["trainer.mixup.cutmix_alpha=nan"], "trainer.mixup.cutmix_alpha", "nan"),
    (["optimizer.lr=inf"], "optimizer.lr", "inf"),
    (["optimizer.lr=nan"], "optimizer.lr", "nan"),
    (["optimizer.weight_decay=-inf"], "optimizer.weight_decay", "-inf"),
    (["trainer.label_smoothing=nan"], "trainer.label_smoothing", "nan"),
    (["trainer.ema=nan"], "trainer.ema", "nan"),
    (["trainer.grad_clip_norm=inf"], "trainer.grad_clip_norm", "inf"),
    (["trainer.checkpoint_every_minutes=inf"], "trainer.checkpoint_every_minutes", "inf"),
    (["trainer.early_stopping.min_delta=nan"], "trainer.early_stopping.min_delta", "nan"),
    (["data.val_fraction=nan"], "data.val_fraction", "nan"),
    (["data.noise=inf"], "data.noise", "inf"),
    (["scheduler=step", "scheduler.gamma=inf"], "scheduler.gamma", "inf"),
    (["scheduler=onecycle", "scheduler.max_lr=inf"], "scheduler.max_lr", "inf"),
    (["scheduler=cosine", "scheduler.warmup_epochs=nan"], "scheduler.warmup_epochs", "nan"),
    (["data.augment=[{name: random_rotation, degrees: inf}]"], "data.augment[0].degrees", "inf"),
    (["model=mlp", "model.dropout=nan"], "model.dropout", "nan"),
])
def test_non_finite_numbers_are_refused_in_every_setting(overrides, key, shown):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config(SMOKE + overrides))
    assert str(caught.value) == f"{key} must be a finite number, got {shown}: no setting takes inf or nan."


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.momentum=2"], "optimizer.momentum must be a number from 0 up to (not) 1 (0.9 is usual), got 2."),
    (["optimizer.momentum=1.0"], "optimizer.momentum must be a number from 0 up to (not) 1 (0.9 is usual), got 1.0."),
    (["optimizer=rmsprop", "optimizer.alpha=1.5"],
     "optimizer.alpha must be a number from 0 up to (not) 1 (0.99 is usual), got 1.5."),
])
def test_out_of_range_optimizer_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config(SMOKE + overrides))
    assert str(caught.value) == message


def test_mixup_alpha_inf_on_the_command_line_is_one_line_with_exit_2(tmp_path):
    result = run_command("cnntrain", *SMOKE, "trainer.mixup.alpha=inf", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: trainer.mixup.alpha must be a finite number, got inf: no setting takes "
                                     "inf or nan.")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- the Python API checks what the CLI checks

@pytest.mark.parametrize("override, message", [
    ("+trainer.epochz=3", "Unknown setting 'trainer.epochz' (+trainer.epochz=3). Did you mean 'trainer.epochs'?"),
    ("trainer.epochz=3", "Unknown setting 'trainer.epochz' (trainer.epochz=3). Did you mean 'trainer.epochs'?"),
    ("lr=0.1", "Unknown setting 'lr' (lr=0.1). Did you mean 'optimizer.lr'?"),
    ("~trainer", "~trainer would remove the whole 'trainer' section"),
    ("model=lenett", "Unknown model 'lenett' (model=lenett). Did you mean 'lenet'?"),
])
def test_the_python_api_refuses_overrides_the_command_line_refuses(tmp_path, override, message):
    from cnntrain import compose, train

    with pytest.raises(ConfigError) as caught:
        train(*SMOKE, override, "trainer.progress=none", run_dir=tmp_path / "run")
    assert str(caught.value).startswith(message)
    assert not (tmp_path / "run").exists()  # refused before a folder was made
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
                       .replace(".", r"\.").replace("?", r"\?")):
        compose([*SMOKE, override])


# ---------------------------------------------------------------- data files that disagree with themselves

def _idx_root(tmp_path, train_images, train_labels):
    """A data.root with the four Fashion-MNIST IDX files, the train pair as given."""
    import torch

    from cnntrain.data.idx import write_idx

    root = tmp_path / "idx"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", train_images)
    write_idx(root / "train-labels-idx1-ubyte", train_labels)
    write_idx(root / "t10k-images-idx3-ubyte", torch.zeros(20, 28, 28, dtype=torch.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", torch.arange(20) % 10)
    return root


@pytest.mark.parametrize("images, labels, message", [
    ((300, 28, 28), (150,), "{root}/train-images-idx3-ubyte holds 300 images but {root}/train-labels-idx1-ubyte "
                            "holds 150 labels: the two files do not belong together."),
    ((150, 28, 28), (300,), "{root}/train-images-idx3-ubyte holds 150 images but {root}/train-labels-idx1-ubyte "
                            "holds 300 labels"),
    ((300, 784), (300,), "{root}/train-images-idx3-ubyte holds an array of shape (300, 784); MNIST-format images "
                         "are 3-D (count, height, width)."),
    ((300, 28, 28), (300, 1), "{root}/train-labels-idx1-ubyte holds an array of shape (300, 1); MNIST-format "
                              "labels are 1-D"),
])
def test_idx_files_that_disagree_with_each_other_are_refused_naming_them(tmp_path, images, labels, message):
    import torch

    from cnntrain.build import build_data
    from cnntrain.errors import DatasetError

    root = _idx_root(tmp_path, torch.zeros(images, dtype=torch.uint8), torch.zeros(labels, dtype=torch.uint8))
    cfg = compose_config(["data=fashion_mnist", f"data.root={root}", "data.download=false", "device=cpu"])
    with pytest.raises(DatasetError) as caught:
        build_data(check_config(cfg))
    assert message.format(root=root) in str(caught.value)


def test_images_and_labels_that_do_not_pair_up_are_refused_before_the_validation_hold_out():
    """Any dataset: 300 images and 150 labels were paired up by the hold-out's index and trained on 150."""
    import torch

    from cnntrain.data import ImageData, ImageSet, prepare
    from cnntrain.errors import DatasetError

    train = ImageSet(torch.zeros(300, 1, 4, 4, dtype=torch.uint8), torch.arange(150) % 2)
    test = ImageSet(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10) % 2)
    with pytest.raises(DatasetError, match=r"^mine's train split has 300 images but 150 labels"):
        prepare("mine", ImageData(["a", "b"], train, test), val_fraction=0.1, seed=0)
    flat = ImageSet(torch.zeros(300, 16, dtype=torch.uint8), torch.arange(300) % 2)
    with pytest.raises(DatasetError, match=r"^mine's train images have shape \(300, 16\)"):
        prepare("mine", ImageData(["a", "b"], flat, test), val_fraction=0.1, seed=0)


# ---------------------------------------------------------------- a new spelling replaces the old one

def test_eval_with_data_root_on_a_run_trained_with_data_path(tmp_path):
    """The README's example: a run trained with data.path= (the old name), evaluated with data.root=<new>."""
    from cnntrain import train
    from cnntrain.evaluation import evaluate_run
    from tests.test_folder import make_class_folder

    make_class_folder(tmp_path / "old", per_class=6)
    make_class_folder(tmp_path / "new", per_class=3)
    run_dir = tmp_path / "run"
    train("data=image_folder", f"data.path={tmp_path / 'old'}", "data.image_size=8", "model=mlp", "device=cpu",
          "trainer.epochs=1", "trainer.progress=none", "data.batch_size=4", "data.val_fraction=0.25",
          run_dir=run_dir)
    result = evaluate_run(run_dir, split="all", overrides=[f"data.root={tmp_path / 'new'}"])
    assert result.evaluation.labels is not None and len(result.evaluation.labels) == 6  # new's 2 x 3 images
    assert not result.own_data and result.folder.path.name.startswith("image_folder-new-")
