"""The `logger` config group: which record of training a run keeps besides metrics.csv.

- every run: metrics.csv (`callbacks.MetricsWriter`) and curves.png (`plots.CurvesPlot`);
- `logger=tensorboard`: TensorBoard event files as well (`tensorboard_logger`).

The builder checks the settings with `check_logger` before any data is loaded (so a
missing tensorboard package is reported in a second, not after the dataset has been
read) and hands the checked settings to `logger_callbacks`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from omegaconf import DictConfig

from cnntrain.config import settings_of
from cnntrain.errors import ConfigError
from cnntrain.registry import is_whole, unknown_name_message
from cnntrain.run_folder import RunFolder
from cnntrain.trainer import Callback

LOGGERS = ("csv", "tensorboard")
TENSORBOARD_DEFAULTS = {"histogram_every": 1, "images": 32, "graph": True}


def logger_settings(section: DictConfig | None) -> dict[str, Any]:
    """The `logger` section as plain values; a config without one means logger=csv."""
    return {"name": "csv"} if section is None else settings_of(section, reserved=())


def check_logger(section: DictConfig | None) -> dict[str, Any]:
    """Checked logger settings (unknown names, bad numbers, tensorboard not installed -> ConfigError)."""
    settings = logger_settings(section)
    name = settings.get("name")
    if name not in LOGGERS:
        raise ConfigError(unknown_name_message("logger", "logger.name", str(name), LOGGERS))
    if name == "tensorboard":
        unknown = set(settings) - set(TENSORBOARD_DEFAULTS) - {"name"}
        if unknown:
            raise ConfigError(f"Unknown logger setting(s) {', '.join(sorted(unknown))} for logger=tensorboard. "
                              f"Available: {', '.join(TENSORBOARD_DEFAULTS)}")
        for key in ("histogram_every", "images"):
            value = settings.get(key, TENSORBOARD_DEFAULTS[key])
            if not is_whole(value) or value < 0:
                raise ConfigError(f"logger.{key} must be a whole number >= 0 (0 turns it off), got {value!r}.")
        from cnntrain.tensorboard_logger import check_tensorboard

        check_tensorboard()
    return settings


def logger_callbacks(settings: dict[str, Any], folder: RunFolder, classes: Sequence[str],
                     mean: Sequence[float] | None, std: Sequence[float] | None, title: str = "",
                     notify: Callable[[str], None] = print) -> list[Callback]:
    """The callbacks that keep the pictures and logs of a run; they go after MetricsWriter.

    `settings` are what `check_logger` returned.
    `mean`/`std` are the normalisation the batches went through (None: not normalised),
    so that images can be shown as they were.
    """
    from cnntrain.plots import CurvesPlot

    callbacks: list[Callback] = [CurvesPlot(folder.metrics_csv, folder.curves_png, title=title)]
    if settings["name"] == "tensorboard":
        from cnntrain.tensorboard_logger import TensorBoardLogger

        options = {key: settings.get(key, default) for key, default in TENSORBOARD_DEFAULTS.items()}
        callbacks.append(TensorBoardLogger(folder.tensorboard, classes, mean=mean, std=std, notify=notify,
                                           **options))
    return callbacks
