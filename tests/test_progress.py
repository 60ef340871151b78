"""What a user sees while a run trains (a step counter that never goes quiet, a time estimate with
advice for long epochs) and quick looks at a run (trainer.limit_*_batches, data.subset)."""

from __future__ import annotations

import csv
import os
import pty
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from cnntrain import display as display_module
from cnntrain.build import batch_limit
from cnntrain.callbacks import TimeEstimate, format_duration, format_epoch, format_step_seconds
from cnntrain.errors import ConfigError
from cnntrain.models import build_model
from cnntrain.run import train
from cnntrain.run_callbacks import quicker_options
from cnntrain.run_report import one_step_epoch_notice
from cnntrain.trainer import Callback, EpochMetrics, Trainer
from tests.conftest import compose_config

SMOKE = ["experiment=smoke", "data.train_size=320", "data.test_size=64"]


class Lines:
    """A Reporter stand-in that keeps what would be printed."""

    def __init__(self):
        self.lines = []

    def line(self, text, style=None):
        self.lines.append(text)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_trainer(device="cpu", epochs=10, batch_size=128, val_examples=12_000, history=()):
    return SimpleNamespace(
        device=torch.device(device),
        epochs=epochs,
        history=list(history),
        train_loader=SimpleNamespace(batch_size=batch_size),
        val_loader=SimpleNamespace(num_examples=val_examples),
    )


def run_steps(estimate, trainer, steps, seconds_per_step, clock, first=1, last=None):
    estimate.on_epoch_start(trainer, 1, steps)
    for step in range(first, (last or steps) + 1):
        clock.now += seconds_per_step
        estimate.on_train_step(trainer, step, steps)


def test_time_estimate_names_epoch_and_run_time_and_advises_on_long_cpu_epochs(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "perf_counter", clock)
    reporter = Lines()
    estimate = TimeEstimate(reporter, lambda: "a smaller data.resize (now 224; the smallest alexnet takes is 65)")
    trainer = fake_trainer()
    run_steps(estimate, trainer, steps=469, seconds_per_step=25.0, clock=clock, last=20)
    # 469 steps of 25 s = 11,725 s, + validation: 12,000 images at a third of 25/128 s each = 781 s.
    assert reporter.lines[0] == (
        "time estimate: about 3:28:26 per epoch (469 steps of 25.00 s + validation), "
        "34:44:22 for the 10 epochs to go (timed over 4 steps)"
    )
    assert reporter.lines[1] == (
        "That is a long epoch for this cpu. Quicker: a smaller data.resize (now 224; the smallest alexnet takes is 65)."
    )
    assert len(reporter.lines) == 2  # said once, not every step


def test_time_estimate_of_a_short_epoch_gives_no_advice_and_skips_the_warm_up_step(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "perf_counter", clock)
    reporter = Lines()
    estimate = TimeEstimate(reporter, lambda: pytest.fail("no advice wanted"))
    trainer = fake_trainer(epochs=3, history=[object()])  # a resumed run: 2 epochs to go
    estimate.on_epoch_start(trainer, 2, 100)
    clock.now += 50.0  # the first step (warm-up, e.g. torch.compile) is not timed
    estimate.on_train_step(trainer, 1, 100)
    for step in range(2, 6):
        clock.now += 0.5
        estimate.on_train_step(trainer, step, 100)
    assert reporter.lines == [
        "time estimate: about 1:06 per epoch (100 steps of 0.50 s + validation), 2:11 for "
        "the 2 epochs to go (timed over 4 steps)"
    ]


def test_time_estimate_of_tiny_steps_waits_for_enough_time_to_measure(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "perf_counter", clock)
    reporter = Lines()
    estimate = TimeEstimate(reporter, lambda: pytest.fail("no advice wanted"))
    trainer = fake_trainer(epochs=2, history=[])
    estimate.on_epoch_start(trainer, 1, 1000)
    for step in range(1, 1001):
        clock.now += 0.01
        estimate.on_train_step(trainer, step, 1000)
    [line] = reporter.lines
    assert line.endswith("(timed over 200 steps)") and "(1000 steps of 0.01 s + validation)" in line


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 61, 3600, 3 * 3600 + 62)] == [
        "0:00",
        "1:00",
        "1:01",
        "1:00:00",
        "3:01:02",
    ]


def test_quicker_options_name_the_smallest_input_size_the_model_takes():
    recipe = {"name": "alexnet", "settings": {}, "num_classes": 10, "in_channels": 1, "input_size": 224}
    parts = SimpleNamespace(
        recipe=recipe, model=build_model(recipe), spec=SimpleNamespace(channels=1), device=torch.device("cpu")
    )
    text = quicker_options(parts)
    assert text.startswith("a smaller data.resize (now 224; the smallest alexnet takes is 65)")
    assert "trainer.limit_train_batches=20" in text and "a GPU (device=cuda)" in text


def test_batch_limits_are_counts_or_fractions():
    assert batch_limit(None, 1000, 100) is None
    assert batch_limit(3, 1000, 100) == 3
    assert batch_limit(0.25, 1000, 100) == 3  # a quarter of 10 batches, rounded up
    assert batch_limit(0.001, 1000, 100) == 1
    assert batch_limit(1.0, 1001, 100) == 11


