"""Weight EMA (trainer.ema) and test-time augmentation (trainer.tta): the average is the formula over the
trained weights' history, TTA is the mean of the two passes, and runs with them resume exactly and are
measured the same by the run's test and cnntrain-eval."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch
from torch import nn

from cnntrain import Callback, resume, train
from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_trainer_settings
from cnntrain.data import ImageSet
from cnntrain.data.loader import BatchTransform, make_loader
from cnntrain.ema import ModelEma
from cnntrain.errors import ConfigError, RunInterrupted
from cnntrain.evaluation import evaluate_run
from cnntrain.trainer import Trainer
from tests.conftest import StopAt, assert_same_weights, compose_config

CPU = torch.device("cpu")


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def loader(examples: int = 48, batch_size: int = 8, shuffle: bool = True):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (examples, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 3, (examples,), generator=generator)
    return make_loader(
        ImageSet(images, labels),
        batch_size,
        BatchTransform(size=None, mean=None, std=None),
        CPU,
        shuffle=shuffle,
        seed=0,
    )


class WeightHistory(Callback):
    """The trained weights at the start and after every training step (each one an optimizer step here)."""

    def __init__(self):
        self.states = []

    def _record(self, trainer):
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    def on_fit_start(self, trainer):
        self._record(trainer)

    def on_train_step(self, trainer, step, steps):
        self._record(trainer)


@pytest.mark.parametrize("warmup", [True, False], ids=["warmup", "fixed-decay"])
def test_the_average_after_k_steps_is_the_formula_over_the_trained_weights(warmup):
    model, history = tiny_model(), WeightHistory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = ModelEma(model, 0.9, warmup=warmup)
    trainer = Trainer(
        model, optimizer, None, loader(), loader(shuffle=False), CPU, epochs=2, callbacks=[history], ema=ema
    )
    trainer.fit()
    start, *steps = history.states
    assert len(steps) == 12 == ema.updates

    expected = {k: v.double() for k, v in start.items()}  # float64, by hand
    for k, weights in enumerate(steps, 1):
        decay = min(0.9, (1 + k) / (10 + k)) if warmup else 0.9
        for key, value in weights.items():
            expected[key] = (
                decay * expected[key] + (1 - decay) * value.double() if value.is_floating_point() else value.double()
            )  # integer buffers (num_batches_tracked) are copied
    averaged = ema.state_dict()
    assert list(averaged) == list(expected)
    for key in expected:
        assert torch.allclose(averaged[key].double(), expected[key], rtol=0, atol=1e-6), key
    assert averaged["1.num_batches_tracked"] == 12
    assert not torch.allclose(averaged["4.weight"], model.state_dict()["4.weight"])  # it is not the trained one

    # Validation measured the average, not the trained weights.
    plain = tiny_model()
    plain.load_state_dict(averaged)
    loss, acc = Trainer(plain, None, None, None, None, CPU, epochs=0).evaluate(loader(shuffle=False))
    assert (trainer.history[-1].val_loss, trainer.history[-1].val_acc) == pytest.approx((loss, acc), abs=1e-6)


def test_checkpoint_weights_hold_the_average_and_the_trained_weights_for_resume():
    model = tiny_model()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        loader(),
        loader(shuffle=False),
        CPU,
        epochs=1,
        ema=ModelEma(model, 0.5),
    )
    trainer.fit()
    state = trainer.state_dict()
    assert state["ema_updates"] == 6
    assert all(torch.equal(state["raw_state_dict"][k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(state["state_dict"][k], v) for k, v in trainer.ema.state_dict().items())

    other = tiny_model()
    again = Trainer(
        other,
        torch.optim.SGD(other.parameters(), lr=0.1),
        None,
        loader(),
        None,
        CPU,
        epochs=1,
        ema=ModelEma(other, 0.5),
    )
    again.load_state_dict(state)
    assert again.ema.updates == 6
    assert all(torch.equal(state["raw_state_dict"][k], v) for k, v in other.state_dict().items())
    assert all(torch.equal(state["state_dict"][k], v) for k, v in again.ema.state_dict().items())

    # Without EMA a trainer takes the trained weights; with EMA and a checkpoint without an average, the
    # average starts again from the checkpoint's weights.
    plain = Trainer(tiny_model(), None, None, None, None, CPU, epochs=0)
    plain.load_weights(state)
    assert all(torch.equal(state["raw_state_dict"][k], v) for k, v in plain.model.state_dict().items())
    old = tiny_model()
    fresh = Trainer(old, None, None, None, None, CPU, epochs=0, ema=ModelEma(old, 0.5))
    fresh.load_weights({"state_dict": state["raw_state_dict"]})
    assert fresh.ema.updates == 0
    assert all(torch.equal(state["raw_state_dict"][k], v) for k, v in fresh.ema.state_dict().items())


class Mirrored(nn.Module):
    """A model that sees an image and its mirror image alike."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + self.inner(x.flip(-1))


