"""The sweep report's pieces (best job, best.yaml, plugin checks), without running a sweep."""

import csv
import importlib.util
import io

import pytest
import yaml
from rich.console import Console

from cnntrain.sweep import failed_job_result, missing_plugin
from cnntrain.sweep_jobs import best_job, write_best
from cnntrain.sweep_report import at_chance_level, report_sweep
from tests.conftest import make_job


def row(job, status, acc, overrides):
    return {
        "job": job,
        "overrides": " ".join(overrides),
        "override_list": overrides,
        "status": status,
        "best_val_acc": acc,
        "test_acc": acc,
        "best_epoch": 1,
        "wall_seconds": 1.0,
        "run_dir": f"sweep/{job}",
        "error": "" if status == "completed" else "boom",
        "test_is_validation": False,
    }


def test_best_job_is_the_first_completed_job_with_the_highest_accuracy(tmp_path):
    rows = [
        row(0, "completed", 0.5, ["optimizer.lr=0.1"]),
        row(1, "failed", None, ["optimizer.lr=9"]),
        row(2, "completed", 0.8, ["optimizer.lr=0.01"]),
        row(3, "completed", 0.8, ["optimizer.lr=0.02"]),
    ]
    best = best_job(rows)
    assert best["job"] == 2
    write_best(best, tmp_path / "best.yaml")
    assert yaml.safe_load((tmp_path / "best.yaml").read_text()) == {
        "job": 2,
        "overrides": ["optimizer.lr=0.01"],
        "best_val_acc": 0.8,
        "test_acc": 0.8,
        "best_epoch": 1,
        "run_dir": "sweep/2",
    }
    assert best_job([row(0, "failed", None, [])]) is None


def test_a_missing_plugin_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert missing_plugin(["-m", "launcher=joblib"]) == (
        "'launcher=joblib' needs Hydra's joblib plugin (hydra-joblib-launcher), which is not installed. "
        "Install it with: pip install 'cnntrain[joblib]'"
    )
    assert missing_plugin(["hparams_search=null", "model=mlp"]) is None


