"""The loggers (`logger=csv`, `tensorboard`, `mlflow`, `wandb`; several: `logger=[csv,tensorboard]`): see catalog.py.

Every module of this package but catalog.py (the LOGGERS registry and the `logger` node's reading),
tracking.py (what every experiment tracker records of a run) and a logger's helper modules (mlflow_store.py,
tensorboard_hparams.py) registers one logger; all are
imported here, so adding a logger is one module + one configs/logger/<name>.yaml.
"""

import importlib
import pkgutil

from cnntrain.loggers.catalog import (
    LOGGER_CONTEXT,
    LOGGERS,
    build_loggers,
    check_logger,
    logger_callbacks,
    logger_sections,
)

__all__ = ["LOGGER_CONTEXT", "LOGGERS", "build_loggers", "check_logger", "logger_callbacks", "logger_sections"]


def _register_the_loggers_here() -> None:
    """Import every module of this package: each registers its logger (one module + one YAML per logger)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_the_loggers_here()
