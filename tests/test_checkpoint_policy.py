"""trainer.checkpoint (which epoch best.pt holds, the top-k and every-N-epochs files, their state across a resume),
early stopping following its monitor, and trainer.deterministic."""

from __future__ import annotations

import csv
import json
import os
from types import SimpleNamespace

import pytest
import torch
from omegaconf import open_dict

from cnntrain.checkpointer import Checkpointer
from cnntrain.checks import check_config
from cnntrain.errors import ConfigError
from cnntrain.resuming import resume
from cnntrain.run import train
from cnntrain.run_folder import RunFolder
from cnntrain.settings import CheckpointSettings
from cnntrain.speed_switches import tune_backend
from cnntrain.trainer import Callback, EpochMetrics
from tests.conftest import compose_config
from tests.test_optim import QUICK as OPTIM_QUICK

QUICK = [*OPTIM_QUICK, "trainer.threads=1"]  # the same thread count every run: reruns agree to the bit

# A scripted run: (val_loss, val_acc, train_loss) per epoch.
SCRIPT = [(1.0, 0.50, 2.0), (0.7, 0.62, 1.5), (0.8, 0.70, 1.2), (0.6, 0.66, 1.0), (0.9, 0.70, 0.9)]


def scripted_metrics(epoch: int) -> EpochMetrics:
    val_loss, val_acc, train_loss = SCRIPT[epoch - 1]
    return EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        train_acc=0.5,
        val_loss=val_loss,
        val_acc=val_acc,
        lr=0.1,
        epoch_seconds=1.0,
        train_examples_per_s=100.0,
    )


class ScriptedRun:
    """A Checkpointer driven by SCRIPT without training: each checkpoint holds the epoch it was written at."""

    def __init__(self, folder, policy: CheckpointSettings, state: dict | None = None, history=()):
        self.folder = RunFolder(folder)
        self.folder.checkpoints.mkdir(parents=True, exist_ok=True)
        self.trainer = SimpleNamespace(history=list(history), group=SimpleNamespace(writes=True))
        self.checkpointer = Checkpointer(self.folder, self.make_state, policy=policy)
        if state is not None:
            self.checkpointer.load_state_dict(state)
        self.checkpointer.on_fit_start(self.trainer)

    def make_state(self, trainer) -> dict:
        return {"epoch": trainer.history[-1].epoch, "callbacks": {"Checkpointer": self.checkpointer.state_dict()}}

    def epochs(self, first: int, last: int) -> None:
        for epoch in range(first, last + 1):
            metrics = scripted_metrics(epoch)
            self.trainer.history.append(metrics)
            self.checkpointer.after_epoch_end(self.trainer, metrics)

    def files(self) -> set[str]:
        return {path.name for path in self.folder.checkpoints.iterdir()}

    def epoch_in(self, name: str) -> int:
        return torch.load(self.folder.checkpoints / name, weights_only=True)["epoch"]


@pytest.mark.parametrize(
    "monitor, mode, best_epoch",
    [
        ("val_acc", "auto", 3),  # max; epoch 5 ties with 3, and the first of equals stays
        ("val_loss", "auto", 4),  # min
        ("val_acc", "min", 1),
        ("train_loss", "auto", 5),
        ("val_loss", "max", 1),
    ],
)
def test_best_pt_holds_the_epoch_best_by_the_monitor_and_mode(tmp_path, monitor, mode, best_epoch):
    from cnntrain.checkpoint_policy import resolved_mode

    run = ScriptedRun(tmp_path, CheckpointSettings(monitor, resolved_mode(monitor, mode)))
    run.epochs(1, 5)
    assert run.epoch_in("best.pt") == best_epoch and run.epoch_in("last.pt") == 5
    assert run.files() == {"best.pt", "last.pt"}  # save_top_k=1: best.pt only
    best = run.checkpointer.summary()["best"]
    assert best == {
        "monitor": monitor,
        "mode": resolved_mode(monitor, mode),
        "value": getattr(scripted_metrics(best_epoch), monitor),
        "epoch": best_epoch,
    }


