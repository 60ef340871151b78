"""A run folder is data, not code: nothing named inside it is imported unless the user names it.

A run of the user's own model records its `imports`; resume and predict import them only
when they are given again on the command line (or to `load_run`), and a folder someone
sends with a module beside it and `imports: [shared_run.evil]` in its checkpoints runs
nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain.checkpoint import load_checkpoint
from cnntrain.errors import ConfigError
from cnntrain.predict import load_run
from tests.helpers import run_cli

USER_MODELS = """
from torch import nn
from cnntrain.models import MODELS

@MODELS.register("user_tiny")
def tiny(num_classes=10, in_channels=1, input_size=28):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""
EVIL = """
from pathlib import Path
Path(__file__).resolve().parent.parent.joinpath("PWNED").write_text("code from a run folder ran")
"""


def run(*command, cwd):
    """A console script (its name) or sys.executable with its arguments."""
    if command[0] == sys.executable:
        return subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, timeout=300)
    return run_cli(*command, cwd=cwd)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A finished run of the user's own model (user_models.py, named in imports) and an image."""
    folder = tmp_path_factory.mktemp("safety")
    (folder / "user_models.py").write_text(USER_MODELS)
    trained = run(
        "cnntrain",
        "experiment=smoke",
        "trainer.epochs=2",
        "imports=[user_models]",
        "model.name=user_tiny",
        "model.init=default",
        "hydra.run.dir=run",
        cwd=folder,
    )
    assert trained.returncode == 0, trained.stderr
    Image.fromarray(np.full((28, 28), 128, dtype=np.uint8)).save(folder / "image.png")
    return folder


@pytest.fixture(scope="module")
def shared_run(workdir) -> Path:
    """The run as a hostile sender could pass it on: a module beside the checkpoints, and
    checkpoints whose config names it in `imports`."""
    folder = workdir / "shared_run"
    shutil.copytree(workdir / "run", folder)
    (folder / "evil.py").write_text(EVIL)
    for name in ("best.pt", "last.pt"):
        path = folder / "checkpoints" / name
        checkpoint = load_checkpoint(path)
        checkpoint["config"]["imports"] = ["shared_run.evil"]
        torch.save(checkpoint, path)
    return folder