def test_a_search_without_optuna_names_the_extra_to_install(monkeypatch):
    """cnntrain's sweeper is always there (hydra_plugins/cnntrain_optuna_sweeper): Optuna itself is asked for."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "optuna" else real_find_spec(name))
    message = "needs optuna, which is not installed. Install it with: pip install 'cnntrain[optuna]'"
    assert missing_plugin(["hparams_search=optuna"]) == f"'hparams_search=optuna' {message}"
    assert missing_plugin(["-m", "hydra/sweeper=optuna"]) == f"'hydra/sweeper=optuna' {message}"
    assert missing_plugin(["-m", "launcher=joblib", "optimizer.lr=0.1,0.2"]) is None


def test_the_plugins_are_installed_for_the_tests():
    """`pip install -e '.[dev]'` brings both plugins, so CI runs the search and joblib tests."""
    assert missing_plugin(["hparams_search=optuna", "launcher=joblib"]) is None


def test_a_failed_job_scores_zero_a_value_any_sweeper_accepts():
    from omegaconf import OmegaConf

    score = failed_job_result(OmegaConf.create({"sweep": {"fail_fast": False}}))
    assert score == 0.0
    optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install 'cnntrain[optuna]')")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), score)
    assert study.best_value == 0.0
    # Why not NaN (or None, which a sweeper cannot turn into a float): Optuna records it as a failed trial
    # (cnntrain's own sweeper tells the study so itself, from the job's summary.json).
    with pytest.warns(UserWarning, match="nan is not acceptable"):
        assert study.tell(study.ask(), float("nan")).state == optuna.trial.TrialState.FAIL


def test_report_writes_csv_png_and_best_and_marks_jobs_a_fail_fast_stop_cut_short(tmp_path):
    make_job(
        tmp_path,
        "0_optimizer.lr=0.1",
        ["optimizer.lr=0.1"],
        {"status": "completed", "best_val_acc": 0.75, "test_acc": 0.7, "best_epoch": 2, "wall_seconds": 3.0},
    )
    make_job(tmp_path, "1_optimizer.lr=9", ["optimizer.lr=9"], {"status": "failed", "error": "loss became nan\nmore"})
    make_job(tmp_path, "2_optimizer.lr=0.5", ["optimizer.lr=0.5"])  # still running when the sweep stopped
    console = Console(file=io.StringIO(), width=200)
    rows = report_sweep(tmp_path, console, stopping=True)
    assert [(r["job"], r["status"], r["error"]) for r in rows] == [
        (0, "completed", ""),
        (1, "failed", "loss became nan"),
        (2, "stopped", "stopped by sweep.fail_fast before it finished"),
    ]
    printed = console.file.getvalue()
    assert "best job: 0  optimizer.lr=0.1  val acc 0.7500" in printed and "1 of 3 jobs failed." in printed
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["best.yaml", "sweep.csv", "sweep.png"]
    with open(tmp_path / "sweep.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed", "failed", "stopped"]


def test_a_pruned_job_is_shown_pruned_and_is_not_a_failure(tmp_path):
    done = {"status": "completed", "best_val_acc": 0.8, "test_acc": 0.7, "best_epoch": 3, "wall_seconds": 3.0}
    make_job(tmp_path, "0", ["optimizer.lr=0.1", "sweep.trial={study:'s',number:0,storage:null}"], done)
    pruned = {**done, "best_val_acc": 0.3, "best_epoch": 1, "pruned": {"pruner": "median", "epoch": 1, "val_acc": 0.3}}
    make_job(tmp_path, "1", ["optimizer.lr=0.9", "sweep.trial={study:'s',number:1,storage:null}"], pruned)
    (tmp_path / "multirun.yaml").write_text("{}\n")  # what python -m cnntrain.sweep looks for
    console = Console(file=io.StringIO(), width=400)
    rows = report_sweep(tmp_path, console)
    assert [(r["job"], r["status"], r["overrides"]) for r in rows] == [
        (0, "completed", "optimizer.lr=0.1"),
        (1, "pruned", "optimizer.lr=0.9"),  # the trial's address is the sweeper's, not a setting tried
    ]
    printed = console.file.getvalue()
    assert "pruned at epoch 1 by the median pruner" in printed and "failed" not in printed
    with open(tmp_path / "sweep.csv") as f:
        assert [(r["status"], r["error"]) for r in csv.DictReader(f)] == [
            ("completed", ""),
            ("pruned", "at epoch 1 by the median pruner"),
        ]
    from cnntrain.sweep import main

    assert main([str(tmp_path)]) == 0  # pruned jobs only: the sweep did not fail


@pytest.mark.parametrize("test_is_validation", [True, False])
def test_a_best_job_chosen_on_its_test_images_is_called_flattering(tmp_path, test_is_validation):
    make_job(
        tmp_path,
        "0_seed=1",
        ["seed=1"],
        {
            "status": "completed",
            "best_val_acc": 0.8,
            "test_acc": 0.8,
            "best_epoch": 2,
            "wall_seconds": 3.0,
            "test_is_validation": test_is_validation,
        },
    )
    console = Console(file=io.StringIO(), width=400)
    report_sweep(tmp_path, console)
    printed = console.file.getvalue()
    assert "best job: 0  seed=1  val acc 0.8000" in printed
    assert (
        "notice: the best job validated on its test images (e.g. data.val_fraction=0), so it was chosen on them "
        "and its test accuracy flatters it." in printed
    ) is test_is_validation


def test_a_job_at_chance_level_is_marked_and_the_table_says_what_that_means(tmp_path):
    """The README's old example: LeNet, one epoch, both lrs at 0.0978 of 10 classes (guessing scores 0.1)."""
    job = {"status": "completed", "test_acc": 0.1, "best_epoch": 1, "wall_seconds": 30.0, "num_classes": 10}
    make_job(tmp_path, "0", ["optimizer.lr=0.1"], {**job, "best_val_acc": 0.0978})
    make_job(tmp_path, "1", ["optimizer.lr=0.9"], {**job, "best_val_acc": 0.7645})
    make_job(tmp_path, "2", ["optimizer.lr=5"], {**job, "best_val_acc": 0.1199})
    make_job(
        tmp_path,
        "3",
        ["optimizer.lr=0.5"],
        {**{k: v for k, v in job.items() if k != "num_classes"}, "best_val_acc": 0.1},
    )  # a run from before num_classes: unmarked
    console = Console(file=io.StringIO(), width=200)
    report_sweep(tmp_path, console)
    lines = console.file.getvalue().splitlines()
    marked = [line.split("│")[1].strip() for line in lines if "chance level" in line and "│" in line]
    assert marked == ["0", "2"]
    assert not any("chance level" in line for line in lines if "│ 1 " in line or "│ 3 " in line)
    note = next(line for line in lines if line.startswith("chance level"))
    assert note == (
        "chance level (jobs 0, 2): a best validation accuracy about what guessing scores (1/10 = 0.1000), "
        "so the model did not learn. The lr may be too high or too low (optimizer.lr), or the epochs too "
        "few (trainer.epochs)."
    )


@pytest.mark.parametrize(
    "acc, classes, marked",
    [
        (0.0978, 10, True),
        (0.1199, 10, True),
        (0.1201, 10, False),
        (0.54, 2, True),
        (0.56, 2, False),
        (0.029, 100, True),
        (0.9, 10, False),
        (0.1, None, False),
        (0.1, 1, False),
    ],
)
def test_chance_level_is_within_two_points_or_a_tenth_of_guessing(acc, classes, marked):
    assert at_chance_level({"status": "completed", "best_val_acc": acc, "num_classes": classes}) is marked
    assert at_chance_level({"status": "failed", "best_val_acc": acc, "num_classes": classes}) is False


def test_a_sweep_without_a_job_at_chance_level_has_no_note(tmp_path):
    make_job(
        tmp_path,
        "0",
        ["seed=1"],
        {
            "status": "completed",
            "best_val_acc": 0.8,
            "test_acc": 0.8,
            "best_epoch": 2,
            "wall_seconds": 3.0,
            "num_classes": 10,
        },
    )
    console = Console(file=io.StringIO(), width=200)
    report_sweep(tmp_path, console)
    assert "chance level" not in console.file.getvalue()
