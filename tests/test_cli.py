"""The command line, run as a user runs it: in a subprocess, in an empty folder."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.helpers import run_cli

SMOKE = ["experiment=smoke", "trainer.epochs=1"]
# Smaller still, for sweeps of several jobs: most of a job's time is then start-up.
TINY_DATA = ["data.train_size=160", "data.test_size=32"]


def cnntrain(*args, cwd, script=False):
    return run_cli("cnntrain" if script else "python -m cnntrain", *args, cwd=cwd)


def run_folders(cwd):
    return sorted(p.parent for p in Path(cwd, "outputs").glob("*/*/summary.json"))


def test_smoke_run_writes_a_run_folder_and_prints_plain_lines(tmp_path):
    result = cnntrain("experiment=smoke", cwd=tmp_path, script=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    assert "cnntrain result" in result.stdout and "test acc" in result.stdout
    # The recipe line: the model's recipe, and what the experiment set instead of it.
    [recipe_line] = [line for line in lines if line.startswith("recipe: ")]
    assert recipe_line.startswith("recipe: lenet_classic's (our choice: the book's LeNet batch at a ReLU-safe lr): ")
    assert recipe_line.endswith("set by experiment=smoke: optimizer.lr=0.1, data.batch_size=32, trainer.epochs=3")
    [run_dir] = run_folders(tmp_path)
    assert run_dir.name.endswith("_lenet_classic_synthetic")
    # Paths to copy are never broken across lines (rich's width is 80 when stdout is not a terminal).
    assert lines[-1] == f"run folder: {run_dir.relative_to(tmp_path)}"
    assert lines.count(f"run folder: {run_dir.relative_to(tmp_path)}") == 2  # at the start and the end
    assert {p.name for p in run_dir.iterdir()} >= {".hydra", "metrics.csv", "summary.json", "train.log", "checkpoints"}
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.pt", "last.pt"}
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and float(rows[-1]["val_acc"]) > 0.5  # learns, far above 10% chance
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == "lenet_classic" and summary["data"] == "synthetic"
    log = (run_dir / "train.log").read_text()
    assert "epoch 3/3" in log and "cnntrain result" in log
    assert "- experiment=smoke" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_unknown_group_choice_is_a_short_message_with_a_suggestion(tmp_path):
    result = cnntrain("model=lenet_clasic", cwd=tmp_path)
    assert result.returncode == 2
    assert "Unknown model 'lenet_clasic' (model=lenet_clasic). Did you mean 'lenet_classic'?" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not Path(tmp_path, "outputs").exists()


def test_unknown_model_name_value_fails_before_training(tmp_path):
    result = cnntrain(*SMOKE, "model.name=lenett", cwd=tmp_path)
    assert result.returncode == 2
    assert "Unknown model 'lenett' (model.name). Did you mean 'lenet'?" in result.stderr
    assert "Traceback" not in result.stderr and "epoch 1" not in result.stdout


def test_missing_dataset_explains_where_it_looked(tmp_path):
    # MNIST, not Fashion-MNIST: this machine may have the system copy of Fashion-MNIST.
    result = cnntrain(
        "data=mnist",
        "trainer.epochs=1",
        "device=cpu",
        f"data.root={tmp_path / 'nothing'}",
        "data.download=false",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "MNIST not found" in result.stderr
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in result.stderr
    assert "Traceback" not in result.stderr


def test_multirun_gives_one_folder_per_job_and_a_sweep_table(tmp_path):
    result = cnntrain("-m", *SMOKE, "optimizer.lr=0.1,0.5", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["0", "1"]  # short, safe names; the overrides are in sweep.csv
    for job in jobs:
        assert json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["status"] == "completed"
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["overrides"] for r in rows] == [
        "experiment=smoke trainer.epochs=1 optimizer.lr=0.1",
        "experiment=smoke trainer.epochs=1 optimizer.lr=0.5",
    ]
    assert list(rows[0])[:5] == ["job", "overrides", "experiment", "trainer.epochs", "optimizer.lr"]
    assert [(r["optimizer.lr"], r["trainer.epochs"]) for r in rows] == [("0.1", "1"), ("0.5", "1")]
    assert all(r["status"] == "completed" and 0 <= float(r["best_val_acc"]) <= 1 for r in rows)
    assert "sweep result" in result.stdout and "optimizer.lr=0.5" in result.stdout


def test_a_second_sweep_into_a_used_sweep_folder_is_refused(tmp_path):
    first = cnntrain("-m", *SMOKE, "optimizer.lr=0.1,0.5", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "sweep" / "sweep.csv").read_text()
    second = cnntrain("-m", *SMOKE, "optimizer.lr=0.3", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert second.returncode == 2
    assert "sweep already holds a sweep; a new sweep there would overwrite its jobs" in second.stderr
    assert (tmp_path / "sweep" / "sweep.csv").read_text() == before


def test_failed_sweep_job_is_reported_and_the_exit_code_says_so(tmp_path):
    result = cnntrain("-m", *SMOKE, "data.val_fraction=0.2,1.5", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert rows[1]["error"].startswith("data.val_fraction must be in [0, 1), got 1.5.")
    # The other job's results are kept, and it is named the best.
    assert float(rows[0]["best_val_acc"]) > 0.1
    best = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    assert best["job"] == 0 and best["overrides"] == ["experiment=smoke", "trainer.epochs=1", "data.val_fraction=0.2"]
    assert "best job: 0" in result.stdout and "1 of 2 jobs failed" in result.stdout
    with Image.open(tmp_path / "sweep" / "sweep.png") as image:
        assert image.size == (600, 442)  # one panel (data.val_fraction) and one line listing the failed job


def test_two_runs_started_together_get_two_folders(tmp_path):
    command = [sys.executable, "-m", "cnntrain", *SMOKE, "trainer.progress=none"]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    folders = run_folders(tmp_path)
    assert len(folders) == 2 and folders[0] != folders[1]


def test_help_lists_the_groups(tmp_path):
    result = cnntrain("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "model: " in result.stdout and "lenet_classic" in result.stdout and "experiment: " in result.stdout


def test_name_typo_is_reported_without_importing_torch(tmp_path):
    script = (
        "import sys\n"
        "sys.argv = ['cnntrain', 'optimizer.name=adamw2', 'trainer.progress=none']\n"
        "from cnntrain.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit as exit:\n    print('exit', exit.code, 'torch imported:', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "exit 2 torch imported: False" in result.stdout
    assert "Unknown optimizer 'adamw2' (optimizer.name). Did you mean 'adamw'?" in result.stderr


def read_sweep_csv(sweep_dir):
    with open(sweep_dir / "sweep.csv") as f:
        return list(csv.DictReader(f))


def test_fail_fast_stops_the_sweep_at_the_first_failed_job(tmp_path):
    result = cnntrain(
        "-m",
        *SMOKE,
        *TINY_DATA,
        "data.val_fraction=1.5,0.2",
        "sweep.fail_fast=true",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    # The second job never started.
    assert [p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()] == ["0"]
    assert [(r["job"], r["status"]) for r in read_sweep_csv(tmp_path / "sweep")] == [("0", "failed")]
    assert "sweep stopped at the first failed job (sweep.fail_fast=true)" in result.stdout
    assert "data.val_fraction must be in [0, 1), got 1.5." in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


NEVER_GOOD_ENOUGH = "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.1}"  # prunes every trial


def stored_trials(db):
    """(number, state name, value) of each trial of the only study in the SQLite file `db`, read with Optuna."""
    import optuna

    [summary] = optuna.get_all_study_summaries(storage=f"sqlite:///{db}")
    study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")
    return [(t.number, t.state.name, t.value) for t in study.trials]


OPTUNA_SEARCH = ["hparams_search=optuna", *SMOKE, *TINY_DATA, "trainer.epochs=2"]


def test_optuna_search_job_reports_to_its_trial_in_the_sqlite_study_and_is_pruned(tmp_path):
    pytest.importorskip("optuna")
    result = cnntrain(
        *OPTUNA_SEARCH, "hydra.sweeper.n_trials=1", NEVER_GOOD_ENOUGH, "hydra.sweep.dir=sweep1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr  # pruned jobs are not failed ones
    db = tmp_path / "outputs" / "optuna.db"  # the default storage, under the folder cnntrain started in
    assert [r["status"] for r in read_sweep_csv(tmp_path / "sweep1")] == ["pruned"]
    summary = json.loads((tmp_path / "sweep1" / "0" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["pruned"]["epoch"] == 1 and summary["test_acc"] is not None
    assert "stopped after epoch 1: pruned by Optuna's ThresholdPruner at epoch 1: val_acc " in result.stdout
    assert "optuna trial 0: pruned at epoch 1 (val acc " in result.stdout
    assert [(n, state) for n, state, _ in stored_trials(db)] == [(0, "PRUNED")]
    # Optuna's and alembic's lines: none in Optuna's coloured format, no "setup plugin alembic".
    output = result.stdout + result.stderr
    assert "\x1b[" not in output and "alembic" not in output and "[I 20" not in output and "Trial 0 " not in output


@pytest.mark.slow  # ~35 s on a busy 2-core machine: two searches; test_optuna_sweeper.py continues one in-process
def test_the_same_optuna_search_command_continues_its_study(tmp_path):
    pytest.importorskip("optuna")
    unpruned = "hydra.sweeper.pruner=none"  # the pruner is part of the study's name: the same in both commands
    result = cnntrain(*OPTUNA_SEARCH, "hydra.sweeper.n_trials=2", unpruned, "hydra.sweep.dir=sweep1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "outputs" / "optuna.db"
    assert [(n, state) for n, state, _ in stored_trials(db)] == [(0, "COMPLETE"), (1, "COMPLETE")]
    # The same search with one trial more: only the missing trial runs, numbered on.
    result = cnntrain(*OPTUNA_SEARCH, "hydra.sweeper.n_trials=3", unpruned, "hydra.sweep.dir=sweep2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ": 2 of 3 trials finished, running 1 (tpe sampler, no pruner, 1 at a time)" in result.stdout
    trials = stored_trials(db)
    assert [(n, state) for n, state, _ in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    [row] = read_sweep_csv(tmp_path / "sweep2")
    assert row["status"] == "completed" and float(row["best_val_acc"]) == pytest.approx(trials[2][2])
    results = yaml.safe_load((tmp_path / "sweep2" / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size"}
    best_number, _, best_value = max(trials, key=lambda trial: trial[2])  # the study's best, over both commands
    assert results["best_trial"] == best_number and results["best_value"] == pytest.approx(best_value)
    assert f"see the study: optuna-dashboard sqlite:///{db}" in result.stdout
    best = yaml.safe_load((tmp_path / "sweep2" / "best.yaml").read_text())
    chosen = dict(o.split("=", 1) for o in best["overrides"])
    assert 0.001 <= float(chosen["optimizer.lr"]) <= 1.0 and chosen["data.batch_size"] in {"32", "64", "128", "256"}
    assert "sweep.trial" not in chosen  # the sweeper's address for the job, not a setting to paste


def test_optuna_search_settings_mistakes_are_one_line(tmp_path):
    pytest.importorskip("optuna")
    result = cnntrain("hparams_search=optuna", *SMOKE, "hydra.sweeper.sampler=tpee", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: Unknown hydra.sweeper.sampler 'tpee' (one of tpe, random, cmaes, grid). Did you mean 'tpe'?"
    )
    assert "Traceback" not in result.stdout + result.stderr
    # A storage Optuna cannot open: its folder cannot be made, a database it has no driver for.
    (tmp_path / "a_file").write_text("")
    for storage, reason in (
        (f"sqlite:///{tmp_path}/a_file/optuna.db", "(FileExistsError: "),
        ("nonsense://x", "(NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:nonsense)"),
    ):
        result = cnntrain("hparams_search=optuna", *SMOKE, f"hydra.sweeper.storage={storage}", cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
        assert result.stderr.startswith(f"error: hydra.sweeper.storage={storage}: cannot open the Optuna study there ")
        assert reason in result.stderr and "e.g. the default sqlite:///outputs/optuna.db." in result.stderr


@pytest.mark.slow  # ~15 s; test_optuna_sweeper.py tells a failed trial in-process
def test_failed_optuna_trial_is_told_fail_and_the_search_goes_on(tmp_path):
    # The grid sampler tries both values, so exactly one trial fails.
    result = cnntrain(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.sampler=grid",
        *SMOKE,
        *TINY_DATA,
        "data.val_fraction=choice(0.2,1.5)",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    rows = {
        dict(o.split("=", 1) for o in r["overrides"].split())["data.val_fraction"]: r
        for r in read_sweep_csv(tmp_path / "sweep")
    }
    assert rows["1.5"]["status"] == "failed" and rows["0.2"]["status"] == "completed"
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"data.val_fraction": 0.2}
    assert results["best_value"] == pytest.approx(float(rows["0.2"]["best_val_acc"]))
    states = sorted(state for _, state, _ in stored_trials(tmp_path / "outputs" / "optuna.db"))
    assert states == ["COMPLETE", "FAIL"]


@pytest.mark.slow  # ~50 s on a busy 2-core machine: two worker processes each import torch and load data
def test_joblib_jobs_of_an_optuna_search_find_their_trials_through_the_storage(tmp_path):
    pytest.importorskip("optuna")
    result = cnntrain(
        "hparams_search=optuna",
        "launcher=joblib",
        *SMOKE,
        *TINY_DATA,
        "trainer.epochs=2",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        NEVER_GOOD_ENOUGH,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert [r["status"] for r in read_sweep_csv(tmp_path / "sweep")] == ["pruned", "pruned"]
    trials = stored_trials(tmp_path / "outputs" / "optuna.db")
    assert [(n, state) for n, state, _ in trials] == [(0, "PRUNED"), (1, "PRUNED")]
    # Storage null: the jobs of other processes could not reach the study.
    result = cnntrain("hparams_search=optuna", "launcher=joblib", *SMOKE, "hydra.sweeper.storage=null", cwd=tmp_path)
    assert result.returncode == 2 and "hydra.sweeper.storage=null keeps the Optuna study" in result.stderr


@pytest.mark.slow  # ~20 s: two worker processes each import torch and load data
def test_joblib_launcher_runs_the_jobs_and_the_report_reads_them(tmp_path):
    result = cnntrain("-m", "launcher=joblib", *SMOKE, "optimizer.lr=0.1,0.5", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    rows = read_sweep_csv(tmp_path / "sweep")
    assert [(r["overrides"], r["status"]) for r in rows] == [
        ("launcher=joblib experiment=smoke trainer.epochs=1 optimizer.lr=0.1", "completed"),
        ("launcher=joblib experiment=smoke trainer.epochs=1 optimizer.lr=0.5", "completed"),
    ]
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000


def test_unknown_logger_or_search_gets_a_suggestion(tmp_path):
    result = cnntrain("logger=tensorbord", cwd=tmp_path)
    assert result.returncode == 2
    assert "Unknown logger 'tensorbord' (logger=tensorbord). Did you mean 'tensorboard'?" in result.stderr
    result = cnntrain("hparams_search=optuan", cwd=tmp_path)
    assert result.returncode == 2 and "Did you mean 'optuna'?" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["model:alexnet"], "Settings are written key=value, not key:value: write model=alexnet."),
        (["trainer.epochs:3"], "Settings are written key=value, not key:value: write trainer.epochs=3."),
        (["model", "=", "alexnet"], "No spaces around '=': write model=alexnet."),
        (["model", "=alexnet"], "No spaces around '=': write model=alexnet."),
        (["model=", "alexnet"], "No spaces around '=': write model=alexnet."),
        (
            ["model", "alexnet"],
            "'model alexnet': a key and its value are joined by '=' without spaces: write model=alexnet.",
        ),
        (["alexnet"], "'alexnet' is not an override: write model=alexnet."),
        (
            ["-m", "optimizer.lr=0.1", "0.9"],
            "'0.9' is not an override: values are comma-separated without spaces: write optimizer.lr=0.1,0.9.",
        ),
        (
            ["optimizer.lr=0.1", "0.5", "0.9", "model=mlp"],
            "write optimizer.lr=0.1,0.5,0.9; to sweep, add -m: cnntrain -m optimizer.lr=0.1,0.5,0.9.",
        ),
        (
            ["optimizer.lr=1e-3,1e-2"],
            "optimizer.lr=1e-3,1e-2 gives several values, which only a sweep runs: to sweep, "
            "add -m (cnntrain -m optimizer.lr=1e-3,1e-2); values are comma-separated without spaces.",
        ),
        (["optimizer.lr=range(0.1,1,0.1)"], "to sweep, add -m (cnntrain -m optimizer.lr=range(0.1,1,0.1))"),
        (["a..b=1"], "Cannot read the override 'a..b=1' (token recognition error at: '.')."),
        (
            ["--epochs", "3"],
            "Unknown option '--epochs': cnntrain's settings are key=value overrides without dashes: "
            "write trainer.epochs=3.",
        ),
        (["--batch-size", "64"], "write data.batch_size=64."),
        (
            ["model=[alexnet,vgg]"],
            "model=[alexnet,vgg]: model takes one choice (a file in configs/model/), not a list. "
            "To train with each of them, sweep: cnntrain -m model=alexnet,vgg",
        ),  # trained vgg
        (
            ["model={a:1}"],
            "model={a:1}: model takes the name of one of its files (configs/model/); to change a setting "
            "in it, write model.<key>=<value>",
        ),
        (["model=[alexnet"], "Unknown model '[alexnet' (model=[alexnet). Did you mean 'alexnet'?"),
        (["model=alex net"], "Unknown model 'alex net' (model=alex net). Did you mean 'alexnet'?"),
        (["-m", "model=mlp,lenet", "--cfg", "job"], "-m and --cfg cannot be used together"),  # Hydra's ValueError
        (["--model=alexnet"], "write model=alexnet."),
        (["--cfg", "jbo"], "Argument --cfg/-c: invalid choice: 'jbo' (choose from 'job', 'hydra', 'all')."),
        (["resume=outputs/x", "trainer.epochs:3"], "write trainer.epochs=3."),
    ],
)
def test_hydra_syntax_slips_get_one_line_with_the_fix(tmp_path, args, message):
    result = cnntrain(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr.replace("\n", " ")
    assert len(result.stderr.strip().splitlines()) <= 3  # one message (wrapped at most), no Hydra text
    assert (
        "HYDRA_FULL_ERROR" not in result.stderr and "hydra.cc" not in result.stderr and "Traceback" not in result.stderr
    )
    assert not Path(tmp_path, "outputs").exists()


def test_flags_after_overrides_work_and_a_sweep_search_needs_no_m(tmp_path):
    # Hydra's own parser refuses an override after --cfg job ("unrecognized arguments").
    result = cnntrain("model=mlp", "--cfg", "job", "trainer.epochs=7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["name"] == "mlp" and config["trainer"]["epochs"] == 7
    assert not Path(tmp_path, "outputs").exists()
    # hparams_search=optuna always sweeps (hydra.mode: MULTIRUN): a comma list there is not a slip.
    from cnntrain.command_line import always_sweeps, override_problem

    assert always_sweeps(["hparams_search=optuna"]) and not always_sweeps(["hparams_search=null", "model=mlp"])
    assert override_problem(["optimizer.lr=0.1,0.2"], multirun=True) is None
    assert "to sweep, add -m" in override_problem(["optimizer.lr=0.1,0.2"], multirun=False)


def test_version_anywhere_prints_cnntrains_and_hydras(tmp_path):
    import hydra

    from cnntrain import __version__

    for args in (["--version"], ["--version", "model=mlp"], ["model=mlp", "-V"]):
        result = cnntrain(*args, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (0, f"cnntrain {__version__}\nHydra {hydra.__version__}\n")


def test_tab_completion_installs_and_answers_queries(tmp_path):
    install = cnntrain("-sc", "install=bash", cwd=tmp_path, script=True)
    assert install.returncode == 0, install.stderr
    assert "hydra_bash_completion()" in install.stdout and install.stdout.rstrip().endswith(
        "hydra_bash_completion cnntrain"
    )
    install = cnntrain("--shell-completion", "install=bash", cwd=tmp_path, script=True)
    assert "complete -o nospace -o default -F hydra_bash_completion cnntrain" in install.stdout
    uninstall = cnntrain("-sc", "uninstall=bash", cwd=tmp_path, script=True)
    assert uninstall.returncode == 0 and "unset hydra_bash_completion" in uninstall.stdout

    def query(line):  # what the installed bash function runs for each Tab
        env = {"COMP_LINE": line, "COMP_POINT": str(len(line))}
        result = run_cli("cnntrain", "-sc", "query=bash", cwd=tmp_path, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert "model=" in query("cnntrain mod")
    assert {"model=alexnet", "model=alexnet_small", "model=alexnet_tv"} <= set(query("cnntrain model=ale"))
    assert "trainer.epochs=" in query("cnntrain trainer.ep")
    assert not Path(tmp_path, "outputs").exists()


def test_help_names_the_other_commands_and_completion(tmp_path):
    result = cnntrain("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in (
        "cnntrain-eval",
        "cnntrain-predict",
        "cnntrain-export",
        "cnntrain-info",
        "resume=",
        'eval "$(cnntrain -sc install=bash)"',
    ):
        assert command in result.stdout, command


@pytest.mark.parametrize(
    "command, args, message",
    [
        (
            "cnntrain-export",
            ["format:onnx", "run=x"],
            "Settings are written key=value, not key:value: write format=onnx.",
        ),
        (
            "cnntrain-export",
            ["format", "onnx"],
            "'format' needs its value after '=' without spaces: write format=onnx.",
        ),
        (
            "cnntrain-predict",
            ["run", "outputs/x", "inputs=y"],
            "'run' needs its value after '=' without spaces: write run=outputs/x.",
        ),
        ("cnntrain-predict", ["topk", "=", "5"], "No spaces around '=': write topk=5."),
        ("cnntrain-eval", ["split", "test"], "'split' needs its value after '=' without spaces: write split=test."),
        ("cnntrain-eval", ["run=x", "data.root:/data/new"], "not key:value: write data.root=/data/new."),
        (
            "cnntrain-eval",
            ["outputs/2026-01-01/typo"],
            "Unexpected argument 'outputs/2026-01-01/typo': there is no such "
            "folder or file. Give the run as run=<run folder>.",
        ),
        ("cnntrain-info", ["model:alexnet"], "Settings are written key=value, not key:value: write model=alexnet."),
        (
            "cnntrain-info",
            ["model=alexnet,vgg"],
            "model=alexnet,vgg gives several values (a sweep), and this command takes one",
        ),
    ],
)
def test_companion_command_slips_get_the_key_value_to_write(tmp_path, command, args, message):
    result = run_cli(command, *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert message in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr
    assert "Did you mean" not in result.stderr


def test_ctrl_c_in_a_companion_command_is_one_line_and_exit_130(capsys, monkeypatch):
    """Ctrl-C while a companion command imports torch or builds a model was a KeyboardInterrupt traceback.
    (In-process: where a real SIGINT lands in a subprocess, inside torch's imports, is a race.)"""
    from cnntrain import cli
    from cnntrain.companion_line import Grammar, companion_command

    @companion_command(Grammar("cnntrain-x", "usage: cnntrain-x", {"run": "r"}))
    def interrupted(options, overrides):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["cnntrain-x"])
    with pytest.raises(SystemExit) as stopped:
        interrupted()
    assert stopped.value.code == 130 and capsys.readouterr().err == "Interrupted.\n"
    for command in (cli.info_main, cli.eval_main, cli.export_main, cli.predict_main):
        assert command.__code__ is interrupted.__code__, command.__name__  # each runs inside the decorator