class StepCounter:
    def __init__(self):
        from cnntrain import Callback

        class Count(Callback):
            def __init__(inner):
                inner.steps, inner.epochs = [], 0

            def on_epoch_start(inner, trainer, epoch, steps):
                inner.steps.append(steps)

        self.callback = Count()


def test_a_quick_look_trains_and_tests_on_few_batches_and_says_so(tmp_path):
    counter = StepCounter().callback
    cfg = compose_config(
        SMOKE
        + [
            "trainer.epochs=2",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=0.5",
            "data.subset=200",
            "trainer.progress=plain",
        ]
    )
    summary = train(cfg, run_dir=tmp_path / "run", callbacks=[counter])
    assert counter.steps == [3, 3]
    assert summary["limits"] == {
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "limit_test_batches": 0.5,
        "subset": 200,
    }
    assert summary["train_size"] == 200 and summary["status"] == "completed"
    assert {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    log = (tmp_path / "run" / "train.log").read_text()
    assert (
        "quick look, not a full run: 3 train batches, 1 val batches, 1 test batches, a subset of 200 training "
        "images (data.subset)"
    ) in log


def test_a_full_run_records_no_limits(tmp_path):
    summary = train(compose_config(SMOKE + ["trainer.epochs=1", "trainer.progress=none"]), run_dir=tmp_path / "r")
    assert summary["limits"] is None and summary["train_size"] == 256


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches must be null (all batches), a whole number"),
        ("trainer.limit_val_batches=1.5", "trainer.limit_val_batches must be null"),
        ("trainer.limit_test_batches=-2", "trainer.limit_test_batches must be null"),
        ("trainer.limit_train_batches=all", "got 'all'"),
        ("data.subset=0", "data.subset must be null (all training images) or a whole number >= 1, got 0"),
        ("trainer.checkpoint_every_minutes=0", "trainer.checkpoint_every_minutes must be null"),
    ],
)
def test_bad_quick_look_settings_are_named(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        train(compose_config(SMOKE + [override, "trainer.progress=none"]), run_dir=tmp_path / "run")


def run_in_terminal(command, cwd):
    """What `command` shows on a 200-column terminal (a pty), without colours; it must exit 0."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        command, cwd=cwd, stdin=child, stdout=child, stderr=child, env={**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))  # without colours


SLOW_STEPS = """
import time
from cnntrain import Callback

class SlowSteps(Callback):
    def on_train_step(self, trainer, step, steps):
        time.sleep(0.3)
"""


def test_the_live_bar_counts_every_step_before_the_first_loss_value(tmp_path):
    """Under a terminal, with log_every far away: the step counter moves and loss shows '-'."""
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS)
    command = [
        sys.executable,
        "-m",
        "cnntrain",
        *SMOKE,
        "trainer.epochs=1",
        "trainer.limit_train_batches=6",
        "trainer.log_every=1000",
        "trainer.progress=bar",
        "callbacks=[{_target_: slow_steps.SlowSteps}]",
    ]
    text = run_in_terminal(command, tmp_path)
    for step in range(1, 6):
        assert re.search(rf"\b{step}/6\b", text), f"step {step}/6 never shown"
    assert re.search(r"1/6 +loss - +acc -", text)
    assert "epoch left" in text and "run left" in text


class ProgressSteps(Callback):
    """The steps at which the trainer read its running loss and accuracy, with the figures."""

    def __init__(self):
        self.reads = []

    def on_train_progress(self, trainer, progress):
        self.reads.append((progress.epoch, progress.step, progress.loss, progress.acc))


def test_loss_and_accuracy_are_read_from_the_first_step_then_every_log_every():
    from tests.test_optim import tiny_loader, tiny_model

    model, recorder = tiny_model(), ProgressSteps()
    loader = tiny_loader(n=50 * 2, batch_size=2)  # 50 steps an epoch
    Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        loader,
        tiny_loader(n=8),
        torch.device("cpu"),
        epochs=2,
        callbacks=[recorder],
        log_every=20,
    ).fit()
    # Powers of two before the first log_every (5 host syncs), then every 20 steps and the epoch's last: each epoch.
    assert [(epoch, step) for epoch, step, _, _ in recorder.reads] == [
        (epoch, step) for epoch in (1, 2) for step in (1, 2, 4, 8, 16, 20, 40, 50)
    ]
    _, _, loss, acc = recorder.reads[0]
    assert 0.5 < loss < 3.0 and acc in (0.0, 0.5, 1.0)  # one batch of 2: a real loss, not a placeholder


def test_the_epoch_line_labels_an_lr_a_per_step_schedule_moved():
    metrics = EpochMetrics(
        epoch=1,
        train_loss=2.3,
        train_acc=0.1,
        val_loss=2.2,
        val_acc=0.12,
        lr=0.00016,
        epoch_seconds=61.2,
        train_examples_per_s=980.4,
    )
    assert format_epoch(metrics, 10, 0.001412) == (
        "epoch  1/10  train loss 2.3000 acc 0.1000  val loss 2.2000 acc 0.1200  lr 0.00016->0.001412  61.2s  980 ex/s"
    )
    assert "lr 0.00016  61.2s" in format_epoch(metrics, 10)  # no per-step schedule: the lr held all epoch
    assert "lr 0.00016  61.2s" in format_epoch(metrics, 10, 0.00016)


@pytest.mark.parametrize("scheduler, expected", [("onecycle", r"lr 0\.\d+->0\.\d+ "), ("step", r"lr 0\.1 ")])
def test_a_run_prints_the_lr_an_epoch_started_and_ended_with(tmp_path, scheduler, expected):
    summary = train(
        compose_config(
            SMOKE
            + [
                "trainer.epochs=2",
                f"scheduler={scheduler}",
                "optimizer.lr=0.1",
                "trainer.limit_train_batches=3",
                "trainer.progress=plain",
            ]
        ),
        run_dir=tmp_path / "run",
    )
    assert summary["status"] == "completed"
    lines = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(re.search(expected, line) for line in lines), lines
    with open(tmp_path / "run" / "metrics.csv") as f:
        first_lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    assert f"lr {first_lrs[0]:.4g}" in lines[0]  # metrics.csv's lr: the epoch's first step's


FIRST_VALUES = """
import time
from cnntrain import Callback

class SlowProgress(Callback):
    def on_train_progress(self, trainer, progress):
        time.sleep(0.4)  # long enough for the live bar to be redrawn with the figures just read
"""


@pytest.mark.slow
def test_the_live_bar_shows_loss_and_accuracy_after_the_first_step(tmp_path):
    """Under a terminal, with the default log_every=20: figures appear at step 1, not step 20."""
    (tmp_path / "slow_progress.py").write_text(FIRST_VALUES)
    command = [
        sys.executable,
        "-m",
        "cnntrain",
        *SMOKE,
        "trainer.epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.log_every=20",
        "trainer.progress=bar",
        "callbacks=[{_target_: slow_progress.SlowProgress}]",
    ]
    text = run_in_terminal(command, tmp_path)
    assert re.search(r"\b1/3 +loss \d+\.\d{4} +acc \d\.\d{4}", text), text[-2000:]


def test_a_batch_holding_every_training_image_gets_a_notice(tmp_path):
    # 80 images, 20% held out for validation: 64 to train on, in one batch of 256.
    cfg = compose_config(
        [
            "experiment=smoke",
            "data.train_size=80",
            "data.test_size=32",
            "data.batch_size=256",
            "trainer.epochs=1",
            "trainer.progress=plain",
        ]
    )
    assert train(cfg, run_dir=tmp_path / "run")["status"] == "completed"
    log = (tmp_path / "run" / "train.log").read_text()
    assert (
        "notice: data.batch_size=256 is larger than the 64 training images, so each epoch is one step of 64 "
        "images. For more steps per epoch set a smaller batch, e.g. data.batch_size=16 (4 steps)."
    ) in log
    assert "time estimate" not in log  # a one-step epoch of a tiny model: nothing worth estimating


def test_the_one_step_notice_names_equal_sizes_and_stays_quiet_otherwise():
    assert one_step_epoch_notice(72, 72).startswith("notice: data.batch_size=72 equals the 72 training images")
    assert one_step_epoch_notice(256, 72).endswith("e.g. data.batch_size=16 (5 steps).")
    assert one_step_epoch_notice(256, 3).endswith("e.g. data.batch_size=1 (3 steps).")
    assert one_step_epoch_notice(256, 257) is None and one_step_epoch_notice(32, 60_000) is None


def test_no_time_estimate_for_a_run_that_is_over_in_moments(monkeypatch):
    """A 2-step epoch of 3-ms steps printed 'about 0:00 per epoch (2 steps of 0.00 s ...)': not any more."""
    clock = FakeClock()
    monkeypatch.setattr(display_module.time, "perf_counter", clock)
    reporter = Lines()
    estimate = TimeEstimate(reporter, lambda: pytest.fail("no advice wanted"))
    run_steps(estimate, fake_trainer(epochs=3, val_examples=64), steps=2, seconds_per_step=0.003, clock=clock)
    assert reporter.lines == []
    # Short steps, but a run long enough to be worth a line: the step's time in milliseconds, not "0.00 s".
    estimate = TimeEstimate(reporter, lambda: pytest.fail("no advice wanted"))
    run_steps(
        estimate, fake_trainer(epochs=3, val_examples=64), steps=3000, seconds_per_step=0.004, clock=clock, last=600
    )
    [line] = reporter.lines
    assert line.startswith("time estimate: about 0:12 per epoch (3000 steps of 4.0 ms + validation), 0:36 for the 3 ")


def test_format_step_seconds_never_shows_only_zeros():
    assert [format_step_seconds(s) for s in (2.5, 0.0123, 0.004, 0.00031)] == ["2.50 s", "0.01 s", "4.0 ms", "0.31 ms"]
