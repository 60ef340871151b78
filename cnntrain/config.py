"""The config tree: where it lives, its groups and names, composing it, reading its sections.

Everything here works without torch (omegaconf and Hydra only), so the CLI can answer
`--help`, `--version` and a mistyped name in a fraction of the second importing torch
takes. Every other module that needs to know the tree's layout asks this one. The names a
choice may take are checked here (`check_group_choices`, which `compose` runs, and
`unknown_component_name`); the keys of a setting in key_checks.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnntrain.errors import ConfigError
from cnntrain.registry import unknown_name_message

GROUPS = ("model", "data", "optimizer", "scheduler", "device", "experiment", "logger", "hparams_search", "launcher")
# Groups whose `name` picks a registry entry, and what the registry calls its entries.
REGISTRY_GROUPS = {"model": "model", "data": "dataset", "optimizer": "optimizer", "scheduler": "scheduler"}
MAIN_CONFIG = "train"
# Sections holding a builder's settings: a key their file does not list may be added with `+`
# (+model.width=32); the builder's registry then checks it against the builder's arguments.
BUILDER_SECTIONS = (*REGISTRY_GROUPS, "logger")
MULTI_CHOICE_GROUPS = (
    "logger",
)  # groups taking several files at once, each keyed by its name: logger=[csv,tensorboard]


# The run folder's timestamp (`${cnntrain_now:%H-%M-%S-%f}` in configs/hydra/default.yaml): like
# Hydra's `now`, except that every process of a distributed run uses rank 0's start time (set by
# the CLI under torchrun), so that they all write to one folder.
_start_time: datetime | None = None


def share_start_time(when: datetime) -> None:
    global _start_time
    _start_time = when


OmegaConf.register_new_resolver(
    "cnntrain_now", lambda pattern: (_start_time or datetime.now()).strftime(pattern), use_cache=True, replace=True
)


def config_dir() -> Path:
    """configs/ inside the installed package (wheel), else the checkout's top-level configs/."""
    package = Path(__file__).resolve().parent
    packaged = package / "configs"
    return packaged if packaged.is_dir() else package.parent / "configs"


def group_choices(group: str, dirs: Iterable[Path] = ()) -> list[str]:
    """The files of configs/<group>/ (and of the same group in `dirs`), by name."""
    return sorted({p.stem for d in (config_dir(), *dirs) for p in (Path(d) / group).glob("*.yaml")})


def group_file(group: str, choice: str) -> Path:
    """configs/<group>/<choice>.yaml, or a ConfigError naming the choices there are."""
    path = config_dir() / group / f"{choice}.yaml"
    if not path.is_file():
        raise ConfigError(unknown_name_message(group, f"{group}={choice}", choice, group_choices(group)))
    return path


def settings_of(section: DictConfig | Mapping[str, Any] | None, reserved: Iterable[str] = ("name",)) -> dict[str, Any]:
    """A config section as plain Python values without the `reserved` keys: a builder's keyword arguments."""
    if section is None:
        return {}
    values = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else dict(section)
    reserved = set(reserved)
    return {k: v for k, v in values.items() if k not in reserved}


def as_plain(value: Any) -> Any:
    """An omegaconf node (list, mapping) as plain Python values; anything else as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """The config `cnntrain <overrides>` runs with (for calls from Python and the non-Hydra entry points).

    An unknown group choice is a ConfigError with a did-you-mean, as on the command line.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    problem = check_group_choices(overrides)
    if problem:
        raise ConfigError(problem)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=MAIN_CONFIG, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err)) from err


def extra_config_dirs(args: list[str]) -> list[Path]:
    """Folders given with --config-dir/-cd: their group files are valid choices too."""
    dirs = []
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(Path(args[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
    return dirs


def check_group_choices(args: list[str]) -> str | None:
    """A message for the first unknown group choice (e.g. model=resnet81), else None.

    Hydra would also refuse it, but without suggesting the name the user meant.
    Choices that Hydra resolves in ways we cannot see (search paths, sweep functions)
    are left to Hydra.
    """
    if any("hydra.searchpath" in arg for arg in args):
        return None
    dirs = extra_config_dirs(args)
    for arg in args:
        match = re.fullmatch(rf"\+?({'|'.join(GROUPS)})=(.*)", arg, flags=re.DOTALL)
        if not match:
            continue
        group, values = match.groups()
        if len(values) > 1 and values[0] == values[-1] and values[0] in "'\"":  # quoted by quote_for_hydra
            values = values[1:-1]
        if "(" in values or "${" in values:  # a sweep function (choice(...), glob(...)) or an interpolation
            continue
        shape = None if group in MULTI_CHOICE_GROUPS else _group_value_shape_problem(group, values)
        if shape:
            return shape
        available = group_choices(group, dirs)
        for value in choice_names(group, values):
            if value not in available and value != "null":
                return unknown_name_message(group, f"{group}={value}", value, available)
    return None


def choice_names(group: str, values: str) -> list[str]:
    """The file names in a sweep's a,b; in MULTI_CHOICE_GROUPS' lists too ([csv,tensorboard], [], [a],[a,b])."""
    return (
        [name for name in re.split(r"[\s,\[\]]+", values) if name]
        if group in MULTI_CHOICE_GROUPS
        else values.split(",")
    )


def _group_value_shape_problem(group: str, value: str) -> str | None:
    """A group's value that is a list or a section: Hydra would merge a list's files one over the other
    (model=[alexnet,vgg] trained vgg) and refuse a section with its own words; a group takes one file's name."""
    if value.startswith("[") and value.endswith("]"):
        names = value[1:-1].replace(" ", "")
        sweep = f" To train with each of them, sweep: cnntrain -m {group}={names}" if names else ""
        return f"{group}={value}: {group} takes one choice (a file in configs/{group}/), not a list.{sweep}"
    if value.startswith("{"):
        return (
            f"{group}={value}: {group} takes the name of one of its files (configs/{group}/); to change a "
            f"setting in it, write {group}.<key>=<value> (e.g. {group}.name=...)."
        )
    return None


def unknown_component_name(cfg: DictConfig) -> str | None:
    """A message for a model/data/optimizer/scheduler `name` that nothing provides, found without torch.

    The registries hold exactly the components that have a file in configs/<group>/
    (tests/test_registry.py keeps it so), so a typo is caught here in a fraction of
    the second importing torch takes. Names a user's own modules register (`imports`)
    are left to the registries.
    """
    if cfg.get("imports"):
        return None
    for group, kind in REGISTRY_GROUPS.items():
        name = cfg[group].get("name")
        known = group_choices(group)
        if name not in known:
            return unknown_name_message(kind, f"{group}.name", name, known)
    return None