def test_tta_is_the_mean_of_the_probabilities_of_the_two_passes():
    model = tiny_model().eval()
    images, labels = next(iter(loader(examples=16, batch_size=16, shuffle=False)))
    with torch.no_grad():
        mean = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2
    evaluation = Trainer(model, None, None, None, None, CPU, epochs=0, tta="hflip").evaluate(
        [(images, labels)], keep_outputs=True
    )
    assert torch.allclose(evaluation.probabilities, mean, atol=1e-6)
    assert torch.equal(evaluation.predicted, mean.argmax(1))
    assert evaluation.acc == (mean.argmax(1) == labels).float().mean().item()
    assert evaluation.loss == pytest.approx(-mean[torch.arange(16), labels].log().mean().item(), abs=1e-6)
    plain = Trainer(model, None, None, None, None, CPU, epochs=0).evaluate([(images, labels)], keep_outputs=True)
    assert not torch.allclose(plain.probabilities, mean, atol=1e-4)  # this model is not mirror-invariant

    # A mirror-invariant model: TTA changes nothing.
    symmetric = Mirrored(model).eval()
    with_tta, without = (
        Trainer(symmetric, None, None, None, None, CPU, epochs=0, tta=tta).evaluate(
            loader(shuffle=False), keep_outputs=True
        )
        for tta in ("hflip", None)
    )
    assert with_tta.acc == without.acc
    assert with_tta.loss == pytest.approx(without.loss, abs=1e-6)
    assert torch.allclose(with_tta.probabilities, without.probabilities, atol=1e-6)


EMA_MESSAGE = (
    "trainer.ema must be null (off) or the decay of the weights' moving average, a number between 0 "
    "and 1 (both excluded) such as 0.999, got "
)
TTA_MESSAGE = (
    "trainer.tta must be null (off) or one of hflip (hflip: evaluate each image and its mirror image, "
    "averaging their probabilities), got "
)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.ema=1", EMA_MESSAGE + "1."),
        ("trainer.ema=0", EMA_MESSAGE + "0."),
        ("trainer.ema=true", EMA_MESSAGE + "True."),
        ("trainer.ema=abc", EMA_MESSAGE + "'abc'."),
        ("trainer.ema_warmup=yes", "trainer.ema_warmup must be true or false, got 'yes'."),
        ("trainer.tta=vflip", TTA_MESSAGE + "'vflip'."),
        ("trainer.tta=true", TTA_MESSAGE + "True."),
    ],
)
def test_bad_ema_and_tta_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_trainer_settings(compose_config([override]))
    check_trainer_settings(compose_config(["trainer.ema=0.999", "trainer.ema_warmup=false", "trainer.tta=hflip"]))


RUN = [
    "data=synthetic",
    "data.train_size=160",
    "data.test_size=64",
    "data.batch_size=32",
    "model=lenet_bn",
    "device=cpu",
    "trainer.progress=none",
    "optimizer.lr=0.05",
    "optimizer.momentum=0.9",
    "trainer.epochs=3",
    "trainer.ema=0.9",
    "trainer.tta=hflip",
]