COMPANIONS = ("cnntrain-info", "cnntrain-eval", "cnntrain-export", "cnntrain-predict")


def run_companion(monkeypatch, capsys, command, *args) -> tuple[int, str, str]:
    """A companion command's main as its console script runs it, in this process: (exit status, stdout, stderr)."""
    from cnntrain import cli

    main = {
        "cnntrain-info": cli.info_main,
        "cnntrain-eval": cli.eval_main,
        "cnntrain-export": cli.export_main,
        "cnntrain-predict": cli.predict_main,
    }[command]
    monkeypatch.setattr(sys, "argv", [command, *args])
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMPANIONS)
def test_companion_commands_answer_help_and_version_anywhere(monkeypatch, capsys, command):
    from cnntrain import __version__

    for args in (["--help"], ["-h"], ["run=x", "--help"]):
        code, out, err = run_companion(monkeypatch, capsys, command, *args)
        assert (code, err) == (0, "") and out.startswith(f"usage: {command} "), args
    for args in (["--version"], ["run=x", "-V"]):
        assert run_companion(monkeypatch, capsys, command, *args) == (0, f"{command} (cnntrain) {__version__}\n", "")


@pytest.mark.parametrize(
    "command, args, message",
    [
        (
            "cnntrain-info",
            ["--epochs", "3"],
            "Unknown option '--epochs': cnntrain-info's settings are key=value without "
            "dashes: write trainer.epochs=3. Its only options are --help and --version.",
        ),
        (
            "cnntrain-info",
            ["model=lenet", "--bogus"],
            "Unknown option '--bogus': cnntrain-info's settings are key=value "
            "without dashes (see cnntrain-info --help).",
        ),
        (
            "cnntrain-eval",
            ["run=x", "--split=val"],
            "Unknown option '--split=val': cnntrain-eval's settings are key=value without dashes: write split=val.",
        ),
        ("cnntrain-eval", ["run=x", "--data.root", "/d"], "write data.root=/d."),
        (
            "cnntrain-export",
            ["run=x", "--fromat", "onnx"],
            "Unknown option '--fromat': cnntrain-export's settings are key=value without dashes: write format=onnx.",
        ),
        ("cnntrain-predict", ["run=x", "inputs=y", "--topk"], "write topk=<value>."),
        ("cnntrain-predict", ["run=x", "inputs", "=y"], "No spaces around '=': write inputs=y."),
        ("cnntrain-export", ["run:x"], "Settings are written key=value, not key:value: write run=x."),
        ("cnntrain-eval", ["run=x", "data=a,b"], "data=a,b gives several values (a sweep), and this command takes one"),
    ],
)
def test_companion_command_options_with_dashes_and_slips_get_the_key_value(monkeypatch, capsys, command, args, message):
    code, out, err = run_companion(monkeypatch, capsys, command, *args)
    assert (code, out) == (2, "") and err.startswith("error: ")
    assert message in err.replace("\n", " ") and "usage:" not in err


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("cnntrain-eval", ["run=x", "splt=val"], "Unexpected argument 'splt=val'. Did you mean 'split'?"),
        ("cnntrain-export", ["run=x", "fromat=onnx"], "Unexpected argument 'fromat=onnx'. Did you mean 'format'?"),
        ("cnntrain-predict", ["run=x", "inputs=y", "topkk=3"], "Unexpected argument 'topkk=3'. Did you mean 'topk'?"),
        ("cnntrain-eval", ["split=val"], "Missing run="),
        ("cnntrain-export", ["run=x"], "Missing format="),
        ("cnntrain-predict", ["topk=3"], "Missing run=, inputs="),
    ],
)
def test_companion_command_misspelt_and_missing_keys_are_named_with_the_usage(
    monkeypatch, capsys, command, args, message
):
    code, out, err = run_companion(monkeypatch, capsys, command, *args)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {message}\nusage: {command} "), err


def test_companion_commands_read_quoted_values_and_home_as_hydra_does(monkeypatch):
    from cnntrain.companion_commands import PREDICT_OPTIONS
    from cnntrain.companion_line import Grammar, read_arguments

    monkeypatch.setenv("HOME", "/home/me")
    grammar = Grammar("cnntrain-predict", "usage", PREDICT_OPTIONS, positional=("run", "inputs"))
    options, _ = read_arguments(grammar, ["run=~/runs/a", "inputs='my images/'", 'imports="[my_models]"'])
    assert (options["run"], options["inputs"], options["imports"]) == ("~/runs/a", "my images/", "[my_models]")
    from cnntrain.override_text import expand_home

    options, _ = read_arguments(grammar, expand_home(["run=~/runs/a", "inputs=x"]))
    assert options["run"] == "/home/me/runs/a"
