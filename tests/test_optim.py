"""Optimization options: schedulers against torch's own classes, accumulation, clipping,
label smoothing, weight-decay groups, early stopping, precision switches."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from cnntrain.callbacks import EarlyStopping, epochs_without_improvement
from cnntrain.data.loader import BatchTransform, InMemoryLoader
from cnntrain.data.synthetic import synthetic
from cnntrain.errors import ConfigError
from cnntrain.optim import OPTIMIZERS, SCHEDULERS, parameter_groups
from cnntrain.run import train
from cnntrain.speed_switches import maybe_compile, resolve_precision, tune_backend, use_channels_last
from cnntrain.trainer import Callback, EpochMetrics, StepOptions, Trainer
from tests.conftest import compose_config

CPU = torch.device("cpu")
QUICK = [
    "data=synthetic",
    "data.train_size=128",
    "data.test_size=64",
    "data.batch_size=32",
    "model=softmax",
    "trainer.progress=none",
    "device=cpu",
    "optimizer.lr=0.1",
]


def tiny_loader(n=64, batch_size=16, shuffle=True, seed=0):
    data = synthetic(num_classes=4, channels=1, image_size=8, train_size=n, test_size=8, noise=0.2, seed=3)
    return InMemoryLoader(data.train, batch_size, BatchTransform(None, None, None), CPU, shuffle=shuffle, seed=seed)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))


class LrRecorder(Callback):
    """The learning rate after every step (log_every=1 makes every step a progress report)."""

    def __init__(self):
        self.lrs = []

    def on_train_progress(self, trainer, progress):
        self.lrs.append(trainer.current_lr())


def lrs_through_trainer(name, settings, epochs=3, lr=0.1, batches=4):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    schedule = SCHEDULERS.build(name, settings, optimizer=optimizer, epochs=epochs, steps_per_epoch=batches)
    recorder = LrRecorder()
    loader = tiny_loader(n=16 * batches)
    Trainer(model, optimizer, schedule, loader, loader, CPU, epochs, callbacks=[recorder], log_every=1).fit()
    return recorder.lrs


def lrs_from_torch(make_scheduler, per_step, epochs=3, lr=0.1, batches=4):
    """The same sequence from torch's scheduler class, stepped per step or per epoch."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(epochs):
        for _ in range(batches):
            optimizer.step()
            if per_step:
                scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        if not per_step:
            scheduler.step()
    return lrs


@pytest.mark.parametrize(
    "name, settings, make, per_step",
    [
        ("step", {"step_size": 2, "gamma": 0.5}, lambda o: lr_scheduler.StepLR(o, 2, 0.5), False),
        ("multistep", {"milestones": [1, 2], "gamma": 0.1}, lambda o: lr_scheduler.MultiStepLR(o, [1, 2], 0.1), False),
        ("exponential", {"gamma": 0.8}, lambda o: lr_scheduler.ExponentialLR(o, 0.8), False),
        ("cosine", {"min_lr": 0.001}, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.001), True),
        (
            "cosine",
            {"warmup_epochs": 1, "warmup_start_factor": 0.1},
            lambda o: lr_scheduler.SequentialLR(
                o,
                [lr_scheduler.LinearLR(o, 0.1, total_iters=4), lr_scheduler.CosineAnnealingLR(o, T_max=8)],
                milestones=[4],
            ),
            True,
        ),
        (
            "onecycle",
            {"pct_start": 0.25},
            lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=12, pct_start=0.25),
            True,
        ),
    ],
)
def test_scheduler_lr_sequence_matches_torch(name, settings, make, per_step):
    ours = lrs_through_trainer(name, settings)
    assert len(ours) == 12
    assert ours == pytest.approx(lrs_from_torch(make, per_step), rel=1e-9, abs=1e-12)


def test_cosine_warmup_rises_to_the_base_lr_then_decays_to_min_lr():
    lrs = lrs_through_trainer("cosine", {"warmup_epochs": 1, "warmup_start_factor": 0.1, "min_lr": 0.01}, epochs=4)
    assert lrs[0] == pytest.approx(0.1 * (0.1 + 0.9 / 4))  # one step into the linear warm-up from 0.01
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 3  # the base lr when warm-up ends
    assert lrs[-1] == pytest.approx(0.01)  # min_lr after the last step
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # then only down


def test_onecycle_peaks_at_max_lr_and_defaults_it_to_the_optimizer_lr():
    lrs = lrs_through_trainer("onecycle", {"pct_start": 0.25}, lr=0.4)
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 1  # torch: up for 0.25 * 12 - 1 steps
    # The lr the last optimizer step used: max_lr / div_factor / final_div_factor.
    assert lrs[-2] == pytest.approx(0.4 / 25 / 1e4)