def metrics_without_timing(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [
            {k: v for k, v in row.items() if k not in ("epoch_seconds", "train_examples_per_s")}
            for row in csv.DictReader(f)
        ]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return train(*RUN, run_dir=tmp_path_factory.mktemp("ema") / "whole")


def test_a_run_with_ema_and_tta_interrupted_mid_epoch_resumes_exactly(tmp_path, whole):
    summary = json.loads((whole.run_dir / "summary.json").read_text())
    assert (summary["ema"], summary["tta"]) == (0.9, "hflip")
    last = load_checkpoint(whole.run_dir / "checkpoints" / "last.pt")
    assert last["ema_updates"] == 12  # 128 training images at batch 32, 3 epochs
    weights = [k for k in last["state_dict"] if k.endswith("weight")]
    assert all(not torch.equal(last["state_dict"][k], last["raw_state_dict"][k]) for k in weights)

    # last.pt saved after every step (a tiny checkpoint_every_minutes), the stop after step 2 of epoch 2.
    with pytest.raises(RunInterrupted):
        train(*RUN, "trainer.checkpoint_every_minutes=1e-9", callbacks=[StopAt(2, 2)], run_dir=tmp_path / "cut")
    position = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["in_epoch"]
    assert (position["epoch"], position["step"]) == (2, 2)
    resumed = resume(tmp_path / "cut")
    assert metrics_without_timing(resumed.run_dir) == metrics_without_timing(whole.run_dir)
    for name in ("last.pt", "best.pt"):
        ours, theirs = (load_checkpoint(run / "checkpoints" / name) for run in (resumed.run_dir, whole.run_dir))
        assert_same_weights(ours["state_dict"], theirs["state_dict"])
        assert_same_weights(ours["raw_state_dict"], theirs["raw_state_dict"])
        assert ours["ema_updates"] == theirs["ema_updates"]
    assert (resumed.summary["test_loss"], resumed.summary["test_acc"]) == (summary["test_loss"], summary["test_acc"])


def test_the_test_and_cnntrain_eval_measure_best_pt_s_average_with_tta(whole):
    best = load_checkpoint(whole.run_dir / "checkpoints" / "best.pt")
    assert_same_weights(whole.model.state_dict(), best["state_dict"])  # the returned model holds the average
    result = evaluate_run(whole.run_dir)
    assert (result.evaluation.loss, result.evaluation.acc) == (whole.summary["test_loss"], whole.summary["test_acc"])
    assert result.tta == "hflip" and result.folder.path.name == "test_best" and result.run_test is not None


def test_cnntrain_eval_measures_without_the_runs_tta_into_a_folder_of_its_own(whole):
    with_tta = evaluate_run(whole.run_dir, tta="hflip")  # the run's own: the same as the default
    assert with_tta.folder.path.name == "test_best" and with_tta.run_test["test_acc"] == whole.summary["test_acc"]
    without = evaluate_run(whole.run_dir, tta="none")
    assert without.folder.path.name == "test_best_tta-none" and without.run_test is None
    assert json.loads(without.folder.eval_json.read_text())["tta"] is None
    # One pass per image: the probabilities are the softmax of the plain logits, not the two passes' mean.
    assert not torch.allclose(without.evaluation.probabilities, with_tta.evaluation.probabilities)
    assert without.evaluation.loss == pytest.approx(
        -without.evaluation.probabilities[torch.arange(len(without.evaluation.labels)), without.evaluation.labels]
        .log()
        .mean()
        .item(),
        rel=1e-5,
    )


class BothWeights(Callback):
    """The trained weights and the average at each epoch's end (once the checkpoints are written and the
    fine-tuning callback has switched stages: after_epoch_end) and best.pt's."""

    def __init__(self, best):
        self.best = best
        self.seen = []

    def after_epoch_end(self, trainer, metrics):
        self.seen.append(
            (
                {k: v.clone() for k, v in trainer.model.state_dict().items()},
                {k: v.clone() for k, v in trainer.ema.state_dict().items()},
                trainer.ema.updates,
                load_checkpoint(self.best),
            )
        )


def test_two_stage_finetune_with_ema_reloads_best_pt_s_trained_weights_and_average(tmp_path):
    run_dir = tmp_path / "two_stage"
    both = BothWeights(run_dir / "checkpoints" / "best.pt")
    result = train(*RUN, "model.freeze=backbone", "finetune.unfreeze_at=1", callbacks=[both], run_dir=run_dir)
    assert [m.stage for m in result.history] == [1, 2, 2]
    trained, averaged, updates, best = both.seen[0]  # after epoch 1: stage two starts from best.pt (epoch 1)
    assert best["epoch"] == 1
    assert_same_weights(trained, best["raw_state_dict"])
    assert_same_weights(averaged, best["state_dict"])
    assert updates == best["ema_updates"] == 4
    assert math.isfinite(result.summary["test_loss"])
    assert_same_weights(result.model.state_dict(), load_checkpoint(run_dir / "checkpoints" / "best.pt")["state_dict"])


def test_ema_and_tta_are_off_by_default_and_checkpoints_stay_as_they_were():
    cfg = compose_config([])
    assert (cfg.trainer.ema, cfg.trainer.ema_warmup, cfg.trainer.tta) == (None, True, None)
    model = tiny_model()
    state = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), None, loader(), None, CPU, epochs=1
    ).state_dict()
    assert "raw_state_dict" not in state and "ema_updates" not in state  # checkpoints as before


def test_predict_applies_the_runs_tta_as_its_test_did_and_tta_none_is_one_pass(whole):
    from cnntrain.build import build_data
    from cnntrain.checks import check_config
    from cnntrain.predict import load_run

    test_images = build_data(check_config(compose_config(RUN))).test.images  # uint8 (N, C, H, W), as evaluated
    run = load_run(whole.run_dir)
    assert run.run_tta == "hflip"
    probabilities = torch.tensor(
        [
            [p for _, p in sorted(prediction.top, key=lambda top: run.classes.index(top[0]))]
            for prediction in run.predict(test_images, topk=len(run.classes))
        ]
    )
    # The default (tta=run) gives the probabilities cnntrain-eval measured on the test split: the two passes' mean.
    assert torch.allclose(probabilities, evaluate_run(whole.run_dir).evaluation.probabilities, atol=1e-5)
    batch = run.transform()(test_images)
    with torch.inference_mode():
        one_pass = run.model(batch).softmax(dim=1)
        mirrored = run.model(batch.flip(-1)).softmax(dim=1)
    assert torch.allclose(probabilities, (one_pass + mirrored) / 2, atol=1e-5)
    single = run.predict(test_images, topk=1, tta="none")
    assert [p.probability for p in single] == pytest.approx(one_pass.max(dim=1).values.tolist(), abs=1e-6)
    with pytest.raises(ConfigError, match=r"Unknown test-time augmentation 'hflp' \(tta=\)\. Did you mean 'hflip'\?"):
        run.predict(test_images, tta="hflp")
