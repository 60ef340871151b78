"""The Hydra sweeper `optuna` (its settings registered as hydra/sweeper=optuna), a thin shell around
cnntrain.optuna_search.OptunaSearch: Hydra hands it the launcher and the command line's overrides."""

# OmegaConf reads the settings' types from the dataclass: typing's Optional, which it knows, not `X | None`.
# ruff: noqa: UP045

import sys
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from cnntrain.optuna_study import DEFAULT_STORAGE


@dataclass
class CnntrainOptunaSweeperConf:
    """hydra.sweeper's settings; configs/hparams_search/optuna.yaml says what each does."""

    _target_: str = "hydra_plugins.cnntrain_optuna_sweeper.optuna_sweeper.CnntrainOptunaSweeper"
    # A pruner given as {_target_: optuna.pruners...} stays a mapping: each job makes its own from it.
    _recursive_: bool = False
    sampler: str = "tpe"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    direction: str = "maximize"
    storage: Optional[str] = DEFAULT_STORAGE
    study_name: Optional[str] = None
    n_trials: int = 20
    n_jobs: int = 1
    pruner: Any = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 1
    params: Optional[dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=CnntrainOptunaSweeperConf, provider="cnntrain")


class CnntrainOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = {
            key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in settings.items()
        }
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from cnntrain.companion_line import EXIT_USAGE, print_error
        from cnntrain.errors import CnnTrainError
        from cnntrain.optuna_search import OptunaSearch, SearchSettings

        try:
            OptunaSearch(SearchSettings(**self.settings), self.config, self.launcher).run(arguments)
        except (CnnTrainError, ModuleNotFoundError) as err:  # a setting's mistake, Optuna missing: one line, status 2
            missing = isinstance(err, ModuleNotFoundError) and err.name and err.name.split(".")[0] == "optuna"
            if isinstance(err, ModuleNotFoundError) and not missing:
                raise
            print_error(
                "the Optuna search needs the optuna package, which is not installed. Install it with: "
                "pip install 'cnntrain[optuna]'"
                if missing
                else str(err)
            )
            sys.stdout.flush()
            raise SystemExit(EXIT_USAGE) from None  # Hydra's launchers and its main catch Exception only