def test_plateau_reduces_the_lr_when_the_validation_loss_stalls():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = SCHEDULERS.build(
        "plateau", {"factor": 0.5, "patience": 1}, optimizer=optimizer, epochs=9, steps_per_epoch=1
    )
    reference_optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = lr_scheduler.ReduceLROnPlateau(reference_optimizer, mode="min", factor=0.5, patience=1)
    trainer = Trainer(model, optimizer, schedule, None, None, CPU, epochs=9)
    ours, theirs = [], []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.7], 1):
        trainer._step_schedule_after_epoch(EpochMetrics(epoch, 0, 0, val_loss, 0, 0, 0, 0))
        reference.step(val_loss)
        ours.append(optimizer.param_groups[0]["lr"])
        theirs.append(reference_optimizer.param_groups[0]["lr"])
    assert ours == theirs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_metrics_csv_records_each_epochs_lr(tmp_path):
    cfg = compose_config(QUICK + ["trainer.epochs=4", "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5"])
    train(cfg, run_dir=tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert [float(row["lr"]) for row in csv.DictReader(f)] == [0.1, 0.1, 0.05, 0.05]


def test_cosine_warmup_longer_than_the_run_is_a_config_error(tmp_path):
    cfg = compose_config(QUICK + ["trainer.epochs=2", "scheduler=cosine", "scheduler.warmup_epochs=2"])
    with pytest.raises(ConfigError, match="warmup_epochs=2 leaves no epochs for the cosine decay"):
        train(cfg, run_dir=tmp_path / "run")


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_optimizers_build_with_their_config_defaults(name):
    cfg = compose_config([f"optimizer={name}"])
    settings = {k: v for k, v in cfg.optimizer.items() if k not in ("name", "no_decay_bias_norm")}
    optimizer = OPTIMIZERS.build(name, settings, params=tiny_model().parameters())
    expected = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "rmsprop": torch.optim.RMSprop,
    }[name]
    assert type(optimizer) is expected and optimizer.param_groups[0]["lr"] == cfg.optimizer.lr


def test_nesterov_without_momentum_is_a_config_error():
    with pytest.raises(ConfigError, match="nesterov=true needs optimizer.momentum > 0"):
        OPTIMIZERS.build("sgd", {"nesterov": True}, params=tiny_model().parameters())


def test_no_decay_bias_norm_puts_biases_and_batchnorm_in_a_group_without_weight_decay():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    optimizer = OPTIMIZERS.build("sgd", {"weight_decay": 5e-4}, params=parameter_groups(model, True))
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decayed["params"]] == [(4, 1, 3, 3), (3, 144)]
    assert [tuple(p.shape) for p in undecayed["params"]] == [(4,), (4,), (4,), (3,)]  # conv bias, BN, linear bias
    [single] = OPTIMIZERS.build("sgd", {"weight_decay": 5e-4}, params=parameter_groups(model, False)).param_groups
    assert len(single["params"]) == 6 and single["weight_decay"] == 5e-4


def one_epoch_weights(batch_size, accumulate):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = tiny_loader(n=64, batch_size=batch_size)
    Trainer(model, optimizer, None, loader, loader, CPU, 1, options=StepOptions(accumulate=accumulate)).fit()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulating_two_batches_of_8_equals_one_batch_of_16():
    assert torch.allclose(one_epoch_weights(8, 2), one_epoch_weights(16, 1), atol=1e-6)
    assert not torch.allclose(one_epoch_weights(8, 1), one_epoch_weights(16, 1), atol=1e-3)


def test_accumulation_counts_optimizer_steps_for_per_step_schedules():
    model = tiny_model()
    trainer = Trainer(
        model, None, None, tiny_loader(n=80, batch_size=16), None, CPU, 1, options=StepOptions(accumulate=2)
    )
    assert trainer.optimizer_steps_per_epoch() == 3  # 5 batches: 2 + 2 + the last one alone


def test_gradient_clipping_bounds_the_update():
    model = tiny_model()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = tiny_loader(n=16, batch_size=16)
    Trainer(model, optimizer, None, loader, loader, CPU, 1, options=StepOptions(grad_clip_norm=0.01)).fit()
    change = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert change.norm().item() == pytest.approx(0.01, rel=1e-4)  # plain SGD, lr 1: the update is the clipped gradient


def test_label_smoothing_applies_to_the_training_loss_only():
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the model stays fixed
    loader = tiny_loader(n=32, batch_size=16, shuffle=False)
    smoothing = 0.3
    trainer = Trainer(
        model,
        optimizer,
        None,
        loader,
        loader,
        CPU,
        1,
        loss_fn=lambda logits, labels: F.cross_entropy(logits, labels, label_smoothing=smoothing),
    )
    [metrics] = trainer.fit()
    with torch.no_grad():
        images, labels = next(iter(tiny_loader(n=32, batch_size=32, shuffle=False)))
        log_p = model(images).log_softmax(dim=1)
        plain = -log_p.gather(1, labels[:, None]).mean()
        smoothed = (1 - smoothing) * plain + smoothing * (-log_p.mean(dim=1)).mean()
    assert metrics.train_loss == pytest.approx(smoothed.item(), rel=1e-5)
    assert metrics.val_loss == pytest.approx(plain.item(), rel=1e-5)


