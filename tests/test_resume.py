"""Resume and failure safety: a run killed (SIGKILL, Ctrl-C, a kill in the middle of a
checkpoint write) and resumed ends exactly as the uninterrupted run; finished runs,
changed models and non-finite losses get clear answers."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from cnntrain.checkpoint import load_checkpoint
from cnntrain.errors import ConfigError, RunInterrupted, TrainingError
from cnntrain.resuming import resume, resume_config
from cnntrain.run import train
from cnntrain.trainer import Callback
from tests.conftest import StopAt, assert_same_weights, compose_config
from tests.helpers import run_cli
from tests.signals import as_under_nohup, send_signals, source_of

# A model and a checkpoint writer that signal their own process at a chosen moment, so
# that a kill lands at a known step. Loaded by the runs through `imports`, as a user's
# own module would be; without the environment variables they change nothing.
HOOKS = (
    """
import io, os, signal, threading, time
import torch
from torch import nn
from cnntrain.models import MODELS
from cnntrain.models.mlp import mlp


class SignalAtStep(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.training_calls = 0

    def forward(self, x):
        if self.training:
            self.training_calls += 1
            if self.training_calls == int(os.environ.get("TEST_SIGNAL_AT_STEP", 0)):
                send_signals(getattr(signal, os.environ["TEST_SIGNAL"]), int(os.environ.get("TEST_SIGNAL_TIMES", 1)),
                             float(os.environ.get("TEST_BUSY_SECONDS", 0)))
        return self.inner(x)


"""
    + source_of(send_signals)
    + """

# A shell that starts a job in the background (as CI may) makes it ignore SIGINT, and
# Python then never raises KeyboardInterrupt; a user at a terminal has the default.
if os.environ.get("TEST_SIGNAL") == "SIGINT":
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Likewise SIGHUP under a test runner started with nohup, unless the test is about nohup.
if os.environ.get("TEST_SIGNAL") == "SIGHUP" and not os.environ.get("TEST_NOHUP"):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@MODELS.register("test_signal_mlp")
def signal_mlp(num_classes=10, in_channels=1, input_size=28):
    return SignalAtStep(mlp(num_classes=num_classes, in_channels=in_channels, input_size=input_size))


if os.environ.get("TEST_KILL_IN_SAVE_OF_EPOCH"):
    real_save = torch.save

    def half_save_then_kill(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == int(os.environ["TEST_KILL_IN_SAVE_OF_EPOCH"]):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = half_save_then_kill
"""
)

# A resume imports only the modules the user names again (a run folder is data, not code).
HOOKS_IMPORT = "imports=[test_resume_hooks]"
# 400 train / 100 val images in batches of 32: 13 steps an epoch. Dropout, momentum, a
# step schedule and random augmentation all depend on state the resume must restore.
RUN = [
    "data=synthetic",
    "data.train_size=500",
    "data.test_size=100",
    "data.batch_size=32",
    "trainer.epochs=4",
    "model=softmax",
    "model.name=test_signal_mlp",
    HOOKS_IMPORT,
    "optimizer.momentum=0.9",
    "optimizer.lr=0.05",
    "scheduler=step",
    "scheduler.step_size=1",
    "scheduler.gamma=0.7",
    "data.augment=[hflip,{name:random_crop,padding:2}]",
    "device=cpu",
    "trainer.progress=plain",
    "model.init=default",
]
STEPS_PER_EPOCH = 13
TIMING = ("epoch_seconds", "train_examples_per_s")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    (folder / "test_resume_hooks.py").write_text(HOOKS)
    return folder


def cnntrain(*args, cwd, env=None):
    return run_cli("python -m cnntrain", *args, cwd=cwd, env=env)


def metrics_without_timing(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(workdir):
    run_dir = workdir / "uninterrupted"
    result = cnntrain(*RUN, f"hydra.run.dir={run_dir}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return run_dir


def test_sigkill_mid_epoch_then_resume_ends_exactly_as_the_uninterrupted_run(workdir, uninterrupted):
    run_dir = workdir / "killed"
    kill_step = 2 * STEPS_PER_EPOCH + 6  # in the middle of epoch 3
    killed = cnntrain(
        *RUN,
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
        env={"TEST_SIGNAL_AT_STEP": str(kill_step), "TEST_SIGNAL": "SIGKILL"},
    )
    assert killed.returncode == -9
    assert [row["epoch"] for row in metrics_without_timing(run_dir)] == ["1", "2"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2

    resumed = cnntrain(f"resume={run_dir}", HOOKS_IMPORT, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoints/last.pt: epochs 1-2 done, continuing at epoch 3 of 4" in resumed.stdout
    assert metrics_without_timing(run_dir) == metrics_without_timing(uninterrupted)  # rows 1-4, none twice
    assert_same_weights(weights(run_dir), weights(uninterrupted))
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run_dir, uninterrupted))
    assert (ours["test_acc"], ours["test_loss"], ours["best_epoch"]) == (
        theirs["test_acc"],
        theirs["test_loss"],
        theirs["best_epoch"],
    )


def test_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_one_whole(workdir, uninterrupted):
    run_dir = workdir / "killed_in_save"
    killed = cnntrain(*RUN, f"hydra.run.dir={run_dir}", cwd=workdir, env={"TEST_KILL_IN_SAVE_OF_EPOCH": "2"})
    assert killed.returncode == -9
    assert list((run_dir / "checkpoints").glob("*.tmp"))  # the half-written file never replaced a checkpoint
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] == 1

    resumed = cnntrain(f"resume={run_dir}", HOOKS_IMPORT, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert metrics_without_timing(run_dir) == metrics_without_timing(uninterrupted)
    assert_same_weights(weights(run_dir), weights(uninterrupted))


def test_ctrl_c_stops_after_the_step_saves_it_and_prints_a_resume_command_that_works(workdir, uninterrupted):
    run_dir = workdir / "interrupted"
    interrupted = cnntrain(
        *RUN,
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
        env={"TEST_SIGNAL_AT_STEP": str(STEPS_PER_EPOCH + 3), "TEST_SIGNAL": "SIGINT"},
    )
    assert interrupted.returncode == 130
    assert "Traceback" not in interrupted.stderr
    assert (
        "SIGINT: stopping after this step, with a checkpoint (press Ctrl-C again to stop at once)."
        in interrupted.stdout
    )
    assert (
        "Interrupted during epoch 2 of 4. checkpoints/last.pt holds epoch 1 and steps 1-3 of epoch 2. Resume with: "
    ) in interrupted.stdout
    # Run as `python -m cnntrain` with no cnntrain on PATH: the command names this python.
    command = interrupted.stdout.split("Resume with: ")[1].splitlines()[0]
    assert command == f"{sys.executable} -m cnntrain resume=interrupted {HOOKS_IMPORT}"
    assert "epoch 2/4" not in interrupted.stdout  # stopped in epoch 2, not at its end
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "-m cnntrain resume=interrupted" in summary["error"]
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["in_epoch"]
    assert (position["epoch"], position["step"]) == (2, 3)

    resumed = subprocess.run(command.split(), cwd=workdir, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "resumed from checkpoints/last.pt: epoch 1 and steps 1-3 of epoch 2 done, continuing at step 4 "
        "of epoch 2 of 4" in resumed.stdout
    )
    assert metrics_without_timing(run_dir) == metrics_without_timing(uninterrupted)
    assert_same_weights(weights(run_dir), weights(uninterrupted))


def test_sigterm_mid_epoch_saves_there_and_resume_ends_exactly_as_the_uninterrupted_run(workdir, uninterrupted):
    run_dir = workdir / "terminated"
    stopped = cnntrain(
        *RUN,
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
        env={"TEST_SIGNAL_AT_STEP": str(2 * STEPS_PER_EPOCH + 5), "TEST_SIGNAL": "SIGTERM"},
    )
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr
    assert "checkpoints/last.pt holds epochs 1-2 and steps 1-5 of epoch 3." in stopped.stdout
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert [row["epoch"] for row in metrics_without_timing(run_dir)] == ["1", "2"]

    resumed = cnntrain(f"resume={run_dir}", HOOKS_IMPORT, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_without_timing(run_dir) == metrics_without_timing(uninterrupted)
    assert_same_weights(weights(run_dir), weights(uninterrupted))
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run_dir, uninterrupted))
    assert (ours["test_acc"], ours["test_loss"]) == (theirs["test_acc"], theirs["test_loss"])


def start_into_a_pipe(args, cwd, env, nohup=False, stderr=subprocess.STDOUT):
    """`cnntrain args 2>&1 | head -c 100`: the reader leaves after the first line, as a `| tee` killed by
    Ctrl-C or a closed terminal does. `nohup`: SIGHUP ignored, as `nohup cnntrain ...` starts it."""
    run = subprocess.Popen(
        [sys.executable, "-m", "cnntrain", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **env},
        preexec_fn=as_under_nohup if nohup else None,
    )
    reader = subprocess.Popen(["head", "-c", "100"], stdin=run.stdout, stdout=subprocess.DEVNULL)
    run.stdout.close()  # the reader's end is the pipe's only one
    assert reader.wait(timeout=60) == 0
    return run


def log_lines(run_dir):
    return (run_dir / "train.log").read_text().splitlines()


def test_ctrl_c_after_the_pipe_reader_died_saves_mid_epoch_and_logs_the_resume_command(workdir, uninterrupted):
    """`cnntrain ... 2>&1 | tee log.txt`, Ctrl-C: the shell's SIGINT kills tee too. Was: status failed
    ("Cannot write or read: Broken pipe"), no mid-epoch checkpoint, nothing to resume in epoch 1."""
    run_dir = workdir / "piped"
    run = start_into_a_pipe(
        [*RUN, f"hydra.run.dir={run_dir}"],
        workdir,
        {"TEST_SIGNAL_AT_STEP": str(STEPS_PER_EPOCH + 3), "TEST_SIGNAL": "SIGINT"},
    )
    assert run.wait(timeout=300) == 130
    command = f"{sys.executable} -m cnntrain resume=piped {HOOKS_IMPORT}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resume_command"] == command
    lines = log_lines(run_dir)
    assert any(line.startswith("(the console went away at ") and "Broken pipe" in line for line in lines)
    assert lines[-2:] == [
        "SIGINT: stopping after this step, with a checkpoint (press Ctrl-C again to stop at once).",
        f"Interrupted during epoch 2 of 4. checkpoints/last.pt holds epoch 1 and steps 1-3 of epoch 2. "
        f"Resume with: {command}",
    ]
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["in_epoch"]
    assert (position["epoch"], position["step"]) == (2, 3)

    resumed = subprocess.run(command.split(), cwd=workdir, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_without_timing(run_dir) == metrics_without_timing(uninterrupted)
    assert_same_weights(weights(run_dir), weights(uninterrupted))


@pytest.mark.slow
def test_sighup_stops_after_the_step_with_a_checkpoint_and_the_resume_command(workdir):
    """A closed terminal or SSH session: stopped as an interruption (exit 129), nothing lost (SIGTERM's
    path, whose resume is compared with the uninterrupted run above)."""
    run_dir = workdir / "hung_up"
    stopped = cnntrain(
        *RUN, f"hydra.run.dir={run_dir}", cwd=workdir, env={"TEST_SIGNAL_AT_STEP": str(5), "TEST_SIGNAL": "SIGHUP"}
    )
    assert stopped.returncode == 129 and "Traceback" not in stopped.stderr
    command = f"{sys.executable} -m cnntrain resume=hung_up {HOOKS_IMPORT}"
    assert log_lines(run_dir)[-2:] == [
        "SIGHUP (the terminal or SSH session closed): stopping after this step, with a checkpoint.",
        f"Interrupted during epoch 1 of 4. checkpoints/last.pt holds steps 1-5 of epoch 1. Resume with: {command}",
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["resume_command"] == command
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["in_epoch"]
    assert (position["epoch"], position["step"]) == (1, 5)


@pytest.mark.slow
def test_under_nohup_a_closed_terminal_and_a_dead_pipe_leave_the_run_going(workdir, uninterrupted):
    """`nohup cnntrain ... | tee`: SIGHUP stays ignored and the console's going is no error; the run completes."""
    run_dir = workdir / "nohup"
    with open(workdir / "nohup_stderr.txt", "w") as stderr:
        run = start_into_a_pipe(
            [*RUN, f"hydra.run.dir={run_dir}"],
            workdir,
            nohup=True,
            stderr=stderr,
            env={"TEST_SIGNAL_AT_STEP": "5", "TEST_SIGNAL": "SIGHUP", "TEST_NOHUP": "1"},
        )
        assert run.wait(timeout=300) == 0
    assert (workdir / "nohup_stderr.txt").read_text() == ""  # no traceback, no "Exception ignored ... BrokenPipeError"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert log_lines(run_dir)[-1] == "run folder: nohup"
    assert metrics_without_timing(run_dir) == metrics_without_timing(uninterrupted)


def test_the_first_ctrl_c_is_answered_at_once_while_a_long_step_runs(workdir):
    """Python runs a handler only between bytecodes: in a 4-s torch call the answer waited for it (9 s on AlexNet)."""
    run_dir = workdir / "answered"
    run = subprocess.Popen(
        [sys.executable, "-m", "cnntrain", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "TEST_SIGNAL_AT_STEP": "3",
            "TEST_SIGNAL": "SIGINT",
            "TEST_BUSY_SECONDS": "4",
            "TEST_SENT_AT": str(workdir / "answered_sent_at"),
        },
    )
    for line in run.stdout:
        if line.startswith("SIGINT: stopping after this step"):
            answered = time.time()
            break
    rest, stderr = run.communicate(timeout=300)
    assert run.returncode == 130, stderr
    assert answered - float((workdir / "answered_sent_at").read_text()) < 2  # not the 4 s the step still took
    assert "checkpoints/last.pt holds steps 1-3 of epoch 1." in rest


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_even_when_both_came_during_one_long_step(workdir):
    """Two presses while the main thread is in one long call reach Python's handler as one: counted
    from the wake-up socket, the second stops the step at once (not after its 60 s), last.pt whole."""
    run_dir = workdir / "twice"
    stopped = cnntrain(
        *RUN,
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
        env={
            "TEST_SIGNAL_AT_STEP": str(STEPS_PER_EPOCH + 3),
            "TEST_SIGNAL": "SIGINT",
            "TEST_SIGNAL_TIMES": "2",
            "TEST_BUSY_SECONDS": "60",
            "TEST_SENT_AT": str(workdir / "twice_sent_at"),
        },
    )
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
    assert time.time() - float((workdir / "twice_sent_at").read_text()) < 20
    command = f"{sys.executable} -m cnntrain resume=twice {HOOKS_IMPORT}"
    assert log_lines(run_dir)[-1] == (
        "Interrupted during epoch 2 of 4. checkpoints/last.pt holds epoch 1 (the "
        f"unfinished epoch is redone on resume). Resume with: {command}"
    )
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last.get("in_epoch") is None
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert json.loads((run_dir / "summary.json").read_text())["resume_command"] == command


def test_sigkill_after_a_timed_mid_epoch_checkpoint_then_resume_is_exact(workdir, uninterrupted):
    """trainer.checkpoint_every_minutes tiny: last.pt is saved after every step, then a SIGKILL lands."""
    run_dir = workdir / "killed_mid_epoch"
    killed = cnntrain(
        *RUN,
        "trainer.checkpoint_every_minutes=1e-9",
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
        env={"TEST_SIGNAL_AT_STEP": str(STEPS_PER_EPOCH + 8), "TEST_SIGNAL": "SIGKILL"},
    )
    assert killed.returncode == -9
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (last["epoch"], last["in_epoch"]["epoch"], last["in_epoch"]["step"]) == (1, 2, 7)

    resumed = cnntrain(f"resume={run_dir}", HOOKS_IMPORT, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_without_timing(run_dir) == metrics_without_timing(uninterrupted)
    assert_same_weights(weights(run_dir), weights(uninterrupted))
    assert_same_weights(weights(run_dir, "best.pt"), weights(uninterrupted, "best.pt"))


def test_resuming_a_finished_run_says_so_and_changes_nothing(workdir, uninterrupted):
    before = {p.name: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()}
    result = cnntrain(f"resume={uninterrupted}", HOOKS_IMPORT, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert f"Run {uninterrupted} is already finished: it trained all 4 epochs" in result.stdout
    assert f"-m cnntrain resume=uninterrupted {HOOKS_IMPORT} trainer.epochs=14" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()} == before


def test_resume_refuses_a_changed_model_with_a_message(workdir, uninterrupted):
    result = cnntrain(f"resume={uninterrupted}", HOOKS_IMPORT, "model=alexnet", cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Cannot resume with model.name=alexnet (the run has model.name=test_signal_mlp)" in result.stderr
    with pytest.raises(ConfigError, match="Cannot resume with optimizer.lr=0.5"):
        resume_config(uninterrupted, [HOOKS_IMPORT, "optimizer.lr=0.5"])
    # A typo under a key a resume may change is not added silently.
    with pytest.raises(ConfigError, match="Did you mean 'trainer.early_stopping.patience'"):
        resume_config(uninterrupted, [HOOKS_IMPORT, "trainer.early_stopping.patiense=1"])
    with pytest.raises(
        ConfigError, match="trainer.epochs must be a positive whole number up to 2,147,483,647, got 'abc'"
    ):
        resume_config(uninterrupted, [HOOKS_IMPORT, "trainer.epochs=abc"])
    cfg, _ = resume_config(
        uninterrupted,
        [
            HOOKS_IMPORT,
            "optimizer.lr=0.05",
            "trainer.epochs=6",
            "device=cpu",  # unchanged lr
            "logger=tensorboard",
        ],
    )
    assert (
        cfg.trainer.epochs == 6 and list(cfg.logger) == ["tensorboard"] and cfg.logger.tensorboard.histogram_every == 1
    )
    cfg, _ = resume_config(uninterrupted, [HOOKS_IMPORT, "logger=[csv,tensorboard]"])
    assert list(cfg.logger) == ["csv", "tensorboard"] and cfg.logger.tensorboard.images == 32


def test_resume_without_a_checkpoint_explains(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.log").write_text("epoch 1/3 ...\n")  # started, stopped before its first checkpoint
    with pytest.raises(ConfigError, match="has no checkpoints/last.pt, so no epoch of it finished"):
        resume_config(tmp_path / "run", [])
    with pytest.raises(ConfigError, match="is not a folder"):
        resume_config(tmp_path / "nowhere", [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ConfigError,
        match=r"empty is not a run folder \(it has no checkpoints/, summary.json or "
        r"metrics.csv\) and holds none\.",
    ):
        resume_config(tmp_path / "empty", [])


def test_resume_of_a_folder_of_runs_lists_them_newest_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    day = tmp_path / "outputs" / "2026-12-01"
    for age, name in enumerate(
        [
            "10-00-00-000000_mlp_synthetic",
            "09-00-00-000000_lenet_fashion_mnist",
            "08-00-00-000000_alexnet_fashion_mnist",
            "07-00-00-000000_vgg_cifar10",
        ]
    ):
        (day / name).mkdir(parents=True)
        (day / name / "summary.json").write_text("{}")
        os.utime(day / name / "summary.json", (1e9 - age * 3600,) * 2)  # the first is the newest
    newest, second, third = (
        f"outputs/2026-12-01/{name}"
        for name in (
            "10-00-00-000000_mlp_synthetic",
            "09-00-00-000000_lenet_fashion_mnist",
            "08-00-00-000000_alexnet_fashion_mnist",
        )
    )
    expected = (
        f"is not a run folder; the runs in it are, newest first: {newest}, {second}, {third} and 1 more. "
        f"The newest: cnntrain resume={newest}"
    )
    for folder in (day, tmp_path / "outputs"):  # a date folder, and outputs/ (two levels down)
        with pytest.raises(ConfigError) as caught:
            resume_config(folder, [])
        assert str(caught.value) == f"{folder.relative_to(tmp_path)} {expected}"
    result = subprocess.run(
        [sys.executable, "-m", "cnntrain", "resume=outputs/2026-12-01"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stderr == f"error: outputs/2026-12-01 {expected}\n"


QUICK = [
    "data=synthetic",
    "data.train_size=128",
    "data.test_size=64",
    "data.batch_size=32",
    "model=mlp",
    "trainer.progress=none",
    "device=cpu",
    "optimizer.lr=0.1",
    "optimizer.momentum=0.9",
]


def test_resume_with_more_epochs_equals_the_longer_run(tmp_path):
    train(compose_config(QUICK + ["trainer.epochs=2"]), run_dir=tmp_path / "short")
    summary = resume(tmp_path / "short", ["trainer.epochs=3"])
    train(compose_config(QUICK + ["trainer.epochs=3"]), run_dir=tmp_path / "long")
    assert summary["epochs"] == 3
    assert metrics_without_timing(tmp_path / "short") == metrics_without_timing(tmp_path / "long")
    assert_same_weights(weights(tmp_path / "short"), weights(tmp_path / "long"))


class StepCounter(Callback):
    """Counts training steps (by `by`): state a resume must carry over. Its on_exception and on_test_end
    record what they were told."""

    def __init__(self, by=1):
        self.by, self.count, self.told = by, 0, []

    def on_train_step(self, trainer, step, steps):
        self.count += self.by

    def on_exception(self, trainer, exception):
        self.told.append(("exception", type(exception).__name__, self.count))

    def on_test_end(self, trainer, metrics):
        self.told.append(("test", sorted(metrics), trainer.run_folder, trainer.config.trainer.epochs))

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class StopInEpoch(Callback):
    """Ctrl-C as a callback: stops the run after step `at` of epoch `epoch` (no checkpoint in between)."""

    def __init__(self, epoch, at):
        self.epoch, self.at = epoch, at

    def on_train_step(self, trainer, step, steps):
        if len(trainer.history) + 1 == self.epoch and step == self.at:
            trainer.request_stop()


def test_callback_state_is_kept_in_checkpoints_and_restored_on_resume(tmp_path):
    """Two counters of one class (no collision), stopped mid-run and resumed, end with the uninterrupted counts."""
    whole = [StepCounter(1), StepCounter(10)]
    train(compose_config(QUICK + ["trainer.epochs=3"]), run_dir=tmp_path / "whole", callbacks=whole)
    assert [c.count for c in whole] == [12, 120]  # 128 images in batches of 32: 4 steps x 3 epochs
    saved = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    checkpointer = saved["callbacks"].pop("Checkpointer")  # the built-in one keeps its top-k state there too
    assert saved["callbacks"] == {"StepCounter": {"count": 12}, "StepCounter#2": {"count": 120}}
    assert (checkpointer["monitor"], checkpointer["kept"]) == ("val_acc", [])

    first = [StepCounter(1), StepCounter(10), StopInEpoch(epoch=2, at=3)]
    with pytest.raises(RunInterrupted):
        train(compose_config(QUICK + ["trainer.epochs=3"]), run_dir=tmp_path / "stopped", callbacks=first)
    assert [c.count for c in first[:2]] == [7, 70] and first[0].told == [("exception", "RunInterrupted", 7)]
    again = [StepCounter(1), StepCounter(10)]
    resume(tmp_path / "stopped", callbacks=again)
    assert [c.count for c in again] == [12, 120]  # epoch 1's 4 steps restored (last.pt), epochs 2 and 3 trained
    tested = ["test_acc", "test_balanced_acc", "test_loss", "test_macro_f1", "test_top5"]
    assert again[0].told == [("test", tested, tmp_path / "stopped", 3)]


class Counts(Callback):
    """Steps (on_train_step) and epoch ends (on_epoch_end) counted: state a checkpoint must hold as every
    callback's hooks of its step or epoch end left it."""

    def __init__(self):
        self.steps, self.epochs = 0, 0

    def on_train_step(self, trainer, step, steps):
        self.steps += 1

    def on_epoch_end(self, trainer, metrics):
        self.epochs += 1

    def state_dict(self):
        return {"steps": self.steps, "epochs": self.epochs}

    def load_state_dict(self, state):
        self.steps, self.epochs = state["steps"], state["epochs"]


@pytest.mark.parametrize(
    "stop_at, saved",
    [((2, 3), {"steps": 7, "epochs": 1, "in_epoch": 3}), ((1, 4), {"steps": 4, "epochs": 1, "in_epoch": None})],
    ids=["mid-epoch", "epoch-end"],
)
def test_a_checkpoint_holds_the_callbacks_state_after_all_their_hooks_of_its_step(tmp_path, stop_at, saved):
    """The checkpointer writes after every callback's hooks of the step (or epoch end), so a user callback's state in
    last.pt is not one step or one epoch end behind, and the resumed counts equal the uninterrupted ones."""
    run = QUICK + ["trainer.epochs=3", "trainer.checkpoint_every_minutes=1e-9"]  # last.pt after every step
    whole = Counts()
    train(compose_config(run), run_dir=tmp_path / "whole", callbacks=[whole])
    assert (whole.steps, whole.epochs) == (12, 3)  # 4 steps an epoch

    with pytest.raises(RunInterrupted):
        train(compose_config(run), run_dir=tmp_path / "cut", callbacks=[Counts(), StopAt(*stop_at)])
    last = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    position = last["in_epoch"]["step"] if last["in_epoch"] else None
    assert {**last["callbacks"]["Counts"], "in_epoch": position} == saved
    again = Counts()
    resume(tmp_path / "cut", callbacks=[again])
    assert (again.steps, again.epochs) == (whole.steps, whole.epochs)


def test_an_early_stopped_run_s_last_checkpoint_records_the_stop_and_resume_says_it_is_finished(tmp_path, capsys):
    """EarlyStopping decides at the epoch end that the checkpoint is written at: last.pt holds its stop reason."""
    cfg = compose_config(QUICK + ["trainer.epochs=10", "optimizer.lr=0", "trainer.early_stopping.patience=2"])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["epochs"] == 3  # lr 0: the loss never improves after epoch 1
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["stop_reason"] == summary["stopped_early"]
    assert last["stop_reason"].startswith("early stopping: val_acc has not improved")  # the monitor's, by default
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert resume(tmp_path / "run") == summary
    said = capsys.readouterr().out
    assert f"Run {tmp_path / 'run'} is already finished: it stopped early (early stopping: val_acc" in said
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    assert "To train it for longer: " in said and "trainer.early_stopping.patience=null (or a larger patience)" in said
    # A new patience (or more epochs) lifts the saved stop: the run trains on from epoch 4.
    more = resume(tmp_path / "run", ["trainer.early_stopping.patience=null"])
    assert more["epochs"] == 10 and more["stopped_early"] is None
    assert [int(row["epoch"]) for row in metrics_without_timing(tmp_path / "run")] == list(range(1, 11))


def test_the_trainer_shows_the_run_folder_and_a_read_only_config(tmp_path):
    seen = {}

    class Look(Callback):
        def on_fit_start(self, trainer):
            seen["folder"], seen["epochs"] = trainer.run_folder, trainer.config.trainer.epochs
            with pytest.raises(Exception, match="read-only"):
                trainer.config.trainer.epochs = 5

    train(compose_config(QUICK + ["trainer.epochs=1"]), run_dir=tmp_path / "run", callbacks=[Look()])
    assert seen == {"folder": tmp_path / "run", "epochs": 1}


def test_a_failing_on_exception_is_a_notice_and_the_run_ends_with_its_own_error(tmp_path):
    class Fails(Callback):
        def on_epoch_end(self, trainer, metrics):
            raise RuntimeError("the callback's own error")

        def on_exception(self, trainer, exception):
            raise ValueError("and its on_exception fails too")

    counter = StepCounter()
    with pytest.raises(RuntimeError, match="the callback's own error"):
        train(compose_config(QUICK + ["trainer.epochs=2"]), run_dir=tmp_path / "run", callbacks=[Fails(), counter])
    assert counter.told == [("exception", "RuntimeError", 4)]  # told although the one before it failed
    # The finished epoch is kept although a callback's on_epoch_end failed: its checkpoints were written.
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    log = (tmp_path / "run" / "train.log").read_text()
    assert "notice: Fails.on_exception failed: ValueError: and its on_exception fails too" in log


def test_nan_loss_at_a_known_step_stops_with_advice_and_keeps_loadable_checkpoints(tmp_path, monkeypatch):
    from torch import nn

    from cnntrain.models import MODELS
    from cnntrain.models.mlp import mlp

    class NanAtStep(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += self.training
            out = self.inner(x)
            return out * float("nan") if self.training and self.calls == 4 + 3 else out

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    MODELS.register("nan_at_step_7")(
        lambda num_classes=10, in_channels=1, input_size=28, **settings: NanAtStep(
            mlp(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **settings)
        )
    )
    cfg = compose_config(QUICK + ["trainer.epochs=3", "model.name=nan_at_step_7", "model.init=default"])
    with pytest.raises(TrainingError) as err:  # 4 steps an epoch: step 3 of epoch 2
        train(cfg, run_dir=tmp_path / "run")
    message = str(err.value)
    assert "The training loss became nan in epoch 2 at step 3 (lr 0.1)" in message
    assert "lower learning rate" in message and "trainer.grad_clip_norm" in message
    for name in ("best.pt", "last.pt"):
        checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / name)
        assert checkpoint["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "epoch 2 at step 3" in summary["error"]
