"""data=csv: images listed in a CSV/TSV label file, read as class folders are, and every mistake in
such a file answered with its lines and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnntrain import resume, train
from cnntrain.checkpoint import load_checkpoint
from cnntrain.checks import check_config
from cnntrain.data import prepare
from cnntrain.data.folder import image_folder
from cnntrain.data.image_files import FileImageSet
from cnntrain.data.label_files import label_file, sorted_names
from cnntrain.data.label_rows import delimiter_of
from cnntrain.errors import ConfigError, DatasetError
from cnntrain.evaluation import evaluate_run
from tests.conftest import compose_config
from tests.helpers import run_cli

# Each class's grey level, so a decoded image tells its class.
LEVELS = {"cat": 40, "dog": 200, "bird": 120}


def write_png(path: Path, level: int, grey: bool = False) -> Path:
    """A 12x10 image of one grey level, saved as grey (mode L) or RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((10, 12), level, np.uint8)
    Image.fromarray(pixels if grey else np.stack([pixels] * 3, axis=-1)).save(path)
    return path


def write_rows(path: Path, rows: list[str], header: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in ([header] if header else []) + rows), encoding="utf-8")
    return path


def pets(folder: Path, per_class: int = 4, classes=("cat", "dog"), split=None) -> list[str]:
    """PNGs under folder/images (every other one grey) and their `file,label[,split]` rows."""
    rows = []
    for name in classes:
        for i in range(per_class):
            write_png(folder / "images" / f"{name}{i}.png", LEVELS[name], grey=i % 2 == 0)
            rows.append(f"images/{name}{i}.png,{name}" + (f",{split(i)}" if split else ""))
    return rows


def split_of(i: int) -> str:
    return ["train", "train", "val", "test"][i % 4]


def read(tmp_path: Path, rows: list[str], header: str | None = None, name="labels.csv", **settings):
    return label_file(labels=str(write_rows(tmp_path / name, rows, header)), image_size=8, **settings)


# --- reading: header or not, split column, classes, memory or streamed -------------------------------


def test_a_header_and_a_split_column_give_each_split_its_images(tmp_path):
    data = read(tmp_path, pets(tmp_path, split=split_of), header="file,label,split")
    assert data.classes == ["cat", "dog"]
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    assert data.train.images.shape == (4, 3, 8, 8) and data.train.labels.tolist() == [0, 0, 1, 1]
    assert data.train.images[:, 0, 4, 4].tolist() == [40, 40, 200, 200]  # grey and RGB files alike
    assert [p.name for p in data.test.files] == ["cat3.png", "dog3.png"]
    assert data.source == f"from {tmp_path / 'labels.csv'}"
    prepared = prepare("csv", data, 0.2, seed=0)
    assert prepared.spec.val_source == "the dataset's own val split" and prepared.spec.has_test_split


def test_a_tsv_without_header_or_split_column_is_all_train_and_val_fraction_holds_out(tmp_path):
    rows = [row.replace(",", "\t") for row in pets(tmp_path, per_class=5)]
    data = read(tmp_path, rows, name="labels.tsv", channels=1)
    assert data.val is None and data.test is None and data.train.images.shape == (10, 1, 8, 8)
    prepared = prepare("csv", data, 0.2, seed=0)
    assert (prepared.spec.train_size, prepared.spec.val_size) == (8, 2)


def test_header_columns_in_any_order_with_other_columns_semicolons_and_quotes(tmp_path):
    write_png(tmp_path / "a; b.png", 40)
    write_png(tmp_path / "c.png", 200)
    write_png(tmp_path / "d.png", 200)
    rows = ['cat;42;"a; b.png";Train', "dog;7;c.png;TRAIN", "dog;7;d.png;Validation"]
    data = read(tmp_path, rows, header="Class;width;Image Path;Split")
    assert data.classes == ["cat", "dog"] and [p.name for p in data.train.files] == ["a; b.png", "c.png"]
    assert [p.name for p in data.val.files] == ["d.png"] and data.test is None


