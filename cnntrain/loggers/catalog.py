"""The `logger` config group's registry: what a run records besides metrics.csv and curves.png.

Every run writes metrics.csv (`callbacks.MetricsWriter`) and curves.png (`plots.CurvesPlot`);
a logger adds a record of its own (`logger=tensorboard`: TensorBoard event files). A logger is
a `Callback` subclass registered in `LOGGERS` by name; the config's `logger:` node holds one
section per logger, keyed by its name, with its settings (lightning-hydra-template's layout):

    cnntrain logger=tensorboard                  # logger: {tensorboard: {histogram_every: 1, ...}}
    cnntrain logger=[csv,tensorboard]            # several at once (Hydra's list of group choices)
    cnntrain logger=tensorboard logger.tensorboard.images=8

Adding a logger is one module in this package (a class with `@LOGGERS.register("name")`) and
one file configs/logger/<name>.yaml holding `<name>: {its settings}`: the package's `__init__`
imports every module in it, so nothing else changes. A user's module (`imports=`) may register one too
(`+logger.<name>={}` selects it then). A logger's settings are its class's keyword arguments,
checked like any registry entry's; besides them it may take any of `LOGGER_CONTEXT` by naming
it (its run folder, the class names, the normalisation, a `notify` that prints a line), and a
`check_settings(**settings)` static method answers bad values before any data is loaded.

Run folders written before loggers were a registry hold `logger: {name: tensorboard, ...}`;
`logger_sections` reads that spelling as `{tensorboard: {...}}`, so they resume and evaluate.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnntrain.errors import ConfigError
from cnntrain.key_checks import old_logger_spelling
from cnntrain.registry import Component, Registry, unknown_name_message
from cnntrain.trainer import Callback

# What cnntrain passes a logger that names it in its __init__: never a config setting.
LOGGER_CONTEXT = ("run_folder", "classes", "mean", "std", "notify")
LOGGERS = Registry("logger", "logger", code_arguments=LOGGER_CONTEXT)


def logger_sections(section: DictConfig | Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The `logger` node as {logger name: its settings}; None (a config without the node, or
    logger=[]) means no logger. The old one-logger spelling {name: x, ...} reads as {x: {...}}."""
    values = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"logger must be a section of loggers, e.g. logger=[csv,tensorboard]; got {values!r}.")
    if "name" in values:
        return _old_spelling(dict(values))
    return {name: _settings_of(name, settings) for name, settings in values.items()}


def _old_spelling(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: tensorboard, images: 8} (a run folder's config from before) as {tensorboard: {images: 8}}."""
    name = values.pop("name")
    if not isinstance(name, str) or any(isinstance(v, Mapping) for v in values.values()):
        raise ConfigError(old_logger_spelling(name))
    return {name: values}


def _settings_of(name: str, settings: Any) -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"logger.{name} must be the logger's settings (a section, {{}} for none), got "
            f"{settings!r}. Choose loggers with logger=[csv,{name}]."
        )
    return dict(settings)


def check_logger(section: DictConfig | Mapping[str, Any] | None) -> list[Component]:
    """The config's loggers, checked (unknown names and settings, bad values, a package not
    installed -> ConfigError), ready to build; in the node's order."""
    loggers = []
    for name, settings in logger_sections(section).items():
        if name not in LOGGERS:
            raise ConfigError(unknown_name_message("logger", f"logger.{name}", name, LOGGERS.names()))
        component = LOGGERS.checked(name, settings, section=f"logger.{name}")
        check = getattr(component.builder, "check_settings", None)
        if check is not None:
            check(**settings)
        loggers.append(component)
    return loggers


def build_loggers(loggers: Sequence[Component], **context: Any) -> list[Callback]:
    """The checked loggers, each given the parts of `context` (LOGGER_CONTEXT) its __init__ names."""
    return [logger.build(**_wanted(logger.builder, context)) for logger in loggers]


def _wanted(builder: Callable, context: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(context)
    return {key: value for key, value in context.items() if key in params}


def logger_callbacks(
    loggers: Sequence[Component],
    folder,
    classes: Sequence[str],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    title: str = "",
    notify: Callable[[str], None] = print,
) -> list[Callback]:
    """curves.png's callback and the run's loggers; they go after MetricsWriter.

    `loggers` are what `check_logger` returned; `folder` is the run's `RunFolder`.
    `mean`/`std` are the normalisation the batches went through (None: not normalised),
    so that images can be shown as they were.
    """
    from cnntrain.plots import CurvesPlot

    return [
        CurvesPlot(folder.metrics_csv, folder.curves_png, title=title),
        *build_loggers(loggers, run_folder=Path(folder.path), classes=list(classes), mean=mean, std=std, notify=notify),
    ]


def require_logger_package(logger: str, *modules: str) -> None:
    """A ConfigError saying how to install a logger's package (extra `cnntrain[<logger>]`) when one of `modules`
    cannot be imported: what each logger's check_settings and __init__ call before any data is loaded."""
    import importlib

    try:
        for module in modules or (logger,):
            importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"logger={logger} needs the {logger} package, which is not installed ({err}). "
            f"Install it with: pip install 'cnntrain[{logger}]' (or pip install {logger}), or use logger=csv."
        ) from err
