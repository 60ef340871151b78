"""The user-code import policy: which Python modules of the user's are imported, and when.

`imports` names the modules that register a user's models, datasets or optimizers;
`import_user_modules` imports them (from the current folder too, only while importing).
A run folder is data, not code: `confirmed_imports` imports the modules a run recorded only
when the user names them again.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any

import yaml

from cnntrain.config import as_plain
from cnntrain.errors import ConfigError


def import_user_modules(modules) -> None:
    """Import the modules listed in `imports` so that their registrations take effect.

    The current folder is searched too: the `cnntrain` script's own folder is what
    Python puts on sys.path, not the folder the user is working in.
    """
    with current_folder_on_path():
        for module in module_list(modules):
            try:
                importlib.import_module(module)
            except (ImportError, ValueError, TypeError) as err:
                raise ConfigError(
                    f"Cannot import '{module}' (imports): {err}. Make sure it is on PYTHONPATH "
                    f"(e.g. run from the folder that holds it)."
                ) from err


@contextlib.contextmanager
def current_folder_on_path():
    """The current folder on sys.path while the user's named modules are imported, and only then:
    left there it would shadow any module a library imports later (a run folder holding an
    `olefile.py` would run as soon as Pillow loaded its plugins)."""
    folder = os.getcwd()
    added = folder not in sys.path
    if added:
        sys.path.append(folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def module_list(value: Any) -> list[str]:
    """`imports` as module names: from a config list, a YAML list text ('[a,b]'), one name, or nothing."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.lstrip().startswith("[") else [value]
    value = as_plain(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) and name for name in value):
        raise ConfigError(f"imports must be a list of module names, e.g. imports=[my_models], got {value!r}.")
    return list(value)


def modules_text(modules: list[str]) -> str:
    """imports as typed on a command line: [a,b] (no spaces, so a shell passes it as one argument)."""
    return f"[{','.join(modules)}]"


def confirmed_imports(recorded: Any, given: Any, run_dir: Any) -> list[str]:
    """The modules to import for a run folder's model: those the user names (`given`, None when
    not given), which must be the ones the run recorded.

    A run folder is data, not code: a module named only inside its checkpoint or saved config
    is never imported, since a folder someone sends you could carry one beside it.
    """
    recorded, given = module_list(recorded), None if given is None else module_list(given)
    if given is None and not recorded:
        return []
    retry = (
        f"add imports={modules_text(recorded)} to the command (imports={recorded!r} in Python)"
        if recorded
        else "leave imports out"
    )
    if given is None:
        raise ConfigError(
            f"{run_dir} was trained with imports={modules_text(recorded)}. Modules named in a run folder are "
            f"never imported on their own: a folder from someone else could carry code that would run. If you "
            f"trust these modules, {retry}."
        )
    if sorted(given) != sorted(recorded):
        raise ConfigError(
            f"imports={modules_text(given)} does not match the modules {run_dir} was trained with "
            f"(imports={modules_text(recorded)}). To use the run's model, {retry}."
        )
    return given
