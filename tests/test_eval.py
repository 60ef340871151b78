"""cnntrain-eval: a trained run measured again on its own splits and on other labelled data, and top-5 in runs."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnntrain import cli, train
from cnntrain.callbacks import MetricsWriter
from cnntrain.data.folder import image_folder, list_class_images
from cnntrain.data.image_files import load_split
from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.evaluation import confusion_matrix, evaluate_run, per_class_metrics
from cnntrain.plots import read_metrics_csv
from cnntrain.trainer import EpochMetrics
from tests.helpers import run_cli
from tests.test_folder import COLOURS, make_class_folder, write_image

SMOKE = ("experiment=smoke", "trainer.epochs=1", "trainer.progress=none", "data.train_size=160", "data.test_size=64")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """10 synthetic classes: top-5 is recorded."""
    run_dir = tmp_path_factory.mktemp("eval_smoke") / "run"
    train(*SMOKE, run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> SimpleNamespace:
    """A 2-class image-folder run (train/ and test/ folders) and other folders to evaluate it on."""
    base = tmp_path_factory.mktemp("eval_pets")
    root = base / "pets"
    make_class_folder(root / "train", per_class=10)
    make_class_folder(root / "test", per_class=5)
    run_dir = base / "run"
    train(
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=16",
        "model=cifar_cnn",
        "trainer.epochs=1",
        "trainer.progress=none",
        "device=cpu",
        "optimizer.lr=0.05",
        "data.batch_size=8",
        run_dir=run_dir,
    )
    new = base / "new_pets"  # the same classes, other images: one folder per class, no splits
    for i in range(4):
        write_image(new / "cats" / f"new_cat{i}.png", COLOURS["cats"], size=(18, 12))
        write_image(new / "dogs" / f"new_dog{i}.png", COLOURS["dogs"], size=(12, 18))
    only_cats = base / "only_cats"
    for i in range(3):
        write_image(only_cats / "cats" / f"cat{i}.png", COLOURS["cats"])
    birds = base / "birds"
    for name in ("birds", "cats"):
        for i in range(2):
            write_image(birds / name / f"{name}{i}.png", COLOURS["cats"])
    return SimpleNamespace(run=run_dir, root=root, new=new, only_cats=only_cats, birds=birds)


def run_eval_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """cli.eval_main as the cnntrain-eval script runs it: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["cnntrain-eval", *args])
    try:
        cli.eval_main()
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


# --- the run's own test split: the figures of its summary.json ----------------------------------


def test_eval_on_the_runs_test_split_gives_its_summary_figures(smoke_run):
    summary = summary_of(smoke_run)
    result = evaluate_run(smoke_run)
    figures = json.loads((smoke_run / "eval" / "test_best" / "eval.json").read_text())
    assert figures["size"] == summary["test_size"] == 64 and figures["checkpoint"] == "best"
    assert figures["acc"] == summary["test_acc"]
    assert figures["loss"] == pytest.approx(summary["test_loss"], abs=1e-6)
    assert figures["top5"] == summary["test_top5"] and summary["test_acc"] <= summary["test_top5"] <= 1
    run_test = ("test_loss", "test_acc", "test_top5", "test_balanced_acc", "test_macro_f1")
    assert figures["run_test"] == {key: summary[key] for key in run_test}
    assert result.evaluation.acc == summary["test_acc"]
    # The top-5 accuracy is that of the kept probabilities.
    top5 = result.evaluation.probabilities.topk(5, dim=1).indices
    assert (top5 == result.evaluation.labels[:, None]).any(dim=1).float().mean().item() == figures["top5"]