def test_label_smoothing_setting_reaches_the_training_loss(tmp_path):
    def losses(smoothing):
        cfg = compose_config(QUICK + ["trainer.epochs=1", "optimizer.lr=0", f"trainer.label_smoothing={smoothing}"])
        return train(cfg, run_dir=tmp_path / str(smoothing))["final_epoch"]

    plain, smoothed = losses(0.0), losses(0.3)
    assert smoothed["val_loss"] == plain["val_loss"]  # same fixed model, plain cross-entropy
    assert smoothed["train_loss"] != pytest.approx(plain["train_loss"], rel=1e-3)


def test_epochs_without_improvement_respects_min_delta():
    assert epochs_without_improvement([1.0, 0.9, 0.95, 0.91], minimize=True, min_delta=0.0) == (2, 1)
    assert epochs_without_improvement([1.0, 0.95, 0.93], minimize=True, min_delta=0.1) == (2, 0)
    assert epochs_without_improvement([0.5, 0.6, 0.7], minimize=False, min_delta=0.0) == (0, 2)


def test_epochs_from_before_a_metric_existed_are_skipped():
    # A run from before val_balanced_acc, resumed with early stopping on it: its old epochs have None.
    assert epochs_without_improvement([None, None, 0.5, 0.4], minimize=False, min_delta=0.0) == (1, 2)
    assert epochs_without_improvement([None, None], minimize=False, min_delta=0.0) == (0, 1)


class ScriptedTrainer:
    def __init__(self):
        self.history, self.stop_reason = [], None


@pytest.mark.parametrize(
    "metric, values, patience, min_delta, stop_epoch",
    [
        ("val_loss", [1.0, 0.8, 0.81, 0.79, 0.85, 0.9, 0.7], 2, 0.0, 6),
        ("val_loss", [1.0, 0.8, 0.81, 0.79, 0.85, 0.9, 0.7], 3, 0.0, None),
        ("val_loss", [1.0, 0.8, 0.81, 0.79, 0.85, 0.9, 0.7], 3, 0.02, 5),
        ("val_acc", [0.5, 0.6, 0.6, 0.7, 0.7, 0.7], 2, 0.0, 6),
        ("val_acc", [0.5, 0.6, 0.7, 0.8], 1, 0.0, None),
    ],
)
def test_early_stopping_stops_at_the_right_epoch(metric, values, patience, min_delta, stop_epoch):
    callback, trainer = EarlyStopping(metric, patience, min_delta), ScriptedTrainer()
    stopped_at = None
    for epoch, value in enumerate(values, 1):
        metrics = EpochMetrics(
            epoch, 0, 0, value if metric == "val_loss" else 0, value if metric == "val_acc" else 0, 0, 0, 0
        )
        trainer.history.append(metrics)
        callback.on_epoch_end(trainer, metrics)
        if trainer.stop_reason:
            stopped_at = epoch
            break
    assert stopped_at == stop_epoch
    if stop_epoch:
        assert f"{metric} has not improved by more than {min_delta:g} for {patience} epochs" in trainer.stop_reason