def test_top_k_files_follow_the_k_best_epochs_and_every_n_epochs_files_are_kept(tmp_path):
    run = ScriptedRun(tmp_path, CheckpointSettings("val_loss", "min", save_top_k=2, every_n_epochs=2))
    seen = []
    for epoch in range(1, 6):
        run.epochs(epoch, epoch)
        seen.append(sorted(name for name in run.files() if "-val_loss=" in name))
    assert seen == [
        ["epoch=001-val_loss=1.0000.pt"],
        ["epoch=001-val_loss=1.0000.pt", "epoch=002-val_loss=0.7000.pt"],
        ["epoch=002-val_loss=0.7000.pt", "epoch=003-val_loss=0.8000.pt"],  # epoch 1 fell out: its file deleted
        ["epoch=002-val_loss=0.7000.pt", "epoch=004-val_loss=0.6000.pt"],
        ["epoch=002-val_loss=0.7000.pt", "epoch=004-val_loss=0.6000.pt"],  # 0.9 never made it: no file
    ]
    assert {"epoch=002.pt", "epoch=004.pt"} <= run.files() and "epoch=005.pt" not in run.files()
    assert run.epoch_in("epoch=004-val_loss=0.6000.pt") == 4 and run.epoch_in("epoch=002.pt") == 2
    assert run.checkpointer.summary()["top_k"] == ["epoch=004-val_loss=0.6000.pt", "epoch=002-val_loss=0.7000.pt"]


def test_save_top_k_minus_one_keeps_every_epoch(tmp_path):
    run = ScriptedRun(tmp_path, CheckpointSettings("val_acc", "max", save_top_k=-1))
    run.epochs(1, 5)
    assert len([name for name in run.files() if name.startswith("epoch=")]) == 5
    assert run.epoch_in("best.pt") == 3


def test_a_resume_continues_the_top_k_and_removes_what_a_killed_run_left(tmp_path):
    policy = CheckpointSettings("val_loss", "min", save_top_k=2, every_n_epochs=2)
    whole = ScriptedRun(tmp_path / "whole", policy)
    whole.epochs(1, 5)

    killed = ScriptedRun(tmp_path / "killed", policy)
    killed.epochs(1, 3)
    last = torch.load(killed.folder.last_checkpoint, weights_only=True)
    # Killed in epoch 4 after its files were written, before last.pt: a top-k and an every-N file the state
    # does not list; and epoch 1's file, dropped at epoch 3, as if the kill had come before its deletion.
    for name in ("epoch=004-val_loss=0.6000.pt", "epoch=004.pt", "epoch=001-val_loss=1.0000.pt"):
        torch.save({"epoch": 4}, killed.folder.checkpoints / name)

    resumed = ScriptedRun(
        tmp_path / "killed", policy, state=last["callbacks"]["Checkpointer"], history=killed.trainer.history
    )
    kept_at_3 = {"epoch=002-val_loss=0.7000.pt", "epoch=003-val_loss=0.8000.pt"}
    assert resumed.files() == {"best.pt", "last.pt", "epoch=002.pt", *kept_at_3}
    resumed.epochs(4, 5)
    assert resumed.files() == whole.files()
    assert resumed.checkpointer.summary() == whole.checkpointer.summary()
    assert resumed.epoch_in("best.pt") == 4


def test_a_checkpoint_without_the_state_resumes_with_best_pt_by_val_acc(tmp_path):
    """An older cnntrain's run: no Checkpointer state; its config falls back to monitor val_acc."""
    run = ScriptedRun(tmp_path, CheckpointSettings(), state=None, history=[scripted_metrics(e) for e in (1, 2, 3)])
    assert run.checkpointer.best.epoch == 3
    run.epochs(4, 5)
    assert not run.folder.best_checkpoint.exists()  # neither 4 nor 5 beat epoch 3: best.pt is not rewritten
    assert run.checkpointer.summary()["best"]["epoch"] == 3