def test_predict_on_a_run_of_your_own_model_needs_its_imports_named(workdir):
    predict = "cnntrain-predict"
    refused = run(predict, "run=run", "inputs=image.png", cwd=workdir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        "run was trained with imports=[user_models]. Modules named in a run folder are never imported" in refused.stderr
    )
    assert "add imports=[user_models] to the command" in refused.stderr  # not eaten as rich markup

    done = run(predict, "run=run", "inputs=image.png", "imports=[user_models]", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "image.png" in done.stdout and (workdir / "run" / "predictions-image.csv").is_file()

    other = run(predict, "run=run", "inputs=image.png", "imports=[other_models]", cwd=workdir)
    assert other.returncode == 2
    assert (
        "imports=[other_models] does not match the modules run was trained with (imports=[user_models])" in other.stderr
    )


def test_resume_of_a_finished_run_of_your_own_model_with_its_imports(workdir):
    result = run("cnntrain", "resume=run", "imports=[user_models]", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "is already finished: it trained all 2 epochs" in result.stdout
    assert "resume=run imports=[user_models] trainer.epochs=12" in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["cnntrain", "resume=shared_run"],
        ["cnntrain", "resume=shared_run", "trainer.epochs=5"],
        ["cnntrain-predict", "run=shared_run", "inputs=image.png"],
        ["cnntrain-predict", "run=shared_run", "inputs=image.png", "checkpoint=last"],
    ],
)
def test_a_module_named_only_in_a_shared_run_folder_never_runs(workdir, shared_run, command):
    result = run(*command, cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "shared_run was trained with imports=[shared_run.evil]" in result.stderr
    assert "If you trust these modules, add imports=[shared_run.evil] to the command" in result.stderr
    assert not (workdir / "PWNED").exists()


def test_load_run_from_python_imports_nothing_from_the_folder(workdir, shared_run, monkeypatch):
    monkeypatch.chdir(workdir)
    with pytest.raises(ConfigError, match=r"imports=\['shared_run.evil'\] in Python"):
        load_run(shared_run)
    assert not (workdir / "PWNED").exists() and "shared_run.evil" not in sys.modules


# ---------------------------------------------------------------- no run destroys another

SMOKE = ["experiment=smoke", "trainer.epochs=1"]


def test_a_new_run_in_a_folder_holding_a_run_is_refused_before_anything_is_written(workdir):
    before = {p: p.stat().st_mtime_ns for p in (workdir / "run").rglob("*") if p.is_file()}
    result = run("cnntrain", *SMOKE, "hydra.run.dir=run", cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "run already holds a run (summary.json, metrics.csv, last.pt, best.pt, train.log); a new run there "
        "would overwrite it. Continue that run with: cnntrain resume=run" in result.stderr
    )
    assert {p: p.stat().st_mtime_ns for p in (workdir / "run").rglob("*") if p.is_file()} == before


def test_a_new_run_into_a_run_folder_from_python_is_refused(workdir):
    from cnntrain import train

    with pytest.raises(ConfigError, match="already holds a run"):
        train(*SMOKE, "trainer.progress=none", run_dir=workdir / "run")


def test_a_second_process_in_a_run_folder_is_refused_and_a_crash_releases_the_lock(tmp_path):
    from cnntrain.run_folder import RunFolder

    holder = RunFolder(tmp_path / "busy")
    holder.path.mkdir()
    holder.lock()
    try:
        result = run("cnntrain", *SMOKE, f"hydra.run.dir={holder.path}", cwd=tmp_path)
        assert result.returncode == 2
        assert f"{holder.path} is in use by another cnntrain process (pid {__import__('os').getpid()})" in result.stderr
        assert not holder.summary_json.exists()  # the refused run wrote no summary into the folder
    finally:
        holder.unlock()
    # A process that dies holding the lock releases it: the next run trains.
    crashed = run(
        sys.executable,
        "-c",
        f"import os; from cnntrain.run_folder import RunFolder; RunFolder({str(holder.path)!r}).lock(); os._exit(1)",
        cwd=tmp_path,
    )
    assert crashed.returncode == 1
    result = run("cnntrain", *SMOKE, f"hydra.run.dir={holder.path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_run_files_get_the_normal_mode_and_no_temporary_file_is_left(workdir):
    import os

    umask = os.umask(0)
    os.umask(umask)
    folder = workdir / "run"
    for path in (
        folder / "checkpoints" / "best.pt",
        folder / "summary.json",
        folder / "metrics.csv",
        folder / "curves.png",
    ):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert not list(folder.rglob("*.tmp"))


@pytest.mark.parametrize("output", ["run/checkpoints/best.pt", "run/summary.json", "run", "nowhere/p.csv"])
def test_predict_output_never_overwrites_what_is_not_its_own_csv(workdir, output):
    target = workdir / output
    before = target.read_bytes() if target.is_file() else None
    result = run(
        "cnntrain-predict", "run=run", "inputs=image.png", "imports=[user_models]", f"output={output}", cwd=workdir
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"output={output}" in result.stderr or f"output={target}" in result.stderr
    if before is not None:
        assert target.read_bytes() == before


def test_predict_output_rewrites_its_own_csv(workdir):
    for _ in range(2):
        result = run(
            "cnntrain-predict", "run=run", "inputs=image.png", "imports=[user_models]", "output=mine.csv", cwd=workdir
        )
        assert result.returncode == 0, result.stderr
    assert (workdir / "mine.csv").read_text().splitlines()[0] == "file,predicted,probability,top_k"


def test_a_run_whose_best_checkpoint_was_lost_finishes_on_last_pt(tmp_path):
    from cnntrain.trainer import Callback

    class LoseBest(Callback):
        def on_epoch_end(self, trainer, metrics):
            if metrics.epoch == 2:
                (tmp_path / "run" / "checkpoints" / "best.pt").unlink()

    from cnntrain import train

    result = train(
        "experiment=smoke",
        "trainer.progress=none",
        "optimizer.lr=0.0",
        callbacks=[LoseBest()],
        run_dir=tmp_path / "run",
    )  # lr 0: no epoch after the first improves, best.pt stays lost
    assert result.summary["status"] == "completed" and result.summary["tested_checkpoint"] == "last.pt"
    assert "best.pt is missing (deleted or lost since it was written)" in (tmp_path / "run" / "train.log").read_text()


def test_a_full_disk_mid_run_names_the_file_what_is_whole_and_how_to_go_on(tmp_path, monkeypatch):
    import errno

    import cnntrain.checkpointer as checkpointer_module
    from cnntrain import train
    from cnntrain.errors import CnnTrainError

    real_save = checkpointer_module.save_checkpoint

    def save_until_full(state, path):
        if state["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(state, path)

    monkeypatch.setattr(checkpointer_module, "save_checkpoint", save_until_full)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CnnTrainError) as caught:
        train("experiment=smoke", "trainer.progress=none", run_dir=tmp_path / "run")
    message = str(caught.value)
    assert message.startswith(f"Cannot write or read {tmp_path / 'run' / 'checkpoints'}/")
    assert ": No space left on device. checkpoints/last.pt in run is whole." in message
    assert message.endswith("resume=run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == message
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_module_lying_in_the_current_folder_is_not_imported_by_a_library(workdir):
    """Only modules the user names are looked for in the current folder, and only while they are
    imported: a run folder holding `olefile.py` (which Pillow imports for two of its plugins when
    it lists the image formats) does not run it when you predict from inside it."""
    folder = workdir / "olefile_run"
    shutil.copytree(workdir / "run", folder)
    (folder / "olefile.py").write_text(EVIL.replace('"PWNED"', '"PWNED_OLEFILE"'))
    (folder / "images").mkdir()
    shutil.copy(workdir / "image.png", folder / "images" / "a.png")
    result = run("cnntrain-predict", "run=.", "inputs=images", "imports=[user_models]", cwd=folder)
    assert not (workdir / "PWNED_OLEFILE").exists()
    assert result.returncode == 2 and "imports=[user_models] does not match" not in result.stderr  # user_models
    # lives in workdir, not in the run folder: it is not found from here, and says so
    assert "Cannot import 'user_models' (imports)" in result.stderr
