"""Hostile and careless input (issue 24): each class of input that used to pass unchecked.

Non-finite settings, the Python API's override checks, data files that disagree with
themselves, a new spelling replacing an old one, links out of a run folder, sidecar files
and checkpoints that do not fit their model, tensors of the wrong kind, read-only and full
file systems. docs/errors.md lists the messages.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cnntrain.checks import check_config
from cnntrain.errors import CnnTrainError, ConfigError
from tests.conftest import compose_config
from tests.helpers import run_cli as run_command

SMOKE = ["experiment=smoke", "trainer.epochs=1"]


# ---------------------------------------------------------------- settings that mean nothing


@pytest.mark.parametrize(
    "overrides, key, shown",
    [
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
    ],
)
def test_non_finite_numbers_are_refused_in_every_setting(overrides, key, shown):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config(SMOKE + overrides))
    assert str(caught.value) == f"{key} must be a finite number, got {shown}: no setting takes inf or nan."


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.momentum=2"], "optimizer.momentum must be a number from 0 up to (not) 1 (0.9 is usual), got 2."),
        (
            ["optimizer.momentum=1.0"],
            "optimizer.momentum must be a number from 0 up to (not) 1 (0.9 is usual), got 1.0.",
        ),
        (
            ["optimizer=rmsprop", "optimizer.alpha=1.5"],
            "optimizer.alpha must be a number from 0 up to (not) 1 (0.99 is usual), got 1.5.",
        ),
    ],
)
def test_out_of_range_optimizer_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config(SMOKE + overrides))
    assert str(caught.value) == message


def test_mixup_alpha_inf_on_the_command_line_is_one_line_with_exit_2(tmp_path):
    result = run_command("cnntrain", *SMOKE, "trainer.mixup.alpha=inf", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: trainer.mixup.alpha must be a finite number, got inf: no setting takes inf or nan."
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- the Python API checks what the CLI checks


@pytest.mark.parametrize(
    "override, message",
    [
        ("+trainer.epochz=3", "Unknown setting 'trainer.epochz' (+trainer.epochz=3). Did you mean 'trainer.epochs'?"),
        ("trainer.epochz=3", "Unknown setting 'trainer.epochz' (trainer.epochz=3). Did you mean 'trainer.epochs'?"),
        ("lr=0.1", "Unknown setting 'lr' (lr=0.1). Did you mean 'optimizer.lr'?"),
        ("~trainer", "~trainer would remove the whole 'trainer' section"),
        ("model=lenett", "Unknown model 'lenett' (model=lenett). Did you mean 'lenet'?"),
        ("model:mlp", "Settings are written key=value, not key:value: write model=mlp."),  # was Hydra's grammar text
        ("optimizer.lr=0.1,0.2", "optimizer.lr=0.1,0.2 gives several values (a sweep), and this command takes one"),
        ("model=[mlp,lenet]", "model=[mlp,lenet]: model takes one choice (a file in configs/model/), not a list."),
    ],
)
def test_the_python_api_refuses_overrides_the_command_line_refuses(tmp_path, override, message):
    from cnntrain import compose, train

    with pytest.raises(ConfigError) as caught:
        train(*SMOKE, override, "trainer.progress=none", run_dir=tmp_path / "run")
    assert str(caught.value).startswith(message)
    assert not (tmp_path / "run").exists()  # refused before a folder was made
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
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


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (
            (300, 28, 28),
            (150,),
            "{root}/train-images-idx3-ubyte holds 300 images but {root}/train-labels-idx1-ubyte "
            "holds 150 labels: the two files do not belong together.",
        ),
        (
            (150, 28, 28),
            (300,),
            "{root}/train-images-idx3-ubyte holds 150 images but {root}/train-labels-idx1-ubyte holds 300 labels",
        ),
        (
            (300, 784),
            (300,),
            "{root}/train-images-idx3-ubyte holds an array of shape (300, 784); MNIST-format images "
            "are 3-D (count, height, width).",
        ),
        (
            (300, 28, 28),
            (300, 1),
            "{root}/train-labels-idx1-ubyte holds an array of shape (300, 1); MNIST-format labels are 1-D",
        ),
    ],
)
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
    train(
        "data=image_folder",
        f"data.path={tmp_path / 'old'}",
        "data.image_size=8",
        "model=mlp",
        "device=cpu",
        "trainer.epochs=1",
        "trainer.progress=none",
        "data.batch_size=4",
        "data.val_fraction=0.25",
        run_dir=run_dir,
    )
    result = evaluate_run(run_dir, split="all", overrides=[f"data.root={tmp_path / 'new'}"])
    assert result.evaluation.labels is not None and len(result.evaluation.labels) == 6  # new's 2 x 3 images
    assert not result.own_data and result.folder.path.name.startswith("image_folder-new-")


# ---------------------------------------------------------------- a finished run to be hostile to


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A one-epoch smoke run (synthetic 10 classes, grey 28x28 images, the model at 32) and an image file."""
    import numpy as np
    from PIL import Image

    from cnntrain import train

    base = tmp_path_factory.mktemp("hostile")
    train(*SMOKE, "trainer.progress=none", "data.train_size=96", "data.test_size=32", run_dir=base / "run")
    Image.fromarray(np.full((28, 28), 128, dtype=np.uint8)).save(base / "image.png")
    return base / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    import shutil

    shutil.copytree(finished_run, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


# ---------------------------------------------------------------- no write through a link out of the run folder


def _outside(tmp_path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    return outside


def _unchanged(outside: Path) -> bool:
    return (
        sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
        and (outside / "precious.txt").read_text() == "keep me"
    )


def test_eval_does_not_write_through_an_eval_link_out_of_the_run(run_copy, tmp_path):
    from cnntrain.evaluation import evaluate_run

    outside = _outside(tmp_path)
    (run_copy / "eval").symlink_to(outside)
    with pytest.raises(CnnTrainError) as caught:
        evaluate_run(run_copy)
    assert str(caught.value) == (
        f"{run_copy / 'eval'} is a link to {outside}, outside the run folder {run_copy}; cnntrain writes only inside "
        f"a run folder (through a link it would replace files elsewhere). Replace the link with a folder, or "
        f"evaluate a copy of the run folder."
    )
    assert _unchanged(outside)


def test_eval_does_not_write_through_a_link_deeper_in_eval(run_copy, tmp_path):
    from cnntrain.evaluation import evaluate_run

    outside = _outside(tmp_path)
    (run_copy / "eval").mkdir()
    (run_copy / "eval" / "test_best").symlink_to(outside)
    with pytest.raises(CnnTrainError, match=r"eval/test_best is a link to .*outside, outside the run folder"):
        evaluate_run(run_copy)
    assert _unchanged(outside)


def test_a_link_that_stays_inside_the_run_folder_is_fine(run_copy):
    from cnntrain.evaluation import evaluate_run

    (run_copy / "results").mkdir()
    (run_copy / "eval").symlink_to(run_copy / "results")
    evaluate_run(run_copy)
    assert (run_copy / "results" / "test_best" / "eval.json").is_file()


def test_export_does_not_write_through_an_export_link(run_copy, tmp_path):
    from cnntrain.export import export_run

    outside = _outside(tmp_path)
    (run_copy / "export").symlink_to(outside)
    with pytest.raises(
        CnnTrainError,
        match=r"export is a link to .*outside, outside the run folder .*Replace the "
        r"link with a folder, or write the export elsewhere with "
        r"output=<file>\.pt2\.$",
    ):
        export_run(run_copy, "exported_program", say=lambda line: None)
    assert _unchanged(outside)


@pytest.mark.parametrize(
    "link", ["train.log", "metrics.csv", "checkpoints", ".cnntrain.lock", "summary.json", "curves.png"]
)
def test_a_resume_does_not_write_through_a_link_out_of_the_run_folder(run_copy, tmp_path, link):
    """Each file or folder a resume writes, moved out of the run folder and linked to from inside it."""
    import shutil

    from cnntrain import resume

    outside = tmp_path / "outside"
    outside.mkdir()
    target, moved = run_copy / link, outside / link
    if target.exists():
        shutil.move(target, moved)
    else:
        moved.write_text("keep me")
    target.symlink_to(moved)
    before = {p: p.read_bytes() for p in [moved, *moved.rglob("*")] if p.is_file()}
    with pytest.raises(CnnTrainError, match=f"{link} is a link to .*outside.*, outside the run folder"):
        resume(run_copy, "trainer.epochs=2", "trainer.progress=none")
    assert {p: p.read_bytes() for p in [moved, *moved.rglob("*")] if p.is_file()} == before


@pytest.mark.slow
def test_predict_does_not_write_through_a_predictions_link(finished_run, run_copy, tmp_path):
    outside = _outside(tmp_path)
    image = finished_run.parent / "image.png"
    # A link to a file outside: the name is taken, so the predictions go to the next free name.
    (run_copy / "predictions-image.csv").symlink_to(outside / "precious.txt")
    beside = run_command("cnntrain-predict", "run=run", f"inputs={image}", cwd=tmp_path)
    assert beside.returncode == 0, beside.stderr
    assert beside.stdout.splitlines()[-1] == "all 1 predictions written to run/predictions-image-2.csv"
    assert _unchanged(outside)
    # A dangling link is a name taken too; named as output=, a link out of the run folder is refused.
    (run_copy / "predictions-image-3.csv").symlink_to(outside / "new.csv")
    skipped = run_command("cnntrain-predict", "run=run", f"inputs={image}", cwd=tmp_path)
    assert skipped.stdout.splitlines()[-1] == "all 1 predictions written to run/predictions-image-4.csv"
    refused = run_command(
        "cnntrain-predict", "run=run", f"inputs={image}", "output=run/predictions-image-3.csv", cwd=tmp_path
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        "error: run/predictions-image-3.csv is a link to " in refused.stderr
        and "Replace the link, or write the predictions elsewhere with output=<csv file>." in refused.stderr
    )
    assert _unchanged(outside)
    done = run_command("cnntrain-predict", "run=run", f"inputs={image}", "output=mine.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mine.csv").read_text().startswith("file,predicted,probability,top_k")


# ---------------------------------------------------------------- checkpoints and tensors checked before use


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(classes=c["classes"][:3]), "names 3 classes, but the model gives 10 outputs per image."),
        (lambda c: c.update(classes="abc"), "has classes='abc'; it needs the list of the model's class names"),
        (lambda c: c["preprocess"].update(mean=[0.5], std=[0.0]), "has preprocess.std=[0.0]; images are divided by it"),
        (lambda c: c["preprocess"].update(size=0), "has preprocess.size=0; it needs the model's input size"),
        (lambda c: c["model"].update(in_channels=3), "its weights do not fit the model its recipe builds"),
    ],
)
def test_a_checkpoint_that_does_not_fit_its_model_is_refused(run_copy, change, message):
    import torch

    from cnntrain.checkpoint import load_checkpoint
    from cnntrain.predict import load_run

    path = run_copy / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(path)
    change(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(CnnTrainError) as caught:
        load_run(run_copy)
    assert str(caught.value).startswith(f"Checkpoint {path}")
    assert message in str(caught.value)
    assert str(caught.value).endswith(
        "It was changed after the run wrote it: copy the run folder again from where it came from."
    )


TENSORS = "a (C, H, W) or (H, W) tensor of uint8 (0..255) or of floats in [0, 1], C = 1 (grey), 3 (RGB) or 4 (RGBA)"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: t.rand(5, 28, 28), f"Cannot predict on a tensor of shape (5, 28, 28): 5 channels. Give {TENSORS}."),
        (
            lambda t: t.randint(0, 256, (1, 28, 28)),
            f"Cannot predict on a torch.int64 tensor: give {TENSORS}. Convert "
            f"0..255 values with image.to(torch.uint8).",
        ),
        (
            lambda t: t.full((1, 28, 28), 200.0),
            "Cannot predict on a float tensor with values from 200 to 200: float "
            "images must be in [0, 1]. For 0..255 values pass a uint8 tensor",
        ),
        (lambda t: t.full((1, 28, 28), -0.5), "with values from -0.5 to -0.5: float images must be in [0, 1]."),
        (
            lambda t: t.full((1, 28, 28), float("nan")),
            f"Cannot predict on a tensor holding nan or inf: give {TENSORS}.",
        ),
        (lambda t: t.rand(28, 28, 3), "It looks like (H, W, C): pass image.permute(2, 0, 1)."),
        (lambda t: t.rand(784), f"Cannot predict on a tensor of shape (784,): give {TENSORS}"),
        (lambda t: t.rand(1, 1, 1, 28, 28), "Cannot predict on a tensor of shape (1, 1, 1, 28, 28)"),
        (lambda t: t.rand(0, 1, 28, 28), "No images to predict on: the list or batch given is empty."),
        (lambda t: [], "No images to predict on: the list or batch given is empty."),
    ],
)
def test_tensors_of_the_wrong_shape_dtype_or_range_are_named(finished_run, make, message):
    import torch

    from cnntrain.predict import load_run

    with pytest.raises(CnnTrainError) as caught:
        load_run(finished_run).predict(make(torch))
    assert message in str(caught.value)