def test_a_real_run_keeps_the_right_weights_and_a_resume_continues_its_top_k(tmp_path):
    folder = tmp_path / "run"
    extra = ["trainer.checkpoint.monitor=val_loss", "trainer.checkpoint.save_top_k=2"]
    train(compose_config(QUICK + extra + ["trainer.epochs=3", "trainer.checkpoint.every_n_epochs=2"]), run_dir=folder)
    summary = resume(folder, ["trainer.epochs=5"])

    with open(folder / "metrics.csv", newline="") as f:
        losses = {int(row["epoch"]): float(row["val_loss"]) for row in csv.DictReader(f)}
    ranked = sorted(losses, key=lambda epoch: (losses[epoch], epoch))
    expected_top = [f"epoch={e:03d}-val_loss={losses[e]:.4f}.pt" for e in ranked[:2]]
    names = {path.name for path in (folder / "checkpoints").iterdir()}
    assert names == {"best.pt", "last.pt", "epoch=002.pt", "epoch=004.pt", *expected_top}
    assert summary["best"] == {"monitor": "val_loss", "mode": "min", "value": losses[ranked[0]], "epoch": ranked[0]}
    assert summary["top_k"] == expected_top and summary["best_epoch"] == ranked[0]
    assert summary["best_metric"] == "val_loss"

    def weights(name):
        return torch.load(folder / "checkpoints" / name, weights_only=True)["state_dict"]

    best, kept_best = weights("best.pt"), weights(expected_top[0])
    assert all(torch.equal(best[key], kept_best[key]) for key in best)
    assert torch.load(folder / "checkpoints" / "best.pt", weights_only=True)["epoch"] == ranked[0]


def test_early_stopping_follows_the_monitor_unless_it_names_a_metric():
    follows = check_config(
        compose_config(QUICK + ["trainer.checkpoint.monitor=val_acc", "trainer.checkpoint.mode=min"])
    ).trainer.early_stopping
    assert (follows.metric, follows.mode) == ("val_acc", "min")
    default = check_config(compose_config(QUICK)).trainer
    assert (default.checkpoint.monitor, default.checkpoint.mode) == ("val_acc", "max")
    assert (default.early_stopping.metric, default.early_stopping.mode) == ("val_acc", "max")
    explicit = check_config(compose_config(QUICK + ["trainer.early_stopping.metric=train_loss"])).trainer
    assert (explicit.early_stopping.metric, explicit.early_stopping.mode) == ("train_loss", "min")


def test_early_stopping_by_default_stops_on_the_monitor(tmp_path):
    cfg = compose_config(
        QUICK
        + ["trainer.epochs=8", "optimizer.lr=0", "trainer.early_stopping.patience=2"]
        + ["trainer.checkpoint.monitor=train_loss"]
    )
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["epochs"] == 3  # lr 0: nothing improves after epoch 1
    assert summary["stopped_early"].startswith("early stopping: train_loss has not improved")


def test_an_old_config_gets_the_old_checkpoint_policy():
    """A config saved before trainer.checkpoint existed, with early_stopping.metric spelled out (as the YAML did)."""
    cfg = compose_config(QUICK + ["trainer.early_stopping.metric=val_loss"])
    with open_dict(cfg):
        cfg.trainer.pop("checkpoint")
        cfg.trainer.pop("deterministic")
    trainer = check_config(cfg).trainer
    assert trainer.checkpoint == CheckpointSettings("val_acc", "max", 1, None)
    assert (trainer.early_stopping.metric, trainer.early_stopping.mode, trainer.deterministic) == (
        "val_loss",
        "min",
        False,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "trainer.checkpoint.monitor=val_accuracy",
            "trainer.checkpoint.monitor must be one of train_loss, train_acc, val_loss, val_acc, val_top5",
        ),
        ("trainer.checkpoint.monitor=val_accuracy", "got 'val_accuracy'. Did you mean 'val_acc'?"),
        ("trainer.checkpoint.mode=maximum", "trainer.checkpoint.mode must be one of auto, max, min"),
        ("trainer.checkpoint.save_top_k=0", "trainer.checkpoint.save_top_k=0 would keep no best.pt"),
        ("trainer.checkpoint.save_top_k=-2", "trainer.checkpoint.save_top_k must be 1 (best.pt only)"),
        ("trainer.checkpoint.every_n_epochs=0", "trainer.checkpoint.every_n_epochs must be null (off) or a positive"),
        ("trainer.early_stopping.metric=val_los", "Did you mean 'val_loss'?"),
        ("trainer.early_stopping.metric=lr", "trainer.early_stopping.metric must be null (the checkpoint's"),
        ("trainer.deterministic=yes", "trainer.deterministic must be true or false, got 'yes'"),
    ],
)
def test_bad_checkpoint_settings_are_refused_by_name(override, message):
    with pytest.raises(ConfigError) as err:
        check_config(compose_config(QUICK + [override]))
    assert message in str(err.value)