def test_early_stopping_ends_the_run_and_says_why_in_summary_json(tmp_path):
    cfg = compose_config(QUICK + ["trainer.epochs=10", "optimizer.lr=0", "trainer.early_stopping.patience=2"])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["epochs"] == 3  # lr 0: the loss never improves after epoch 1
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    # early_stopping.metric null: the metric best.pt follows (trainer.checkpoint.monitor, val_acc)
    assert on_disk["stopped_early"].startswith("early stopping: val_acc has not improved")
    assert "stopped after epoch 3: early stopping" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.label_smoothing=1.5", "trainer.label_smoothing must be a number from 0 up to (not) 1, got 1.5"),
        (
            "trainer.accumulate_grad_batches=0",
            "trainer.accumulate_grad_batches must be a positive whole number up to 2,147,483,647, got 0",
        ),
        ("trainer.grad_clip_norm=-1", "trainer.grad_clip_norm must be null (off) or a positive number, got -1"),
        ("trainer.early_stopping.patience=0", "trainer.early_stopping.patience must be null (off) or a positive whole"),
        (
            "trainer.early_stopping.metric=val_accuracy",
            "trainer.early_stopping.metric must be null (the checkpoint's trainer.checkpoint.monitor) or one of "
            "train_loss, train_acc, val_loss, val_acc",
        ),
        ("trainer.precision=16", "trainer.precision must be one of 32, bf16, fp16, auto, got 16"),
        ("trainer.channels_last=maybe", "trainer.channels_last must be auto, true or false, got 'maybe'"),
        ("trainer.compile=yes", "trainer.compile must be true or false, got 'yes'"),
        ("+optimizer.momentun=0.9", "optimizer 'sgd' has no setting 'momentun'"),
    ],
)
def test_bad_trainer_settings_fail_before_training_with_the_fix(tmp_path, override, message):
    cfg = compose_config(QUICK + [override])
    with pytest.raises(ConfigError) as err:
        train(cfg, run_dir=tmp_path / "run")
    assert message in str(err.value)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_precision_switches_resolve_per_device(monkeypatch):
    import cnntrain.speed_switches as switches

    assert resolve_precision(32, CPU) == (None, None)
    monkeypatch.setattr(switches, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("bf16", CPU) == (torch.bfloat16, None)
    monkeypatch.setattr(switches, "cpu_has_native_bf16", lambda: False)
    dtype, notice = resolve_precision("bf16", CPU)
    assert dtype is None and notice.startswith("notice: this CPU has no native bf16")
    dtype, notice = resolve_precision("fp16", CPU)
    assert dtype is None and notice == "notice: trainer.precision=fp16 is not supported on cpu; training in float32."
    assert resolve_precision("fp16", torch.device("mps"))[0] is None
    assert resolve_precision("auto", CPU) == (None, None)  # auto: float32 without a word where bf16 is not native
    monkeypatch.setattr(switches, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == (torch.bfloat16, None)
    assert resolve_precision("auto", torch.device("mps")) == (None, None)


def test_channels_last_auto_skips_cpu_models_with_batchnorms_it_slows_down():
    from cnntrain.models import MODELS

    lenet, lenet_bn, resnet18 = (MODELS.build(name, {}) for name in ("lenet", "lenet_bn", "resnet18"))
    assert use_channels_last("auto", CPU, lenet) == (True, None)
    assert use_channels_last("auto", CPU, lenet_bn) == (False, None)  # BatchNorm2d(6): 5-8x slower in channels_last
    assert use_channels_last("auto", CPU, resnet18) == (True, None)  # 64-512 channels: faster
    assert use_channels_last("auto", torch.device("cuda"), lenet_bn) == (True, None)
    assert use_channels_last(True, CPU, lenet_bn) == (True, None)  # an explicit setting wins
    assert use_channels_last(False, CPU, lenet) == (False, None)
    used, notice = use_channels_last(True, torch.device("mps"), lenet)
    assert not used and notice == "notice: trainer.channels_last=true has no effect on mps; left off."


def test_cudnn_autotuning_is_turned_on_for_cuda_runs_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # put back after the test
    tune_backend(CPU)
    assert torch.backends.cudnn.benchmark is False
    tune_backend(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True


def test_fp16_on_cpu_trains_in_float32_with_a_notice(tmp_path):
    cfg = compose_config(QUICK + ["trainer.epochs=1", "trainer.precision=fp16"])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["status"] == "completed" and math.isfinite(summary["final_epoch"]["train_loss"])
    assert summary["precision"] == "float32"
    assert "notice: trainer.precision=fp16 is not supported on cpu" in (tmp_path / "run" / "train.log").read_text()


def test_bf16_autocast_on_cpu_computes_in_bfloat16_and_learns():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = tiny_loader(n=64, batch_size=16)
    dtypes = []
    model[1].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    history = Trainer(
        model, optimizer, None, loader, loader, CPU, 3, options=StepOptions(autocast_dtype=torch.bfloat16)
    ).fit()
    assert dtypes[0] == torch.bfloat16 and model[1].weight.dtype == torch.float32  # master weights stay float32
    assert history[-1].train_loss < history[0].train_loss


def test_compile_without_a_compiler_is_a_notice_not_a_crash(monkeypatch):
    import cnntrain.speed_switches as switches

    monkeypatch.setattr(switches.shutil, "which", lambda name: None)
    model = tiny_model()
    forward, notice = maybe_compile(model, True, CPU)
    assert forward is model
    assert (
        notice
        == "notice: torch.compile on the CPU needs a C++ compiler (g++ or clang++); trainer.compile=true ignored."
    )


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_weights(tmp_path):
    cfg = compose_config(QUICK + ["trainer.epochs=1", "trainer.compile=true"])
    summary = train(cfg, run_dir=tmp_path / "run")
    from cnntrain.checkpoint import load_checkpoint

    keys = list(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state_dict"])
    assert summary["status"] == "completed" and keys == ["1.weight", "1.bias"]