@pytest.mark.parametrize(
    "name, first_line, expected",
    [("l.tsv", "a,b.png cat", "\t"), ("l.txt", "a.png\tcat", "\t"), ("l.csv", "a.png;cat", ";"), ("l", "a,b", ",")],
)
def test_the_delimiter_comes_from_the_extension_or_the_first_line(name, first_line, expected):
    assert delimiter_of(Path(name), f"\n{first_line}\nmore") == expected


def test_numeric_labels_sort_as_numbers_and_absolute_paths_are_kept(tmp_path):
    rows = [f"{write_png(tmp_path / 'x' / f'{i}.png', 10 * i)},{label}" for i, label in enumerate([10, 2, 10, 2, 1])]
    data = read(tmp_path, rows)
    assert data.classes == ["1", "2", "10"] and data.train.labels.tolist() == [2, 1, 2, 1, 0]
    # 1 and 01 are the same number: ordered by their text then, the same in every process (not by set order)
    assert sorted_names({"01", "10", "1", "001"}) == ["001", "01", "1", "10"]


def test_given_classes_fix_the_order_and_may_list_a_class_without_rows(tmp_path, caplog):
    data = read(tmp_path, pets(tmp_path), classes=["dog", "bird", "cat"])
    assert data.classes == ["dog", "bird", "cat"] and data.train.labels.tolist() == [2] * 4 + [0] * 4
    assert "data.classes lists bird, which no train row" in caplog.text


def test_root_is_where_file_names_start(tmp_path):
    rows = pets(tmp_path / "data")
    labels = write_rows(tmp_path / "lists" / "labels.csv", rows)
    data = label_file(labels=str(labels), root=str(tmp_path / "data"), image_size=8)
    assert len(data.train) == 8


def test_streamed_when_over_the_cache_limit_with_the_same_images_and_labels(tmp_path, caplog):
    rows, header = pets(tmp_path, split=split_of), "file,label,split"
    in_memory = read(tmp_path, rows, header)
    streamed = read(tmp_path, rows, header, cache_limit_mb=0)
    assert isinstance(streamed.train, FileImageSet) and "streaming them from disk" in caplog.text
    assert torch.equal(streamed.train.labels, in_memory.train.labels) and streamed.train.files == in_memory.train.files
    assert all(torch.equal(streamed.train[i][0], in_memory.train.images[i]) for i in range(len(streamed.train)))
    assert torch.equal(streamed.test.labels, in_memory.test.labels)


def test_image_folder_with_labels_is_data_csv(tmp_path):
    labels = write_rows(tmp_path / "labels.csv", pets(tmp_path, split=split_of))
    by_csv = label_file(labels=str(labels), image_size=8)
    by_folder = image_folder(labels=str(labels), image_size=8)
    assert by_folder.classes == by_csv.classes and torch.equal(by_folder.train.images, by_csv.train.images)
    assert torch.equal(by_folder.val.labels, by_csv.val.labels)
    with pytest.raises(ConfigError, match="data.classes applies to a label file"):
        image_folder(root=str(tmp_path), classes=["cat", "dog"])


# --- mistakes: one message each, with the lines and the fix --------------------------------------------


def rows_with_missing(tmp_path):
    rows = pets(tmp_path, split=split_of)
    return rows + [f"images/gone{i}.png,cat,train" for i in range(7)] + ["images/gone_val.png,dog,val"]


