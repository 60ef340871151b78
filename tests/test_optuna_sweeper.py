"""cnntrain's Optuna sweeper: the search space, samplers and pruners it makes, and the search loop run in
this process with a launcher that trains each job here (the command line's searches are in test_cli.py)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from cnntrain.errors import ConfigError
from cnntrain.sweep_jobs import collect_jobs, failed_jobs
from tests.conftest import make_job

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install 'cnntrain[optuna]')")
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from cnntrain.optuna_search import (  # noqa: E402
    BASIC_LAUNCHER,
    OptunaSearch,
    SearchSettings,
    default_study_name,
)
from cnntrain.optuna_study import (  # noqa: E402
    STUDIES_IN_MEMORY,
    absolute_storage,
    make_pruner,
    make_sampler,
    search_space,
)

SMOKE = ["experiment=smoke", "data.train_size=96", "data.test_size=32", "trainer.progress=none"]
NEVER_GOOD_ENOUGH = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 1.1}  # val_acc is never above 1.1


def test_the_yaml_search_space_becomes_optunas_distributions():
    space, fixed = search_space(
        [
            "optimizer.lr=tag(log, interval(0.001, 1.0))",
            "optimizer.momentum=interval(0.5, 0.99)",
            "trainer.epochs=int(interval(1, 4))",  # interval(1, 4) alone is Hydra's floats
            "model.width=tag(log, int(interval(8, 64)))",
            "data.batch_size=choice(32, 64, 128)",
            "model=choice(lenet,mlp)",
            "data.resize=range(28, 40, 4)",
            "experiment=smoke",
            "+trainer.foo=1",
        ]
    )
    assert space == {
        "optimizer.lr": FloatDistribution(0.001, 1.0, log=True),
        "optimizer.momentum": FloatDistribution(0.5, 0.99),
        "trainer.epochs": IntDistribution(1, 4),
        "model.width": IntDistribution(8, 64, log=True),
        "data.batch_size": CategoricalDistribution([32, 64, 128]),
        "model": CategoricalDistribution(["lenet", "mlp"]),
        "data.resize": IntDistribution(28, 36, step=4),  # Hydra's range leaves its stop out, Optuna's high is in
    }
    assert fixed == ["experiment=smoke", "+trainer.foo=1"]
    with pytest.raises(ConfigError, match=r"model=glob\(\*\): an Optuna search cannot tune a glob"):
        search_space(["model=glob(*)"])


def test_samplers_and_pruners_by_name():
    space = {"lr": FloatDistribution(0.01, 1.0), "batch": CategoricalDistribution([32, 64])}
    assert type(make_sampler("tpe", 1, 5, space)).__name__ == "TPESampler"
    assert type(make_sampler("random", 1, 5, space)).__name__ == "RandomSampler"
    assert type(make_sampler("cmaes", 1, 5, space)).__name__ == "CmaEsSampler"
    grid = make_sampler("grid", 1, 5, {"batch": CategoricalDistribution([32, 64]), "n": IntDistribution(1, 3)})
    assert type(grid).__name__ == "GridSampler"
    with pytest.raises(ConfigError, match="sampler=grid tries every value, so lr needs choice"):
        make_sampler("grid", 1, 5, space)
    with pytest.raises(ConfigError, match=r"Unknown hydra.sweeper.sampler 'tpee' .*Did you mean 'tpe'\?"):
        make_sampler("tpee", 1, 5, space)
    median = make_pruner("median", 3, 2)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 2)
    assert isinstance(make_pruner("hyperband"), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(NEVER_GOOD_ENOUGH), optuna.pruners.ThresholdPruner)
    with pytest.raises(ConfigError, match="Unknown hydra.sweeper.pruner 'medain'"):
        make_pruner("medain")
    with pytest.raises(ConfigError, match="cannot make optuna.pruners.Nope"):
        make_pruner({"_target_": "optuna.pruners.Nope"})


def test_the_storage_path_and_default_study_name(tmp_path):
    assert absolute_storage("sqlite:///outputs/optuna.db", tmp_path) == f"sqlite:///{tmp_path}/outputs/optuna.db"
    assert (tmp_path / "outputs").is_dir()
    assert absolute_storage(None, tmp_path) is None
    assert absolute_storage("postgresql://db/x", tmp_path) == "postgresql://db/x"
    config = OmegaConf.create({"model": {"name": "lenet"}, "data": {"name": "fashion_mnist"}})
    name = default_study_name(config, ["experiment=smoke", "hparams_search=optuna"], {"optimizer.lr": "interval(0,1)"})
    assert name.startswith("lenet-fashion_mnist-") and len(name) == len("lenet-fashion_mnist-") + 8
    # More trials, another launcher: the same study; another setting or search space: another.
    same = default_study_name(
        config, ["hparams_search=optuna", "experiment=smoke", "launcher=joblib"], {"optimizer.lr": "interval(0,1)"}
    )
    assert same == name
    assert default_study_name(config, ["experiment=smoke", "model.width=2"], {"optimizer.lr": "interval(0,1)"}) != name
    assert default_study_name(config, ["experiment=smoke"], {"optimizer.lr": "interval(0,2)"}) != name
    # The same search with another pruner (to compare them): another study.
    args, space = ["experiment=smoke", "hparams_search=optuna"], {"optimizer.lr": "interval(0,1)"}
    assert default_study_name(config, args, space, ["pruner=median"]) == default_study_name(
        config, args, space, ["pruner=median"]
    )
    assert default_study_name(config, args, space, ["pruner=none"]) != default_study_name(
        config, args, space, ["pruner=median"]
    )


class InProcessLauncher:
    """Runs each job with cnntrain.run in this process, in <sweep>/<job number>, as Hydra's basic
    launcher does; a failed job returns 0.0 as the train task does."""

    def __init__(self, sweep_dir):
        self.sweep_dir = sweep_dir

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        from cnntrain.config import compose
        from cnntrain.run import run

        returns = []
        for number, overrides in enumerate(batch, start=initial_job_idx):
            folder = self.sweep_dir / str(number)
            make_job(self.sweep_dir, str(number), list(overrides))
            try:
                value = run(compose(list(overrides)), run_dir=folder).best_val_acc
            except ConfigError:
                value = 0.0
            hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(folder)}}})
            returns.append(
                JobReturn(overrides=overrides, hydra_cfg=hydra_cfg, status=JobStatus.COMPLETED, _return_value=value)
            )
        return returns


def search(tmp_path, sweep="sweep", launcher_target=BASIC_LAUNCHER, arguments=(), **settings):
    config = OmegaConf.create(
        {
            "hydra": {
                "runtime": {"cwd": str(tmp_path)},
                "launcher": {"_target_": launcher_target},
                "sweep": {"dir": str(tmp_path / sweep)},
            },
            "model": {"name": "lenet_classic"},
            "data": {"name": "synthetic"},
        }
    )
    settings = {"storage": "sqlite:///outputs/optuna.db", "seed": 0, "study_name": "s", **settings}
    lines = []
    launcher = InProcessLauncher(tmp_path / sweep)
    OptunaSearch(SearchSettings(**settings), config, launcher, say=lines.append).run([*SMOKE, *arguments])
    return lines


def stored_trials(tmp_path, name="s"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    return [(t.number, t.state) for t in study.trials]


@pytest.mark.parametrize("storage", ["sqlite:///outputs/optuna.db", None])
def test_a_pruned_job_stops_early_is_marked_pruned_and_the_study_told(tmp_path, storage):
    said = search(
        tmp_path,
        storage=storage,
        n_trials=2,
        pruner=NEVER_GOOD_ENOUGH,
        params={"optimizer.lr": "tag(log, interval(0.01, 0.5))", "trainer.epochs": "choice(3)"},
    )
    summary = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1  # stopped after its first epoch, tested
    assert summary["pruned"] == {
        "pruner": "ThresholdPruner",
        "epoch": 1,
        "val_acc": summary["final_epoch"]["val_acc"],
        "study": "s",
        "trial": 0,
    }
    assert (
        summary["stopped_early"]
        == f"pruned by Optuna's ThresholdPruner at epoch 1: val_acc {summary['pruned']['val_acc']:.4f}"
    )
    rows = collect_jobs(tmp_path / "sweep")
    assert [(r["status"], r["error"]) for r in rows] == [("pruned", "at epoch 1 by the ThresholdPruner")] * 2
    assert failed_jobs(rows) == 0
    assert all("sweep.trial" not in r["overrides"] for r in rows)  # the trial's address is not a tried setting
    study = STUDIES_IN_MEMORY["s"] if storage is None else None
    states = [(t.number, t.state) for t in study.trials] if study else stored_trials(tmp_path)
    assert states == [(0, TrialState.PRUNED), (1, TrialState.PRUNED)]
    assert said[-1].startswith("optuna trial 1: pruned at epoch 1 (val acc ")


def test_a_continued_study_runs_only_the_missing_trials(tmp_path):
    lr = {"optimizer.lr": "tag(log, interval(0.01, 0.5))"}
    said = search(tmp_path, "sweep1", n_trials=1, params=lr, arguments=["trainer.epochs=1"])
    first = f"optuna study s in sqlite:///{tmp_path}/outputs/optuna.db: 0 of 1 trials finished, running 1"
    assert said[0] == first + " (tpe sampler, median pruner, 1 at a time)"
    said = search(tmp_path, "sweep2", n_trials=3, params=lr, arguments=["trainer.epochs=1"])
    assert said[0].endswith(": 1 of 3 trials finished, running 2 (tpe sampler, median pruner, 1 at a time)")
    assert stored_trials(tmp_path) == [(n, TrialState.COMPLETE) for n in range(3)]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    assert len({t.params["optimizer.lr"] for t in study.trials}) == 3  # the seed moved on: no trial repeated
    results = (tmp_path / "sweep2" / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in results and f"best_trial: {study.best_trial.number}" in results
    said = search(tmp_path, "sweep3", n_trials=3, params=lr, arguments=["trainer.epochs=1"])
    assert said == [
        f"optuna study s in sqlite:///{tmp_path}/outputs/optuna.db already has 3 finished trials "
        "(hydra.sweeper.n_trials=3): nothing to run. Raise n_trials to go on."
    ]
    assert (tmp_path / "sweep3").is_dir() and not list((tmp_path / "sweep3").iterdir())


def test_a_failed_job_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    space = {"data.val_fraction": "choice(0.25, 1.5)"}  # 1.5 is refused before training
    search(tmp_path, n_trials=5, sampler="grid", params=space, arguments=["trainer.epochs=1"])
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    states = {t.params["data.val_fraction"]: t.state for t in study.trials}
    assert states == {0.25: TrialState.COMPLETE, 1.5: TrialState.FAIL}  # grid: its 2 points, not 5 trials
    rows = {r["overrides"].split()[-1]: r["status"] for r in collect_jobs(tmp_path / "sweep")}
    assert rows == {"data.val_fraction=0.25": "completed", "data.val_fraction=1.5": "failed"}


def test_a_study_in_memory_is_refused_with_a_launcher_of_other_processes(tmp_path):
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    with pytest.raises(ConfigError, match="hydra.sweeper.storage=null keeps the Optuna study in this process's memory"):
        search(tmp_path, storage=None, launcher_target=joblib, params={"optimizer.lr": "interval(0.01, 0.5)"})
    with pytest.raises(ConfigError, match="hydra.sweeper.n_trials must be a whole number >= 1, got 0"):
        search(tmp_path, n_trials=0, params={"optimizer.lr": "interval(0.01, 0.5)"})
    with pytest.raises(ConfigError, match="The Optuna search has nothing to tune"):
        search(tmp_path)
    with pytest.raises(ConfigError, match=r"direction must be maximize \(a job's result is its best val_acc\)"):
        search(tmp_path, direction="minimize", params={"optimizer.lr": "interval(0.01, 0.5)"})


def test_cmaes_without_its_package_names_the_extra(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "cmaes" else real_find_spec(name))
    with pytest.raises(ConfigError, match=r"sampler=cmaes needs the cmaes package.*pip install 'cnntrain\[optuna\]'"):
        make_sampler("cmaes", 0, 5, {"lr": FloatDistribution(0.01, 1.0)})


def test_the_median_pruner_stops_a_trial_below_the_earlier_trials_median(tmp_path):
    median = {"pruner": "median", "pruner_startup_trials": 1, "pruner_warmup_epochs": 0}
    args = ["trainer.epochs=3", "data.train_size=400"]
    search(tmp_path, "good", n_trials=1, params={"optimizer.lr": "interval(0.1, 0.10001)"}, arguments=args, **median)
    # The same study, a trial that cannot learn (lr 1e-7): below the first trial's epoch 1, so pruned there.
    bad_lr = {"optimizer.lr": "interval(0.0000001, 0.0000002)"}
    said = search(tmp_path, "bad", n_trials=2, params=bad_lr, arguments=args, **median)
    # A choice(...) is a fixed set of values for Optuna: another one in the same study is refused.
    with pytest.raises(ConfigError, match="The study s has trials with another search space"):
        search(tmp_path, "other", n_trials=3, params={"optimizer.lr": "choice(0.1, 0.2)"}, arguments=args, **median)
    assert json.loads((tmp_path / "good" / "0" / "summary.json").read_text())["epochs"] == 3
    bad = json.loads((tmp_path / "bad" / "0" / "summary.json").read_text())  # job 0 of its sweep, trial 1
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    good_epoch_1 = study.trials[0].intermediate_values[1]
    assert bad["pruned"]["epoch"] == 1 and bad["epochs"] == 1 and bad["pruned"]["val_acc"] < good_epoch_1
    assert bad["stopped_early"] == (
        f"pruned by Optuna's median pruner at epoch 1: val_acc {bad['pruned']['val_acc']:.4f}, below the median "
        f"of the earlier trials at epoch 1 ({good_epoch_1:.4f})"
    )
    # The refused search's trial is not left running.
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert said[-2].startswith("optuna trial 1: pruned at epoch 1 (val acc ")


def test_a_value_typed_on_the_command_line_is_not_searched():
    from cnntrain.optuna_search import without_typed_values

    said = []
    params = {"optimizer.lr": "tag(log, interval(0.001, 1.0))", "data.batch_size": "choice(32, 64)"}
    kept = without_typed_values(
        params, ["experiment=smoke", "optimizer.lr=0.01", "data.batch_size=choice(8,16)"], said.append
    )
    assert kept == {"data.batch_size": "choice(32, 64)"}  # a swept value on the command line is no typed value
    assert said == [
        "optuna: optimizer.lr is set on the command line, so it is not searched "
        "(hydra.sweeper.params had tag(log, interval(0.001, 1.0)))"
    ]


def test_negative_pruner_settings_are_refused():
    for key in ("pruner_startup_trials", "pruner_warmup_epochs", "n_startup_trials"):
        with pytest.raises(ConfigError, match=f"hydra.sweeper.{key} must be a whole number >= 0, got -1."):
            SearchSettings(**{key: -1}).check()
