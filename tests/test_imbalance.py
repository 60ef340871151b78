"""Imbalanced classes: balanced accuracy and macro-F1 (hand-computed cases), trainer.class_weights (values, the
loss they make, hard and soft targets), data.sampler=balanced (class frequencies, seeded, a mid-epoch resume
continuing exactly), what summary.json, metrics.csv and cnntrain-eval record, the notice, bad values' messages."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from cnntrain import resume, train
from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_config
from cnntrain.class_balance import ClassBalance, balanced_weights, class_balance, shows_balanced_figures
from cnntrain.data import DATASETS, ImageData, ImageSet
from cnntrain.data.loader import BatchTransform, make_loader
from cnntrain.data.synthetic import synthetic
from cnntrain.errors import ConfigError, RunInterrupted
from cnntrain.eval_report import print_report
from cnntrain.evaluation import evaluate_run
from cnntrain.evaluator import evaluate
from cnntrain.metrics import _RunningStats, balanced_accuracy, macro_f1
from cnntrain.run_report import summary_table
from cnntrain.trainer import StepOptions, Trainer
from tests.conftest import StopAt, compose_config
from tests.helpers import run_cli
from tests.test_optim import tiny_loader, tiny_model

CPU = torch.device("cpu")


def confusion_of(labels: list[int], predicted: list[int], classes: int) -> torch.Tensor:
    stats = _RunningStats(CPU, confusion=True)
    logits = F.one_hot(torch.tensor(predicted), classes).float()
    stats.add(logits, torch.tensor(labels), torch.tensor(0.0))
    return stats.read_confusion()


# --- the two metrics ---------------------------------------------------------------------------------------------


def test_balanced_accuracy_and_macro_f1_by_hand_with_a_class_never_predicted():
    # class 0: 4 examples, 3 right (1 called 1); class 1: 2 examples, both right; class 2: 2 examples, never predicted.
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    predicted = [0, 0, 0, 1, 1, 1, 0, 1]
    confusion = confusion_of(labels, predicted, 3)
    assert confusion.tolist() == [[3, 1, 0], [0, 2, 0], [1, 1, 0]]
    assert balanced_accuracy(confusion) == pytest.approx((3 / 4 + 2 / 2 + 0 / 2) / 3)
    # F1 = 2TP / (2TP + FP + FN): class 0: 6 / (6 + 1 + 1); class 1: 4 / (4 + 2 + 0); class 2: 0.
    assert macro_f1(confusion) == pytest.approx((6 / 8 + 4 / 6 + 0) / 3)


def test_a_class_absent_from_the_labels_counts_for_macro_f1_only_when_predicted():
    # 4 classes: class 3 has no label and is never predicted (left out of both); class 2 has no label but is predicted.
    labels = [0, 0, 1, 1]
    predicted = [0, 2, 1, 1]
    confusion = confusion_of(labels, predicted, 4)
    assert balanced_accuracy(confusion) == pytest.approx((1 / 2 + 2 / 2) / 2)  # classes with labels only
    assert macro_f1(confusion) == pytest.approx((2 / 3 + 4 / 4 + 0) / 3)  # classes 0, 1 and the predicted 2


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_the_metrics_agree_with_scikit_learn_on_random_predictions():
    sklearn = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (300,), generator=generator)
    predicted = torch.where(torch.rand(300, generator=generator) < 0.6, labels, torch.randint(0, 7, (300,)))
    confusion = confusion_of(labels.tolist(), predicted.tolist(), 7)
    assert balanced_accuracy(confusion) == pytest.approx(sklearn.balanced_accuracy_score(labels, predicted))
    assert macro_f1(confusion) == pytest.approx(sklearn.f1_score(labels, predicted, average="macro", zero_division=0))


def test_evaluate_sums_the_confusion_matrix_over_batches():
    batches = [
        (F.one_hot(torch.tensor(p), 3).float(), torch.tensor(y)) for p, y in (([0, 1], [0, 0]), ([2, 2], [2, 1]))
    ]
    measured = evaluate(lambda x: x, nn.Identity(), batches, CPU)
    assert measured.confusion.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 1]]
    assert measured.balanced_acc == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert measured.macro_f1 == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert measured.figures("val") == {
        "val_loss": measured.loss,
        "val_acc": 0.5,
        "val_balanced_acc": measured.balanced_acc,
        "val_macro_f1": measured.macro_f1,
    }


# --- class weights ----------------------------------------------------------------------------------------------


def test_balanced_weights_are_scikit_learns_formula():
    assert balanced_weights([10, 30, 60]) == pytest.approx([100 / 30, 100 / 90, 100 / 180])
    balance = class_balance(torch.tensor([0] * 10 + [1] * 30 + [2] * 60), ["a", "b", "c"], "balanced", None)
    assert balance.counts == [10, 30, 60]
    assert balance.weights == pytest.approx([10 / 3, 10 / 9, 10 / 18])
    assert class_balance(torch.tensor([0, 1]), ["a", "b"], (2.0, 0.5), None).weights == [2.0, 0.5]
    assert class_balance(torch.tensor([0, 1]), ["a", "b"], None, "balanced").weights is None


def test_the_weighted_loss_with_hard_labels_label_smoothing_and_soft_targets():
    balance = ClassBalance(["a", "b", "c"], [10, 30, 60], [3.0, 1.0, 0.5], None)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    weights = torch.tensor([3.0, 1.0, 0.5])
    nll = -logits.log_softmax(dim=1)[torch.arange(4), labels]
    expected = (weights[labels] * nll).mean()  # over the examples, not torch's division by the weights' sum
    assert balance.training_loss(0.0, CPU)(logits, labels).item() == pytest.approx(expected.item())
    assert balance.training_loss(0.0, CPU)(logits, labels).item() != pytest.approx(F.cross_entropy(logits, labels))
    # label smoothing 0.1: (1 - 0.1) x the weighted nll + 0.1 x the weighted mean of -log p over the classes / 3
    smooth = -(weights * logits.log_softmax(dim=1)).sum(dim=1) / 3
    smoothed = (0.9 * (weights[labels] * nll) + 0.1 * smooth).mean()
    assert balance.training_loss(0.1, CPU)(logits, labels).item() == pytest.approx(smoothed.item())
    # soft targets (trainer.mixup): -sum_c w_c y_c log p_c, averaged over the examples
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8], [0.5, 0.5, 0.0]])
    soft_expected = -(weights * soft * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert balance.training_loss(0.0, CPU)(logits, soft).item() == pytest.approx(soft_expected.item())


def test_weighted_batches_accumulated_or_split_train_as_one_batch():
    """The weighted loss is a mean over examples, so two accumulated batches of 8 (or two processes' shares, which
    the trainer averages by their counts the same way) give the gradient of one batch of 16."""
    balance = ClassBalance(["a", "b", "c", "d"], [10, 20, 30, 40], [4.0, 2.0, 1.0, 0.5], None)

    def one_epoch(batch_size, accumulate):
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loader = tiny_loader(n=64, batch_size=batch_size)
        options = StepOptions(accumulate=accumulate)
        Trainer(
            model, optimizer, None, loader, loader, CPU, 1, options=options, loss_fn=balance.training_loss(0, CPU)
        ).fit()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.allclose(one_epoch(8, 2), one_epoch(16, 1), atol=1e-6)
    unweighted = ClassBalance(["a", "b", "c", "d"], [10, 20, 30, 40], None, None)
    assert unweighted.training_loss(0.1, CPU).keywords == {"label_smoothing": 0.1}  # plain F.cross_entropy


# --- the balanced sampler ---------------------------------------------------------------------------------------


def counted_set(counts: list[int]) -> ImageSet:
    labels = torch.cat([torch.full((count,), c) for c, count in enumerate(counts)])
    return ImageSet(torch.zeros(len(labels), 1, 2, 2, dtype=torch.uint8), labels)


def epoch_labels(loader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [y for _, batch in loader for y in batch.tolist()]


def balanced_loader(data, seed=0, **options):
    return make_loader(
        data, 50, BatchTransform(None, None, None), CPU, shuffle=True, seed=seed, sampler="balanced", **options
    )


def test_the_balanced_sampler_draws_every_class_about_equally_often():
    data = counted_set([2400, 450, 150])
    drawn = torch.tensor(epoch_labels(balanced_loader(data), 1))
    assert len(drawn) == 3000  # an epoch is as long as the split
    assert all(900 <= n <= 1100 for n in torch.bincount(drawn).tolist())  # 1000 each, give or take 3 sigma
    plain = make_loader(data, 50, BatchTransform(None, None, None), CPU, shuffle=True, seed=0)
    assert torch.bincount(torch.tensor(epoch_labels(plain, 1))).tolist() == [2400, 450, 150]


def test_the_balanced_sampler_is_seeded_per_epoch_and_leaves_evaluation_alone():
    data = counted_set([60, 30, 10])
    first = epoch_labels(balanced_loader(data, seed=3), 1)
    assert first == epoch_labels(balanced_loader(data, seed=3), 1)
    assert first != epoch_labels(balanced_loader(data, seed=3), 2)
    assert first != epoch_labels(balanced_loader(data, seed=4), 1)
    evaluation = make_loader(data, 50, BatchTransform(None, None, None), CPU, sampler="balanced")
    assert epoch_labels(evaluation, 1) == data.labels.tolist()


def test_a_balanced_epoch_resumed_mid_way_continues_with_the_same_batches():
    data = counted_set([60, 30, 10])
    loader = balanced_loader(data, seed=5)
    loader.set_epoch(2)
    whole = [batch.tolist() for _, batch in loader]
    loader.resume_at(1, None)
    assert [batch.tolist() for _, batch in loader] == whole[1:]
    shards = [balanced_loader(data, seed=5, shard=(rank, 2)) for rank in (0, 1)]
    for shard in shards:
        shard.set_epoch(2)
    per_rank = [[batch.tolist() for _, batch in shard] for shard in shards]
    assert [sorted(a + b) for a, b in zip(*per_rank)] == [sorted(batch) for batch in whole]  # DDP: shares of one order


# --- runs -------------------------------------------------------------------------------------------------------


@DATASETS.register("imbalanced_synthetic")
def imbalanced_synthetic(
    num_classes=4, channels=1, image_size=28, train_size=400, test_size=128, noise=0.25, seed=0
) -> ImageData:
    """data=synthetic with classes 2 and 3 cut to an eighth of their training images; the test split as it is."""
    data = synthetic(num_classes, channels, image_size, train_size, test_size, noise, seed)
    labels = data.train.labels
    rare = (labels >= 2) & (torch.arange(len(labels)) % 8 != 0)
    data.train = data.train.subset(torch.nonzero(~rare).flatten())
    return data


RUN = [
    "experiment=smoke",
    "data.name=imbalanced_synthetic",
    "data.num_classes=4",
    "data.train_size=400",
    "trainer.epochs=2",
    "trainer.progress=none",
    "trainer.checkpoint_every_minutes=null",
]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return train(*RUN, run_dir=tmp_path_factory.mktemp("imbalance") / "plain")


def test_a_run_records_the_counts_the_test_figures_and_the_per_epoch_columns(plain):
    summary = json.loads((plain.run_dir / "summary.json").read_text())
    counts = summary["imbalance"]["class_counts"]
    # 224 training images (classes 2 and 3 cut to an eighth), 20% held out for validation: 179 trained on
    assert counts == {"class_0": 81, "class_1": 77, "class_2": 12, "class_3": 9}
    assert summary["imbalance"]["class_weights"] is None and summary["imbalance"]["sampler"] is None
    assert 0 <= summary["test_macro_f1"] <= 1 and 0 <= summary["test_balanced_acc"] <= 1
    with open(plain.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["val_balanced_acc"]) for row in rows] == [m.val_balanced_acc for m in plain.history]
    assert all(0 <= float(row["val_macro_f1"]) <= 1 for row in rows)


def test_a_run_on_imbalanced_classes_says_so_among_its_first_lines(plain):
    log = (plain.run_dir / "train.log").read_text().splitlines()
    notice = next(i for i, line in enumerate(log) if "imbalanced classes" in line)
    assert notice < next(i for i, line in enumerate(log) if line.startswith("epoch 1/"))
    assert "the largest training class, 'class_0', has 81 images, 9.0x the 9 of the smallest, 'class_3'" in log[notice]
    assert "trainer.class_weights=balanced" in log[notice] and "data.sampler=balanced" in log[notice]
    assert ClassBalance(["a", "b"], [60, 10], [1.0, 6.0], None).notice() is None  # a remedy chosen: nothing to say
    assert ClassBalance(["a", "b"], [60, 10], None, "balanced").notice() is None
    both = ClassBalance(["a", "b"], [60, 10], [1.0, 6.0], "balanced").notice()
    assert both.startswith("notice: trainer.class_weights and data.sampler=balanced are both set")
    assert ClassBalance(["a", "b"], [50, 10], None, None).notice() is None  # 5x: not more than 5x


def test_on_imbalanced_data_the_epoch_lines_and_the_table_show_the_balanced_figures(plain):
    log = (plain.run_dir / "train.log").read_text()
    first = plain.history[0]
    shown = f"acc {first.val_acc:.4f} bal.acc {first.val_balanced_acc:.4f} macro-F1 {first.val_macro_f1:.4f}  lr"
    assert shown in log
    table = log[log.index("cnntrain result") :]
    assert "test bal.acc" in table and f"{plain.summary['test_macro_f1']:.4f}" in table
    balanced = {"imbalanced": False, "class_weights": None, "sampler": None}
    assert not shows_balanced_figures(balanced, ["val_acc", "val_loss"])  # nothing to see: shorter lines
    assert shows_balanced_figures(balanced, ["val_macro_f1"])  # watched by best.pt or early stopping
    assert shows_balanced_figures({**balanced, "sampler": "balanced"}, ["val_acc"])


def test_a_monitor_other_than_val_acc_has_its_column_and_a_caption():
    summary = {
        "best_metric": "val_loss",
        "best": {"monitor": "val_loss", "mode": "min", "value": 0.25, "epoch": 3},
        "best_epoch": 3,
        "epochs": 5,
        "best_val_acc": 0.9,
        "test_acc": 0.88,
        "wall_seconds": 12.0,
    }
    console = Console(record=True, width=120)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "val loss" in text and "0.2500" in text and "best epoch: the lowest val_loss" in text
    console = Console(record=True, width=120)
    console.print(summary_table({**summary, "best_metric": "val_acc"}))
    assert "0.2500" not in console.export_text() and "lowest" not in console.export_text()
    figures = {**summary, "test_balanced_acc": 0.8125, "test_macro_f1": 0.7901}
    for balanced in (False, True):  # as the epoch lines showed them (ProgressDisplay.balanced)
        console = Console(record=True, width=160)
        console.print(summary_table(figures, balanced))
        text = console.export_text()
        assert ("test bal.acc" in text and "0.7901" in text) is balanced


def test_cnntrain_eval_reports_the_runs_balanced_figures(plain):
    result = evaluate_run(plain.run_dir)
    figures = json.loads(result.folder.eval_json.read_text())
    assert figures["balanced_acc"] == plain.summary["test_balanced_acc"]
    assert figures["macro_f1"] == plain.summary["test_macro_f1"]
    assert result.run_test["test_macro_f1"] == plain.summary["test_macro_f1"]
    console = Console(record=True, width=200)
    print_report(result, console)
    shown = f"balanced accuracy {figures['balanced_acc']:.4f}  macro-F1 {figures['macro_f1']:.4f}"
    assert shown in console.export_text()


def test_class_weights_and_the_balanced_sampler_train_and_resume_exactly(tmp_path):
    run = [*RUN, "trainer.class_weights=balanced", "data.sampler=balanced"]
    whole = train(*run, run_dir=tmp_path / "whole")
    imbalance = whole.summary["imbalance"]
    assert imbalance["sampler"] == "balanced"
    assert imbalance["class_weights"]["class_2"] == pytest.approx(179 / (4 * 12))
    with pytest.raises(RunInterrupted):
        train(*run, "trainer.checkpoint_every_minutes=1e-9", callbacks=[StopAt(2, 2)], run_dir=tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["in_epoch"]["step"] == 2
    resumed = resume(tmp_path / "cut")
    figures = ("train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_macro_f1")
    assert [[getattr(m, k) for k in figures] for m in resumed.history] == [
        [getattr(m, k) for k in figures] for m in whole.history
    ]


# --- bad values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("trainer.class_weights=balance", "trainer.class_weights has no choice 'balance'. Did you mean 'balanced'?"),
        ("trainer.class_weights=[1,0]", "trainer.class_weights must be null, balanced or a list of positive numbers"),
        ("trainer.class_weights=[]", "got []"),
        ("trainer.class_weights=3", "one per class in the data's class order, such as [1, 1, 5], got 3."),
        ("data.sampler=balance", "data.sampler must be null (each epoch a seeded shuffle"),
        ("data.sampler=balance", "Did you mean 'balanced'?"),
    ],
)
def test_bad_settings_are_named_before_any_data_loads(override, words):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config(["experiment=smoke", override]))
    assert words in str(caught.value)


def test_weights_that_do_not_fit_the_data_are_named():
    with pytest.raises(ConfigError, match=r"has 2 values but the data has 3 classes \('a', 'b', 'c'\)"):
        class_balance(torch.tensor([0, 1, 2]), ["a", "b", "c"], (1.0, 2.0), None)
    with pytest.raises(ConfigError, match=r"but 'c' has no training image \(after the validation hold-out"):
        class_balance(torch.tensor([0, 1, 1]), ["a", "b", "c"], "balanced", None)


def test_the_command_line_answers_a_wrong_number_of_weights_in_one_message(tmp_path):
    done = run_cli(
        "python -m cnntrain", "experiment=smoke", "trainer.class_weights=[1,2]", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert done.returncode == 2
    assert "error: trainer.class_weights has 2 values but the data has 10 classes ('class_0', " in done.stderr
    assert "Traceback" not in done.stderr