@pytest.mark.parametrize(
    "rows, settings, expected",
    [
        (
            rows_with_missing,
            {},
            [
                "8 of the 16 files that",
                "do not exist under",
                "line 9 (images/gone0.png), line 10 (images/gone1.png)",
                "line 13 (images/gone4.png) and 3 more",
                "data.skip_bad_files=true to leave those rows out",
            ],
        ),
        (
            lambda p: pets(p)[:5] + ["images/dog1.png,bird", "images/dog2.png,fish", "images/dog3.png,bird"],
            {"classes": ["cat", "dog"]},
            ["3 row(s) have a label data.classes does not list: 'bird' (2 rows from line 6), 'fish' (line 7)."],
        ),
        (
            lambda p: pets(p) + ["./images/../images/cat1.png,cat"],
            {},
            ["lists 1 file(s) twice: ./images/../images/cat1.png (lines 2 and 9)", "remove the repeated rows"],
        ),
        (
            lambda p: pets(p, split=split_of)[:-1] + ["images/dog3.png,dog,tst"],
            {},
            ["1 row(s) have a split that is not train, val or test: line 8 ('tst'). Did you mean 'test'?"],
        ),
        (
            lambda p: pets(p)[:3] + ["images/cat3.png,cat,train", "images/dog0.png", "images/dog1.png,"],
            {},
            ["3 malformed row(s): line 4 has 3 field(s), line 5 has 1 field(s), line 6 has no label", "2 fields"],
        ),
        (lambda p: ["a.png,cat,train,x"], {}, ["line 1 has 4 field(s)", "start the file with a header"]),
        (lambda p: pets(p, split=lambda i: "test"), {}, ["has no train rows", "all 8 rows says val or test"]),
        (
            lambda p: pets(p, split=lambda i: "train")[:-1] + ["images/dog3.png,bird,test"],
            {},
            ["1 val/test row(s) have a label no train row has: 'bird' (line 8). The model cannot learn"],
        ),
        (
            lambda p: pets(p, split=split_of)[:2] + ["images/gone.png,cat,val"] + pets(p, split=split_of)[4:6],
            {"skip_bad_files": True},
            ["None of the 1 val files that", "left the val split empty"],
        ),
        (lambda p: [], {}, ["is empty; it needs one file,label row per image"]),
        (lambda p: ["file,label"], {}, ["has a header but no rows"]),
        (
            lambda p: pets(p)[:1] + ['"images/cat1.png,cat'] + pets(p)[2:],
            {},
            ["1 malformed row(s): line 2 opens a quote it does not close"],
        ),
    ],
    ids=[
        "missing",
        "not-in-classes",
        "twice",
        "split",
        "malformed",
        "wide",
        "no-train",
        "untrained",
        "all-skipped",
        "empty",
        "header-only",
        "quote",
    ],
)
def test_mistakes_in_the_label_file_are_one_message_with_lines(tmp_path, rows, settings, expected):
    with pytest.raises(DatasetError) as err:
        read(tmp_path, rows(tmp_path), **settings)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_missing_files_are_left_out_with_skip_bad_files(tmp_path, caplog):
    data = read(tmp_path, rows_with_missing(tmp_path), skip_bad_files=True)
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    assert "leaving out 8 row(s)" in caplog.text and "line 9 (images/gone0.png)" in caplog.text


def test_a_data_row_first_gets_the_header_hint(tmp_path):
    with pytest.raises(DatasetError, match=r"If line 1 is a header, name its columns file, label and split.$"):
        read(tmp_path, ["image_id,breed"] + pets(tmp_path))


