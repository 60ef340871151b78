"""The Optuna study of a search (`hparams_search=optuna`), as the sweeper's process and each job's see it.

- `quiet_optuna_logging()`: Optuna's warnings as plain `optuna: ...` lines, its info lines and alembic's
  "setup plugin" lines off, no colour codes;
- `search_space(arguments)`: Hydra's sweep syntax (`interval`, `tag(log, ...)`, `choice`, `range`) as
  Optuna distributions, and the overrides every trial takes as they are;
- `make_sampler`, `make_pruner` (and `pruner_name`): the `hydra.sweeper.sampler` / `pruner` choices;
- `open_trial(address)`: a job's trial, found through the storage (a job of launcher=joblib runs in
  another process) or, for a study kept in memory, in this process (`STUDIES_IN_MEMORY`).

optuna is imported inside the functions: the sweeper plugin imports this module on every command.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cnntrain.errors import ConfigError
from cnntrain.registry import did_you_mean

DEFAULT_STORAGE = "sqlite:///outputs/optuna.db"
SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("median", "hyperband", "none")
# The study's user attribute that tells each job the pruner to ask (a loaded study has Optuna's default).
PRUNER_ATTR = "cnntrain_pruner"
# Studies with storage=null, by name: the basic launcher's jobs run in this process and find them here.
STUDIES_IN_MEMORY: dict[str, Any] = {}
_PLAIN = {"handler": None}


def quiet_optuna_logging() -> None:
    """Optuna's own lines in cnntrain's style: warnings only, as `optuna: <message>` on stderr, no colour
    (its default handler colours them with colorlog, and a file gets the escape codes). Alembic logs
    "setup plugin alembic..." at INFO when an SQLite storage is opened: only its warnings pass."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.disable_propagation()  # Hydra's handlers would add "[HYDRA]" and a timestamp
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if _PLAIN["handler"] is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("optuna: %(message)s"))
        _PLAIN["handler"] = handler
        optuna.logging.get_logger("optuna").addHandler(handler)


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """({key: Optuna distribution} of the swept overrides, [the other overrides, as every trial gets them])."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(list(arguments))
    except HydraException as err:
        raise ConfigError(f"Cannot read the search space: {err}") from None
    space, fixed = {}, []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return space, fixed


def distribution(override) -> Any:
    """One swept override as an Optuna distribution: choice -> categorical, range -> its integers (or
    its values, for floats or shuffle), interval -> uniform (log-uniform with tag(log, ...))."""
    from hydra.core.override_parser.types import Transformer, ValueType
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:  # glob(...) picks config files: no search space
        raise ConfigError(f"{override.input_line}: an Optuna search cannot tune a glob(...) of choices.")
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{override.input_line}: the range holds no value.")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=value.step)  # Hydra's stop is excluded, Optuna's not
        return CategoricalDistribution(values)
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(
        f"{override.input_line}: an Optuna search takes interval(a, b), tag(log, interval(a, b)), "
        f"choice(...) or range(...), not this kind of sweep."
    )


def make_sampler(name: str, seed: int | None, startup_trials: int, space: Mapping[str, Any]):
    """hydra.sweeper.sampler's Optuna sampler, seeded (`startup_trials`: random trials before TPE or
    CMA-ES start modelling)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise ConfigError(
                "hydra.sweeper.sampler=cmaes needs the cmaes package, which is not installed. "
                "Install it with: pip install 'cnntrain[optuna]'"
            )
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_choices(space), seed=seed)
    raise ConfigError(
        f"Unknown hydra.sweeper.sampler '{name}' (one of {', '.join(SAMPLERS)}).{did_you_mean(str(name), SAMPLERS)}"
    )