def test_a_monitor_the_data_does_not_measure_is_refused_before_training(tmp_path):
    cfg = compose_config(QUICK + ["data.num_classes=4", "trainer.checkpoint.monitor=val_top5"])
    with pytest.raises(ConfigError, match="trainer.checkpoint.monitor=val_top5, but this data has 4 classes"):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_deterministic_sets_the_flags_and_false_undoes_only_its_own(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        tune_backend(torch.device("cpu"), True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        tune_backend(torch.device("cpu"), False)
        assert not torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)  # the user's own choice: a run with the default leaves it
        tune_backend(torch.device("cpu"), False)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_two_deterministic_runs_agree_to_the_bit(tmp_path):
    cfg = QUICK + ["trainer.epochs=2", "trainer.deterministic=true", "model=mlp"]
    try:
        runs = [train(compose_config(cfg), run_dir=tmp_path / name) for name in ("a", "b")]
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        tune_backend(torch.device("cpu"), False)
    assert [summary["deterministic"] for summary in runs] == [True, True]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["deterministic"] is True
    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True) for name in ("a", "b"))
    assert all(torch.equal(a["state_dict"][key], b["state_dict"][key]) for key in a["state_dict"])
    assert [m["val_loss"] for m in a["history"]] == [m["val_loss"] for m in b["history"]]


TORCH_SAYS = (
    "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
    "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation, or you can "
    "use the 'warn_only=True' option, if that's acceptable for your application."
)


class NondeterministicOperation(Callback):
    """What torch raises for an operation without a deterministic version (on CUDA; the CPU has none to hit)."""

    def on_train_step(self, trainer, step, steps):
        if torch.are_deterministic_algorithms_enabled():
            raise RuntimeError(TORCH_SAYS)


def test_an_operation_without_a_deterministic_version_is_a_message_naming_the_setting(tmp_path):
    cfg = compose_config(QUICK + ["trainer.epochs=1", "trainer.deterministic=true"])
    try:
        with pytest.raises(ConfigError) as err:
            train(cfg, run_dir=tmp_path / "run", callbacks=[NondeterministicOperation()])
    finally:
        tune_backend(torch.device("cpu"), False)
    message = str(err.value)
    assert message.startswith(
        "trainer.deterministic=true, but the operation adaptive_avg_pool2d_backward_cuda has no deterministic "
        "version in PyTorch on this device"
    )
    assert "Set trainer.deterministic=false" in message
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["error"] == message


def test_a_run_from_before_the_checkpoint_settings_resumes_and_evaluates_as_before(tmp_path):
    """last.pt as an older cnntrain wrote it: no trainer.checkpoint/deterministic in its config, early stopping's
    metric spelled out, no Checkpointer state."""
    from cnntrain.evaluation import evaluate_run

    folder = tmp_path / "old"
    train(compose_config(QUICK + ["trainer.epochs=2"]), run_dir=folder)
    last_path = folder / "checkpoints" / "last.pt"
    last = torch.load(last_path, weights_only=True)
    for key in ("checkpoint", "deterministic"):
        del last["config"]["trainer"][key]
    last["config"]["trainer"]["early_stopping"]["metric"] = "val_loss"
    last.pop("callbacks", None)
    torch.save(last, last_path)

    summary = resume(folder, ["trainer.epochs=4", "trainer.early_stopping.patience=5"])
    with open(folder / "metrics.csv", newline="") as f:
        accs = [float(row["val_acc"]) for row in csv.DictReader(f)]
    best_epoch = accs.index(max(accs)) + 1  # the first of equals
    assert summary["best"] == {"monitor": "val_acc", "mode": "max", "value": max(accs), "epoch": best_epoch}
    assert summary["epochs"] == 4 and "top_k" not in summary
    assert sorted(path.name for path in (folder / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert torch.load(folder / "checkpoints" / "best.pt", weights_only=True)["epoch"] == best_epoch
    result = evaluate_run(folder)
    assert (result.epoch, result.evaluation.acc) == (best_epoch, pytest.approx(summary["test_acc"]))