def test_no_label_file_or_a_missing_one(tmp_path):
    with pytest.raises(ConfigError, match=r"^data=csv needs data.labels=<file>"):
        label_file()
    with pytest.raises(DatasetError, match=r"labels.csv does not exist \(data.labels\)"):
        label_file(labels=str(tmp_path / "labels.csv"))
    with pytest.raises(DatasetError, match=r"is a folder"):
        label_file(labels=str(tmp_path))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.classes=[cat,dog,cat]", "data.classes lists cat more than once"),
        ("data.classes=cat", "data.classes must be null (the labels in the label file, sorted) or a list of at least"),
        ("data.labels=''", "data.labels must be null or the path of a label file"),
    ],
)
def test_label_settings_are_checked_before_data_loads(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_config(compose_config(["data=csv", override]))


# --- the command line and cnntrain-eval ----------------------------------------------------------------

QUICK = ("model=mlp", "trainer.epochs=1", "data.image_size=8", "data.batch_size=4", "device=cpu")


def test_train_on_a_label_file_then_evaluate_its_test_split(tmp_path):
    labels = write_rows(tmp_path / "pets.csv", pets(tmp_path, split=split_of), header="file,label,split")
    run_dir = tmp_path / "run"
    result = run_cli("python -m cnntrain", "data=csv", f"data.labels={labels}", *QUICK, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert f"mlp on csv from {labels} (4 train / 2 val from the dataset's own val split / 2 test)" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["data"], summary["train_size"], summary["test_size"]) == (
        "completed",
        "csv",
        4,
        2,
    )
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["classes"] == ["cat", "dog"]

    evaluated = evaluate_run(run_dir, split="test")  # cnntrain-eval's body: the run's own test rows
    assert evaluated.size == 2 and evaluated.own_data and evaluated.evaluation.acc == summary["test_acc"]
    assert [row["support"] for row in evaluated.per_class] == [1, 1]


def test_a_resume_after_a_class_was_added_to_the_label_file_says_so(tmp_path):
    rows = pets(tmp_path, split=split_of)
    labels = write_rows(tmp_path / "pets.csv", rows, header="file,label,split")
    run = train("data=csv", f"data.labels={labels}", *QUICK, "trainer.progress=none", run_dir=tmp_path / "run")
    run_dir = run.run_dir
    write_rows(labels, rows + pets(tmp_path, classes=("bird",), split=split_of), header="file,label,split")
    with pytest.raises(DatasetError) as caught:
        resume(run_dir, "trainer.epochs=2")
    assert str(caught.value).startswith(
        "Cannot resume: the data's classes changed since the run started (new: bird); the run's model has 2 "
        "outputs, for cat, dog. Put the data back as it was"
    )
    write_rows(labels, rows, header="file,label,split")  # as it was: the resume goes on
    assert [m.epoch for m in resume(run_dir, "trainer.epochs=2").history] == [1, 2]


def test_a_bad_label_file_on_the_command_line_is_exit_2_and_one_message(tmp_path):
    labels = write_rows(tmp_path / "pets.csv", pets(tmp_path) + ["images/cat0.png,cat"])
    result = run_cli(
        "python -m cnntrain", "data=csv", f"data.labels={labels}", *QUICK, f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: Label file {labels} lists 1 file(s) twice: images/cat0.png (lines 1 and 9)" in result.stderr


def test_an_image_folder_run_evaluated_on_a_label_file_matches_classes_by_name(tmp_path):
    for name in ("cat", "dog"):
        for i in range(4):
            write_png(tmp_path / "folders" / name / f"{i}.png", LEVELS[name])
    run_dir = tmp_path / "run"
    train("data=image_folder", f"data.root={tmp_path / 'folders'}", *QUICK, "trainer.progress=none", run_dir=run_dir)
    labels = write_rows(tmp_path / "new" / "new.csv", pets(tmp_path / "new", per_class=3, classes=("dog", "cat")))
    result = evaluate_run(
        run_dir, split="all", overrides=["data=csv", f"data.labels={labels}", "data.classes=[dog,cat]"]
    )
    assert result.size == 6 and result.folder.path.name.startswith("csv-new-")
    assert [row["support"] for row in result.per_class] == [3, 3]  # the run's order: cat, dog
    assert result.evaluation.labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert any("another order; they are matched by name" in notice for notice in result.notices)
    # The label file has no test rows: split=test is its validation hold-out, and a notice says so.
    held_out = evaluate_run(run_dir, overrides=["data=csv", f"data.labels={labels}"])
    assert held_out.size == 1 and any("has no test split of its own" in notice for notice in held_out.notices)


def test_an_image_folder_config_saved_before_label_files_still_checks():
    """Saved configs of older runs have no data.labels or data.classes: the builder's defaults (None) apply."""
    from omegaconf import open_dict

    cfg = compose_config(["data=image_folder"])
    with open_dict(cfg):
        cfg.data.pop("labels"), cfg.data.pop("classes")
    checked = check_config(cfg)
    assert "labels" not in checked.dataset.settings and checked.dataset.name == "image_folder"