def grid_choices(space: Mapping[str, Any]) -> dict[str, list]:
    """The grid sampler's values of each key: a choice's, a range's; an interval has no grid."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    choices = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            choices[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            choices[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ConfigError(
                f"hydra.sweeper.sampler=grid tries every value, so {key} needs choice(...) or range(...), "
                f"not an interval."
            )
    return choices


def pruner_name(spec: Any) -> str:
    """How a stop sentence names the pruner: median, hyperband, or the class of a _target_ pruner."""
    if isinstance(spec, Mapping):
        return str(spec.get("_target_", "custom")).rsplit(".", 1)[-1]
    return "none" if spec is None else str(spec)


def pruner_label(spec: Any) -> str:
    """ "median pruner", "hyperband pruner", "no pruner", or a _target_ pruner's class ("PercentilePruner")."""
    name = pruner_name(spec)
    if name == "none":
        return "no pruner"
    return f"{name} pruner" if name in PRUNERS else name


def make_pruner(spec: Any, startup_trials: int = 5, warmup_epochs: int = 1):
    """hydra.sweeper.pruner's Optuna pruner. median: a trial stops when its val_acc at an epoch is below
    the median of the earlier trials' at that epoch (not before `startup_trials` trials finished, nor in
    a trial's first `warmup_epochs` epochs); hyperband: Optuna's HyperbandPruner; none: never; a mapping
    with _target_: that Optuna pruner, e.g. {_target_: optuna.pruners.PercentilePruner, percentile: 25}."""
    import optuna

    if isinstance(spec, Mapping) and "_target_" in spec:
        from hydra.utils import instantiate

        try:
            pruner = instantiate(dict(spec))
        except Exception as err:  # a misspelt class or argument: one line, not Hydra's chain
            raise ConfigError(f"hydra.sweeper.pruner: cannot make {spec['_target_']}: {err}") from None
        if not isinstance(pruner, optuna.pruners.BasePruner):
            raise ConfigError(f"hydra.sweeper.pruner: {spec['_target_']} is not an Optuna pruner.")
        return pruner
    if spec == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if spec == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if spec in ("none", None):
        return optuna.pruners.NopPruner()
    raise ConfigError(
        f"Unknown hydra.sweeper.pruner '{spec}' (one of {', '.join(PRUNERS)}, or an Optuna pruner as "
        f"{{_target_: optuna.pruners.<Name>, ...}}).{did_you_mean(str(spec), PRUNERS)}"
    )


def open_trial(address: Mapping[str, Any]):
    """(study, trial) of a job: `address` is the job's sweep.trial ({storage, study, number}). The pruner
    comes from the study's PRUNER_ATTR, which the sweeper set."""
    import optuna

    quiet_optuna_logging()
    name, storage = address["study"], address.get("storage")
    if storage is None:
        study = STUDIES_IN_MEMORY.get(name)
        if study is None:
            raise ConfigError(
                f"sweep.trial: the study '{name}' is kept in the memory of the process that runs the search "
                f"(hydra.sweeper.storage=null), which this job cannot reach."
            )
    else:
        study = optuna.load_study(study_name=name, storage=storage)
        settings = study.user_attrs.get(PRUNER_ATTR) or {}
        study.pruner = make_pruner(settings.get("pruner", "none"), *settings.get("arguments", []))
    # Optuna finds a trial by its storage id; the job is told the number a user sees (the dashboard's).
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(address["number"]))
    return study, optuna.trial.Trial(study, trial_id)


def absolute_storage(storage: str | None, start_folder: Path) -> str | None:
    """An SQLite URL with a relative path made absolute against the folder cnntrain was started from (the
    jobs of another launcher may run elsewhere), its folder made; any other URL as it is."""
    prefix = "sqlite:///"
    if not storage or not storage.startswith(prefix) or storage.startswith(prefix + "/"):
        if storage and storage.startswith(prefix + "/"):
            Path(storage[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)
        return storage
    path = (start_folder / storage[len(prefix) :]).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{prefix}{path}"


def storage_problem(storage: str | None, err: BaseException) -> str:
    """One line for a study storage that cannot be opened: the setting, the reason's first line, what to do."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return (
        f"hydra.sweeper.storage={storage}: cannot open the Optuna study there ({type(err).__name__}: {reason}). "
        f"Give a database URL Optuna can write to, e.g. the default sqlite:///outputs/optuna.db."
    )