def test_tensors_the_api_documents_predict_as_the_image_file_does(finished_run):
    import torch

    from cnntrain.predict import load_run

    run = load_run(finished_run)
    grey = torch.full((1, 28, 28), 128, dtype=torch.uint8)
    from_file = run.predict(finished_run.parent / "image.png")[0]
    for image in (grey, grey[0], grey.float() / 255, grey.double() / 255, grey.expand(3, 28, 28), grey[None]):
        got = run.predict(image)[0]
        assert got.label == from_file.label and got.probability == pytest.approx(from_file.probability, abs=1e-2)


# ---------------------------------------------------------------- read-only and full file systems


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB tmpfs (mount needs root: skipped without it); unmounted afterwards."""
    import os

    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0 or not os.path.ismount(mount):
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip() or 'not permitted'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_export_and_predict_on_a_read_only_run_folder_say_where_and_offer_output(finished_run, small_fs, tmp_path):
    import shutil

    shutil.copytree(finished_run, small_fs / "run")
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_fs)]).returncode == 0
    image = finished_run.parent / "image.png"
    export = run_command("cnntrain-export", f"run={small_fs / 'run'}", "format=exported_program", cwd=tmp_path)
    assert export.returncode == 2 and "Traceback" not in export.stderr
    assert export.stderr.strip() == (
        "error: Cannot write to fs/run/export: Read-only file system. "
        "Write the export to a folder you can write to with output=<folder>/model.pt2."
    )
    predict = run_command("cnntrain-predict", f"run={small_fs / 'run'}", f"inputs={image}", cwd=tmp_path)
    assert predict.returncode == 2 and "Traceback" not in predict.stderr
    assert predict.stderr.strip() == (
        "error: Cannot write to fs/run: Read-only file system. Write the "
        "predictions to a folder you can write to with output=<folder>/predictions.csv."
    )
    elsewhere = run_command(
        "cnntrain-predict", f"run={small_fs / 'run'}", f"inputs={image}", "output=p.csv", cwd=tmp_path
    )
    assert elsewhere.returncode == 0 and (tmp_path / "p.csv").is_file()


def test_a_disk_that_fills_while_a_checkpoint_is_written_is_the_file_error_message(small_fs):
    import torch

    from cnntrain.checkpoint import save_checkpoint

    with pytest.raises(OSError) as caught:  # torch's own: RuntimeError "[enforce fail at inline_container.cc]"
        save_checkpoint({"weights": torch.zeros(2**20)}, small_fs / "last.pt")
    assert caught.value.errno == 28 and caught.value.filename == str(small_fs / "last.pt")
    assert list(small_fs.iterdir()) == []  # no temporary file left


def test_torchs_serializer_failure_becomes_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """The same without a small file system: torch.save failing as it does on a full disk, with room (EIO) and
    without (ENOSPC), mid-run: the run's file-error message and a whole last.pt."""
    import json

    import cnntrain.checkpoint as checkpoint_module
    import cnntrain.safe_writes as safe_writes
    from cnntrain import train

    real_save = checkpoint_module.torch.save

    def save_until_full(state, f):
        if isinstance(state, dict) and state.get("epoch") == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        real_save(state, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_full)
    monkeypatch.setattr(safe_writes, "FULL_DISK_BYTES", 2**62)  # any disk counts as full
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CnnTrainError) as caught:
        train(*SMOKE[:1], "trainer.epochs=3", "trainer.progress=none", run_dir=tmp_path / "run")
    message = str(caught.value)
    assert message.startswith(f"Cannot write or read {tmp_path / 'run' / 'checkpoints'}/")
    assert ": No space left on device. checkpoints/last.pt in run is whole." in message
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"

    monkeypatch.setattr(safe_writes, "FULL_DISK_BYTES", 0)  # a disk with room: the write failed for another reason
    error = safe_writes.write_failure(RuntimeError("[enforce fail at inline_container.cc:1] . x"), tmp_path / "a.pt")
    assert (
        error.errno == 5
        and "the file could not be written ([enforce fail at inline_container.cc:1] . x)" in error.strerror
    )
    assert safe_writes.write_failure(RuntimeError("CUDA out of memory"), tmp_path / "a.pt") is None


# ---------------------------------------------------------------- docs/errors.md names tests that exist


def test_every_test_docs_errors_md_names_exists():
    """The test column of docs/errors.md: each `test_file::test_name` is a test of that file (a renamed or
    removed test leaves a row that no longer says how its behaviour is checked)."""
    import importlib
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(test_\w+)::(test_\w+)", text))
    assert len(named) > 50
    missing = [
        f"{module}::{name}"
        for module, name in sorted(named)
        if not hasattr(importlib.import_module(f"tests.{module}"), name)
    ]
    assert missing == []
