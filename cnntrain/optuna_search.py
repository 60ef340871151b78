"""The Optuna search a sweep runs (`hparams_search=optuna`; the Hydra plugin in
hydra_plugins/cnntrain_optuna_sweeper hands it its settings, the launcher and the command line).

`OptunaSearch.run(arguments)` opens (or continues) the study in its storage, asks `n_jobs` trials at a
time, launches them as jobs with their parameters and `sweep.trial` (where a job finds its trial to
report each epoch's val_acc to: trial_pruning.py), and tells the study how each job ended, read from
its summary.json: COMPLETE with its best val_acc, PRUNED, or FAIL. `n_trials` counts the study's
completed and pruned trials, so a search stopped (Ctrl-C, a smaller n_trials) and started again with the same
command runs only the missing ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.optuna_study import (
    PRUNER_ATTR,
    STUDIES_IN_MEMORY,
    absolute_storage,
    make_pruner,
    make_sampler,
    pruner_label,
    quiet_optuna_logging,
    search_space,
    storage_problem,
)
from cnntrain.run_folder import RunFolder

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# Overrides that do not change what a trial trains: left out of the default study name, so the same
# search run with more trials, another launcher or fail_fast continues the same study.
NOT_IN_STUDY_NAME = ("hydra.", "hydra/launcher=", "launcher=", "sweep.", "trainer.progress=")
# The sweeper's settings that change how trials are chosen and stopped: part of the default study name.
SEARCH_KEYS = ("sampler", "seed", "n_startup_trials", "pruner", "pruner_startup_trials", "pruner_warmup_epochs")


@dataclass
class SearchSettings:
    """hydra.sweeper's settings (configs/hparams_search/optuna.yaml explains each)."""

    sampler: str = "tpe"
    seed: int | None = None
    n_startup_trials: int = 10
    direction: str = "maximize"
    storage: str | None = None
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    pruner: Any = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 1
    params: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        for name in ("n_trials", "n_jobs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"hydra.sweeper.{name} must be a whole number >= 1, got {value!r}.")
        for name in ("pruner_startup_trials", "pruner_warmup_epochs", "n_startup_trials"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"hydra.sweeper.{name} must be a whole number >= 0, got {value!r}.")
        if self.direction != "maximize":
            raise ConfigError(
                f"hydra.sweeper.direction must be maximize (a job's result is its best val_acc), "
                f"got {self.direction!r}."
            )


def without_typed_values(params: dict[str, str], arguments: list[str], say) -> dict[str, str]:
    """hydra.sweeper.params less the keys given one value on the command line (`optimizer.lr=0.01`): what the user
    typed wins over the search space of a file, as it does for any other setting (said once per key)."""
    _, typed = search_space(list(arguments))
    keys = {item.split("=", 1)[0].lstrip("+~") for item in typed}
    for key in sorted(keys & set(params)):
        say(f"optuna: {key} is set on the command line, so it is not searched (hydra.sweeper.params had {params[key]})")
    return {key: value for key, value in params.items() if key not in keys}


def default_study_name(config, arguments: list[str], params: dict[str, str], how: Sequence[str] = ()) -> str:
    """<model>-<data>-<8 hex digits of what the trials train with and `how` they are chosen and stopped (sampler,
    pruner)>: the same command names the same study (n_trials, n_jobs and the storage aside), and the same search
    with another pruner or sampler (to compare them) another one."""
    kept = sorted(arg for arg in arguments if not arg.lstrip("+~").startswith(NOT_IN_STUDY_NAME))
    space = sorted(f"{key}={value}" for key, value in params.items())
    digest = hashlib.sha1("\n".join(kept + ["--"] + space + ["--", *how]).encode()).hexdigest()[:8]
    return f"{config.model.name}-{config.data.name}-{digest}"


def quoted(text: str) -> str:
    """A value for a Hydra override, in single quotes (a storage URL holds ':' and '/')."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _finished_states() -> tuple:
    """The trials n_trials counts, as Optuna's MaxTrialsCallback does: a failed trial is tried again."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


class OptunaSearch:
    def __init__(self, settings: SearchSettings, config, launcher, say=print):
        self.settings, self.config, self.launcher, self.say = settings, config, launcher, say
        self.job_idx = 0

    def run(self, arguments: list[str]) -> None:
        import optuna

        settings = self.settings
        settings.check()
        quiet_optuna_logging()
        try:
            storage = absolute_storage(settings.storage, Path(self.config.hydra.runtime.cwd))
        except OSError as err:  # its folder cannot be made (read-only, no such place)
            raise ConfigError(storage_problem(settings.storage, err)) from None
        if storage is None and self.config.hydra.launcher.get("_target_") != BASIC_LAUNCHER:
            raise ConfigError(
                "hydra.sweeper.storage=null keeps the Optuna study in this process's memory, which the jobs of "
                "this launcher (other processes) cannot reach to report to their trials: keep a storage file "
                "(the default, hydra.sweeper.storage=sqlite:///outputs/optuna.db) or use the basic launcher."
            )
        params = without_typed_values(dict(settings.params or {}), arguments, self.say)
        space, fixed = search_space([f"{key}={value}" for key, value in params.items()] + list(arguments))
        if not space:
            raise ConfigError(
                "The Optuna search has nothing to tune: give hydra.sweeper.params or a swept value "
                "('optimizer.lr=tag(log,interval(0.001,1))')."
            )
        fixed = [item for item in fixed if item.split("=", 1)[0].lstrip("+~") not in space]
        how = [f"{key}={getattr(settings, key)}" for key in SEARCH_KEYS]
        name = settings.study_name or default_study_name(self.config, list(arguments), params, how)
        pruner = make_pruner(settings.pruner, settings.pruner_startup_trials, settings.pruner_warmup_epochs)
        try:
            study = optuna.create_study(
                storage=storage,
                pruner=pruner,
                study_name=name,
                direction="maximize",
                load_if_exists=True,
            )
        except Exception as err:  # a bad URL, a driver that is missing, a file that cannot be written (SQLAlchemy's)
            raise ConfigError(storage_problem(settings.storage, err)) from None
        if storage is None:
            STUDIES_IN_MEMORY[name] = study
        arguments_ = [settings.pruner_startup_trials, settings.pruner_warmup_epochs]
        study.set_user_attr(PRUNER_ATTR, {"pruner": settings.pruner, "arguments": arguments_})
        abandon_running(study, self.say)
        done = len(study.get_trials(deepcopy=False, states=_finished_states()))
        # A seeded sampler starts its random draws again in each search: a continued study would get its
        # first trials' values once more, so the seed moves on by the trials already finished.
        seed = None if settings.seed is None else settings.seed + done
        study.sampler = make_sampler(settings.sampler, seed, settings.n_startup_trials, space)
        self._run_trials(study, space, fixed, storage)

    def _run_trials(self, study, space: dict[str, Any], fixed: list[str], storage: str | None) -> None:
        from optuna.trial import TrialState

        settings = self.settings
        done = len(study.get_trials(deepcopy=False, states=_finished_states()))
        total = settings.n_trials
        if settings.sampler == "grid":
            total = min(total, grid_size(space))
        where = f"in {storage}" if storage else "in memory"
        if done >= total:
            self.say(
                f"optuna study {study.study_name} {where} already has {done} finished trials "
                f"(hydra.sweeper.n_trials={settings.n_trials}): nothing to run. Raise n_trials to go on."
            )
            Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # the sweep report writes there
            return
        self.say(
            f"optuna study {study.study_name} {where}: {done} of {total} trials finished, running {total - done} "
            f"({settings.sampler} sampler, {pruner_label(settings.pruner)}, {settings.n_jobs} at a time)"
        )
        to_go = total - done
        while to_go > 0:
            trials = self._ask(study, space, min(settings.n_jobs, to_go))
            batch = [self._job_overrides(study, trial, fixed, storage) for trial in trials]
            try:
                returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            except BaseException:  # Ctrl-C, a fail-fast stop: the trials asked for never finish
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                self._tell(study, trial, ret)
            to_go -= len(trials)
        self._write_results(study, storage)

    def _ask(self, study, space: dict[str, Any], count: int) -> list:
        try:
            return [study.ask(fixed_distributions=space) for _ in range(count)]
        except ValueError as err:  # a choice(...) other than the one the study's trials had
            abandon_running(study, say=lambda text: None)  # the trial asked for is not left running
            raise ConfigError(
                f"The study {study.study_name} has trials with another search space ({err}): keep its space, "
                f"or start a new study with another hydra.sweeper.study_name (or none: named after the command)."
            ) from None

    def _job_overrides(self, study, trial, fixed: list[str], storage: str | None) -> list[str]:
        address = f"{{study:{quoted(study.study_name)},number:{trial.number}"
        address += f",storage:{quoted(storage)}}}" if storage else ",storage:null}"
        return [*fixed, *(f"{key}={value}" for key, value in trial.params.items()), f"sweep.trial={address}"]

    def _tell(self, study, trial, ret) -> None:
        """The study told how the job ended (its summary.json), and one line said."""
        from optuna.trial import TrialState

        state, value = job_outcome(ret)
        try:
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        except RuntimeError as err:  # the grid sampler calls study.stop() at its last point: the trial is told
            if "Study.stop" not in str(err):
                raise
        told = study.get_trials(deepcopy=False)[trial.number]
        if state == TrialState.COMPLETE:
            best = study.best_trial
            text = f"val acc {value:.4f} (best so far: trial {best.number}, {best.value:.4f})"
        elif state == TrialState.PRUNED and told.last_step is not None:
            text = f"pruned at epoch {told.last_step} (val acc {told.intermediate_values[told.last_step]:.4f})"
        else:
            text = "pruned" if state == TrialState.PRUNED else "failed (its error is in the sweep table)"
        self.say(f"optuna trial {trial.number}: {text}")

    def _write_results(self, study, storage: str | None) -> None:
        """optimization_results.yaml in the sweep folder: the study's best trial so far (all its runs)."""
        import yaml
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return
        best = study.best_trial
        results = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": storage,
            "best_trial": best.number,
            "best_params": dict(best.params),
            "best_value": best.value,
        }
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        path.write_text(yaml.safe_dump(results, sort_keys=False))
        if storage:
            self.say(f"see the study: optuna-dashboard {storage}")


def job_outcome(ret) -> tuple[Any, float | None]:
    """(TrialState, value) of a launched job, from its summary.json: a job's return value alone cannot
    tell a failed job (it returns a score so that other sweepers go on) from a completed one."""
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    if ret.status != JobStatus.COMPLETED or ret.hydra_cfg is None:
        return TrialState.FAIL, None
    try:
        summary = RunFolder(Path(ret.hydra_cfg.hydra.runtime.output_dir)).read_summary() or {}
    except CnnTrainError:
        return TrialState.FAIL, None
    if summary.get("status") != "completed" or not isinstance(summary.get("best_val_acc"), (int, float)):
        return TrialState.FAIL, None
    if summary.get("pruned"):
        return TrialState.PRUNED, None
    return TrialState.COMPLETE, float(summary["best_val_acc"])


def abandon_running(study, say) -> None:
    """Trials a stopped search left running (its process killed) are told FAIL, so they no longer show
    as running and the search counts on from the finished ones."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        say(f"optuna trial {trial.number} was left running by a search that stopped: marked failed")


def grid_size(space: dict[str, Any]) -> int:
    from cnntrain.optuna_study import grid_choices

    size = 1
    for values in grid_choices(space).values():
        size *= len(values)
    return size