def test_the_confusion_matrix_sums_to_the_split_and_its_diagonal_is_the_accuracy(smoke_run):
    result = evaluate_run(smoke_run)
    figures = json.loads(result.folder.eval_json.read_text())
    matrix = torch.tensor(figures["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == figures["size"] == 64
    assert matrix.trace().item() / 64 == figures["acc"]
    assert matrix.sum(dim=1).tolist() == [row["support"] for row in figures["per_class"]]
    rows = read_csv(result.folder.confusion_csv)
    assert [row["actual/predicted"] for row in rows] == [f"class_{i}" for i in range(10)]
    assert [[int(row[f"class_{j}"]) for j in range(10)] for row in rows] == matrix.tolist()
    with open(result.folder.confusion_png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_misclassified_rows_name_split_indices_for_a_dataset_without_files(smoke_run):
    result = evaluate_run(smoke_run)
    rows = read_csv(result.folder.misclassified_csv)
    wrong = round(64 * (1 - result.evaluation.acc))
    assert len(rows) == wrong == 64 - result.confusion.trace().item()
    assert list(rows[0]) == ["index", "true", "predicted", "probability", "true_probability"]
    for row in rows:
        i = int(row["index"])
        assert 0 <= i < 64 and row["true"] != row["predicted"]
        assert row["true"] == f"class_{result.evaluation.labels[i]}"
        assert float(row["probability"]) == pytest.approx(result.evaluation.probabilities[i].max().item(), abs=1e-6)
    assert [float(row["probability"]) for row in rows] == sorted(
        (float(row["probability"]) for row in rows), reverse=True
    )


def test_per_class_precision_recall_f1_against_a_hand_computed_example():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, 1, 1])
    matrix = confusion_matrix(labels, predicted, 4)  # class 3: never seen, never predicted
    assert matrix.tolist() == [[3, 1, 0, 0], [2, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]]
    rows = per_class_metrics(matrix, ["a", "b", "c", "d"])
    a, b, c, d = rows
    # a: 3 of 6 predictions right, 3 of 4 found; b: 1 of 4, 1 of 3; c: never predicted, 0 of 3 found.
    assert (a["precision"], a["recall"], a["support"]) == (0.5, 0.75, 4)
    assert a["f1"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert (b["precision"], b["recall"], b["support"]) == (0.25, 1 / 3, 3)
    assert b["f1"] == pytest.approx(2 * 0.25 / 3 / (0.25 + 1 / 3))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (None, 0.0, None, 3)
    assert (d["precision"], d["recall"], d["f1"], d["support"]) == (None, None, None, 0)


# --- top-5 in runs --------------------------------------------------------------------------------


def test_top5_is_recorded_for_ten_classes_and_left_out_for_two(smoke_run, pets):
    rows = read_csv(smoke_run / "metrics.csv")
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "epoch_seconds",
        "train_examples_per_s",
        "val_top5",
        "val_balanced_acc",
        "val_macro_f1",
    ]
    assert float(rows[0]["val_acc"]) <= float(rows[0]["val_top5"]) <= 1
    assert "test_top5" in summary_of(smoke_run) and "val_top5" in summary_of(smoke_run)["final_epoch"]

    assert "val_top5" not in read_csv(pets.run / "metrics.csv")[0]
    summary = summary_of(pets.run)
    assert "test_top5" not in summary and "val_top5" not in summary["final_epoch"]
    result = evaluate_run(pets.run)
    assert result.evaluation.top5 is None and "top5" not in json.loads(result.folder.eval_json.read_text())


def test_metrics_csv_stays_consistent_when_a_resumed_run_gains_top5(tmp_path):
    """A run checkpointed before val_top5 existed: its rows load, and the file gets the column for all rows."""
    old_row = dict(
        epoch=1,
        train_loss=2.0,
        train_acc=0.2,
        val_loss=1.9,
        val_acc=0.3,
        lr=0.1,
        epoch_seconds=1.0,
        train_examples_per_s=10.0,
    )
    history = [EpochMetrics(**old_row)]  # a history row of an older checkpoint
    writer = MetricsWriter(tmp_path / "metrics.csv")
    writer.on_fit_start(SimpleNamespace(history=history))
    assert "val_top5" not in (tmp_path / "metrics.csv").read_text()
    new = EpochMetrics(**{**old_row, "epoch": 2, "val_top5": 0.9})
    history.append(new)
    writer.on_epoch_end(SimpleNamespace(history=history), new)
    third = EpochMetrics(**{**old_row, "epoch": 3, "val_top5": 0.95})
    writer.on_epoch_end(SimpleNamespace(history=history + [third]), third)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert [row["val_top5"] for row in rows] == ["", "0.9", "0.95"]
    assert [row.get("val_top5") for row in read_metrics_csv(tmp_path / "metrics.csv")] == [None, 0.9, 0.95]


# --- image folders: file names, other folders ------------------------------------------------------


def test_image_sets_keep_their_files_through_a_subset(pets):
    classes, items = list_class_images(pets.root / "test")
    images = load_split(items, channels=3, size=8, skip_bad_files=False)
    assert images.files == [path for path, _ in items]
    part = images.subset(torch.tensor([7, 0]))
    assert part.files == [items[7][0], items[0][0]] and part.labels.tolist() == [items[7][1], items[0][1]]
    assert image_folder(root=str(pets.root), image_size=8).test.files == [path for path, _ in items]


def test_an_image_folder_run_names_its_misclassified_files(pets):
    summary = summary_of(pets.run)
    result = evaluate_run(pets.run)
    assert result.size == summary["test_size"] == 10 and result.evaluation.acc == summary["test_acc"]
    assert result.evaluation.loss == pytest.approx(summary["test_loss"], abs=1e-6)
    rows = read_csv(result.folder.misclassified_csv)
    assert list(result.folder.misclassified_csv.read_text().splitlines()[0].split(",")) == [
        "file",
        "true",
        "predicted",
        "probability",
        "true_probability",
    ]
    assert len(rows) == 10 - result.confusion.trace().item()
    for row in rows:
        path = Path(row["file"])
        assert path.is_file() and path.parent.parent == pets.root / "test" and path.parent.name == row["true"]
    assert result.folder.misclassified_png.is_file() == bool(rows)


def test_a_run_evaluated_on_another_folder_with_its_classes(pets):
    result = evaluate_run(pets.run, split="all", overrides=[f"data.root={pets.new}"])
    assert result.size == 8 and not result.own_data and result.run_test is None
    assert result.folder.path.parent == pets.run / "eval"
    assert result.folder.path.name.startswith("image_folder-new_pets-") and result.folder.path.name.endswith(
        "_all_best"
    )
    assert result.confusion.sum() == 8 and [row["support"] for row in result.per_class] == [4, 4]
    named = {Path(row["file"]).name for row in read_csv(result.folder.misclassified_csv)}
    assert len(named) == 8 - result.confusion.trace().item() and named <= {p.name for p in pets.new.rglob("*.png")}
    assert (pets.run / "eval" / "test_best" / "eval.json").is_file()  # the run's own evaluation is kept

    # A folder without a test split: split=test is its validation hold-out, and the notice says so.
    held_out = evaluate_run(pets.run, overrides=["data=image_folder", f"data.root={pets.new}"])
    assert held_out.size == 2 and any("split=all" in notice for notice in held_out.notices)

    # A folder lacking one of the run's classes: evaluated, the missing class has no recall.
    cats = evaluate_run(pets.run, split="all", overrides=[f"data.root={pets.only_cats}"])
    assert cats.size == 3 and cats.evaluation.labels.tolist() == [0, 0, 0]
    assert cats.per_class[1]["recall"] is None and any("'dogs'" in notice for notice in cats.notices)


def test_a_folder_with_other_classes_is_refused_naming_them(pets):
    with pytest.raises(CnnTrainError) as err:
        evaluate_run(pets.run, split="all", overrides=[f"data.root={pets.birds}"])
    message = str(err.value)
    assert "the run's model does not know 'birds'" in message and "the data has no 'dogs'" in message
    assert "The run was trained on 2 classes: cats, dogs" in message


# --- errors: exit status 2 and a message, no traceback -----------------------------------------------


def test_errors_are_messages_with_exit_status_2(smoke_run, pets, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    cases = [
        ((f"run={smoke_run}", "split=tset"), "Unknown split 'tset' (split=). Did you mean 'test'?"),
        ((f"run={tmp_path / 'nowhere'}",), "is not a folder. Give a run folder"),
        (
            (f"run={tmp_path / 'empty'}",),
            "empty is not a run folder (it has no checkpoints/, summary.json or metrics.csv) and holds none.",
        ),
        ((f"run={smoke_run}", "checkpoint=bset"), "Unknown checkpoint 'bset' (checkpoint=). Did you mean 'best'?"),
        ((f"run={pets.run}", f"data.rooot={pets.new}"), "Unknown setting 'data.rooot'"),
        ((f"run={pets.run}", f"dta.root={pets.new}"), "Did you mean 'data.root'?"),
        ((f"run={smoke_run}", "model.name=mlp"), "cnntrain-eval cannot apply model.name=mlp"),
        ((f"run={pets.run}", f"data.root={tmp_path / 'nowhere'}"), "does not exist (data.root)"),
        ((f"run={pets.run}", "split=all", f"data.root={pets.birds}"), "does not know 'birds'"),
        ((f"run={smoke_run}", "splt=val"), "Unexpected argument 'splt=val'. Did you mean 'split'?"),
        ((f"run={smoke_run}", "tta=hflp"), "Unknown test-time augmentation 'hflp' (tta=). Did you mean 'hflip'?"),
    ]
    for args, expected in cases:
        code, out, err = run_eval_main(monkeypatch, capsys, *args)
        assert (code, expected in err, "Traceback" in err) == (2, True, False), (args, err)
    (tmp_path / "lost" / "checkpoints").mkdir(parents=True)
    shutil.copy(smoke_run / "checkpoints" / "last.pt", tmp_path / "lost" / "checkpoints" / "last.pt")
    with pytest.raises(CnnTrainError, match="has no checkpoints/best.pt .*use checkpoint=last"):
        evaluate_run(tmp_path / "lost")
    with pytest.raises(ConfigError, match="Unknown data 'imagefolder'.*Did you mean 'image_folder'"):
        evaluate_run(pets.run, overrides=["data=imagefolder"])


def test_the_installed_command_prints_the_figures_and_the_files(smoke_run):
    result = run_cli("cnntrain-eval", f"run={smoke_run}", "split=val", "checkpoint=last", timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads((smoke_run / "eval" / "val_last" / "eval.json").read_text())
    val = summary_of(smoke_run)["final_epoch"]  # one epoch: last.pt holds it, and its val figures
    assert figures["acc"] == val["val_acc"] and figures["top5"] == val["val_top5"]
    lines = result.stdout.splitlines()
    assert lines[0].endswith(f"on the val split of synthetic ({figures['size']} images)")
    assert f"accuracy {val['val_acc']:.4f}  top-5 {val['val_top5']:.4f}" in result.stdout
    assert "per class" in result.stdout and "confusion matrix" in result.stdout
    assert lines[-1].endswith(
        "val_last: eval.json, per_class.csv, confusion_matrix.csv, confusion_matrix.png, "
        "misclassified.csv" + (", misclassified.png" if figures["misclassified"] else "")
    )


@pytest.mark.slow
def test_a_bare_run_folder_is_the_run_and_slips_get_the_key_value_to_write(smoke_run):
    def eval_command(*args):
        return run_cli("cnntrain-eval", *args, timeout=120, cwd=smoke_run.parent)

    result = eval_command("run", "split=val", "checkpoint=last")  # `run` is the run folder's name here: a folder
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cnntrain-eval: run (") and "on the val split of synthetic" in result.stdout
    for args, message in [
        (("run", "./run"), "'run' needs its value after '=' without spaces: write run=./run."),
        (("run:./run",), "Settings are written key=value, not key:value: write run=./run."),
        (("run", "=", "./run"), "No spaces around '=': write run=./run."),
        (("run=", "./run"), "No spaces around '=': write run=./run."),
        (("./run", "split", "val"), "'split' needs its value after '=' without spaces: write split=val."),
        (("./run", "data.root", "/x"), "'data.root' needs its value after '=' without spaces: write data.root=/x."),
        (("./runn",), "Unexpected argument './runn': there is no such folder or file."),
        ((".",), "is not a run folder; the runs in it are, newest first: run. The newest: cnntrain-eval run=run"),
    ]:
        result = eval_command(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Did you mean 'run'" not in result.stderr and "Traceback" not in result.stderr
