"""The benchmark scripts run end to end on tiny data and write the tables they promise.

No timing is asserted (figures depend on the machine); these keep the scripts from
rotting between the sessions that measure with them (a GPU session among them).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_fake_mnist

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith(f"| {first_cell} ")
    ]


def test_speed_script_compares_both_loops_and_reports_each_seed(tmp_path):
    write_fake_mnist(tmp_path / "FashionMNIST" / "raw", train_size=300, test_size=300)  # the zoo pass takes 256 of each
    output = tmp_path / "speed.md"
    run_script(
        "speed.py",
        "--root",
        str(tmp_path),
        "--seeds",
        "0,1",
        "--zoo",
        "--models",
        "lenet_bn",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    text = output.read_text()
    assert "cnntrain ran with trainer.precision=32, trainer.compile=false and decoded" in text
    timings = [row for row in table_rows(text, "lenet") if len(row) == 9]
    ratios = [row for row in table_rows(text, "lenet") if len(row) == 3]
    assert [row[3] for row in timings] == ["tutorial loop", "cnntrain"]  # only the first seed's loops
    tutorial, ours = (float(row[5].replace(",", "")) for row in timings)  # train examples/s
    assert abs(float(ratios[0][1].removesuffix("x")) - ours / tutorial) < 0.01 + 0.001 * ours / tutorial
    assert table_rows(text, "lenet_bn")[0][:4] == ["lenet_bn", "28", "256", "tutorial loop"]
    assert "LeNet test accuracy after 1 epochs, per seed" in text
    seeds = [table_rows(text, seed) for seed in ("0", "1")]
    assert all(len(rows) == 1 and all(0 <= float(acc) <= 1 for acc in rows[0][1:]) for rows in seeds)
    mean = table_rows(text, "mean")[0]
    assert abs(float(mean[1]) - (float(seeds[0][0][1]) + float(seeds[1][0][1])) / 2) < 2e-4


@pytest.mark.slow  # two whole processes per seed: run with -m slow
def test_lenet_vs_book_script_times_both_whole_processes(tmp_path):
    # 6 batches of 256: enough for the book's plot updates every batches // 5 steps
    write_fake_mnist(tmp_path / "data" / "FashionMNIST" / "raw", train_size=1536, test_size=300)
    output = tmp_path / "lenet.md"
    run_script(
        "lenet_vs_book.py",
        "--root",
        str(tmp_path / "data"),
        "--epochs",
        "2",
        "--seeds",
        "0,1",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    rows = [table_rows(output.read_text(), seed)[0] for seed in ("0", "1", "mean")]

    def close(ratio: str, numerator: str, denominator: str, half_unit: float) -> bool:
        # The times are printed rounded (to half_unit either way); the ratio was taken before rounding.
        n, d = float(numerator), float(denominator)
        return (
            (n - half_unit) / (d + half_unit) - 0.01
            <= float(ratio.removesuffix("x"))
            <= ((n + half_unit) / (d - half_unit) + 0.01)
        )

    for row in rows:
        assert close(row[3], row[1], row[2], 0.05) and close(row[6], row[4], row[5], 0.005)  # process, epoch
        assert 0 < float(row[5]) < float(row[2])  # cnntrain's epoch is part of its process
        assert all(0 <= float(acc) <= 1 for acc in row[7:9])


def test_lenet_floor_script_times_cnntrain_against_the_bare_loop(tmp_path):
    write_fake_mnist(tmp_path / "data" / "FashionMNIST" / "raw", train_size=768, test_size=256)  # 3 steps of 256
    output = tmp_path / "floor.md"
    run_script(
        "lenet_floor.py",
        "--root",
        str(tmp_path / "data"),
        "--reps",
        "2",
        "--no-compile",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    text = output.read_text()
    assert "experiment=d2l_lenet (batch 256, 3 steps per epoch), 2 rounds" in text
    ours, bare = table_rows(text, "cnntrain (Trainer.train_one_epoch)")[0], table_rows(text, "bare loop")[0]
    assert not [line for line in text.splitlines() if line.startswith("| bare loop, torch.compile")]
    for row in (ours, bare):
        fastest, median, ratio = (float(cell) for cell in row[1:])
        assert 0 < fastest <= median
    assert float(bare[3]) == 1.0
    assert abs(float(ours[3]) - float(ours[1]) / float(bare[1])) < 0.01 + 0.01 * float(ours[3])


def test_choices_script_reports_what_channels_last_auto_picks(tmp_path):
    output = tmp_path / "choices.md"
    run_script(
        "choices.py",
        "--models",
        "lenet,lenet_bn",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    rows = {row[0]: row for row in table_rows(output.read_text(), "lenet") + table_rows(output.read_text(), "lenet_bn")}
    assert rows["lenet"][6] == "channels_last" and rows["lenet_bn"][6] == "contiguous"
    assert all(float(rows[name][3].replace(",", "")) > 0 for name in rows)  # step milliseconds, contiguous


@pytest.mark.slow  # over 5 s: run with -m slow
def test_distributed_script_compares_one_and_two_processes(tmp_path):
    result = run_script(
        "distributed.py", "--processes", "1,2", "--epochs", "1", "experiment=smoke", "data.train_size=256", cwd=tmp_path
    )
    rows = table_rows(result.stdout, "1") + table_rows(result.stdout, "2")
    assert [row[0] for row in rows] == ["1", "2"] and rows[0][2] == "1.00"
    assert rows[0][5] == rows[1][5]  # the same global batches: the same validation accuracy


@pytest.mark.slow  # two whole runs: run with -m slow
def test_recipes_script_reports_each_seed_and_their_mean(tmp_path):
    output = tmp_path / "recipes.md"
    run_script(
        "recipes.py",
        "--seeds",
        "0,1",
        "--output",
        str(output),
        "--recipe",
        "smoke=experiment=smoke trainer.epochs=1",
        cwd=tmp_path,
    )
    [row] = table_rows(output.read_text(), "smoke")
    per_seed = [float(a) for a in row[1].split(", ")]
    mean, spread = (float(x) for x in row[2].split(" ± "))
    assert len(per_seed) == 2 and abs(mean - sum(per_seed) / 2) < 1e-4 and spread >= 0
    assert 0 <= float(row[3]) <= 1  # the mean best validation accuracy
    assert "`cnntrain experiment=smoke trainer.epochs=1`" in output.read_text()
    assert "validation ran on the test images" not in output.read_text()  # smoke holds out 20% of train
    assert ", CPU: " in output.read_text()  # the figures name the CPU they were measured on


@pytest.mark.slow  # two whole runs: run with -m slow
def test_recipes_script_gives_the_last_epoch_when_validation_is_the_test_split(tmp_path):
    output = tmp_path / "recipes.md"
    run_script(
        "recipes.py",
        "--seeds",
        "0,1",
        "--output",
        str(output),
        "--recipe",
        "book=experiment=smoke trainer.epochs=2 data.val_fraction=0",
        cwd=tmp_path,
    )
    note = next(line for line in output.read_text().splitlines() if line.startswith("- book:"))
    figures = note.split("After the last epoch: ")[1]
    per_seed = [float(a) for a in figures.split(" (")[0].split(", ")]
    assert len(per_seed) == 2 and all(0 <= a <= 1 for a in per_seed)
    assert f"({sum(per_seed) / 2:.4f} ± " in figures


@pytest.mark.slow  # nine whole runs: run with -m slow
def test_contention_script_compares_fixed_threads_with_auto(tmp_path):
    output = tmp_path / "contention.md"
    args = ["--models", "lenet", "--loads", "0,1", "--side-by-side", "2", "--output", str(output)]
    run_script("contention.py", *args, "data=synthetic", "data.train_size=512", cwd=tmp_path)
    text = output.read_text()
    assert "CPU: " in text and "before: trainer.threads=" in text
    rows = table_rows(text, "lenet")
    assert [row[1] for row in rows] == ["0", "1", "1 thread, quiet"]
    for row in rows[:2]:
        before, after, ratio = float(row[2].replace(",", "")), float(row[3].replace(",", "")), float(row[4])
        assert before > 0 and after > 0 and abs(ratio - after / before) < 0.01
    side_by_side = table_rows(text, "before") + table_rows(text, "after")
    assert [row[0].split(" ")[0] for row in side_by_side] == ["before", "after"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in side_by_side)


def test_imbalance_script_trains_the_three_ways_on_the_cut_classes(tmp_path):
    write_fake_mnist(tmp_path / "FashionMNIST" / "raw", train_size=1000, test_size=200)
    output = tmp_path / "imbalance.md"
    run_script("imbalance.py", "--epochs", "1", "--root", str(tmp_path), "--output", str(output), cwd=tmp_path)
    text = output.read_text()
    names = ["plain", "trainer.class_weights=balanced", "data.sampler=balanced"]
    rows = [row for name in names for row in table_rows(text, name)]
    assert [row[0] for row in rows] == names
    assert all(0 <= float(figure) <= 1 for row in rows for figure in row[1:5])
    assert [row[5] for row in rows] == ["1", "1", "1"]  # the best epoch of one
    assert "Trouser, Dress, Coat, Sandal, Sneaker kept at 10% of their training images" in text
    assert "the whole test split (200 images, balanced)" in text
    assert " cores." in text  # the figures name the CPU they were measured on
