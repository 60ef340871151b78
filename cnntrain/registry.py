"""Name-based registries: configs name a component, a registry builds it.

One `Registry` instance per kind (MODELS, DATASETS, OPTIMIZERS, SCHEDULERS).
Entries register with a decorator; a config's `name` key picks the entry and its
other keys become keyword arguments. Unknown names and unknown settings raise a
`ConfigError` that lists what is valid, so a typo never turns into a traceback.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cnntrain.errors import ConfigError


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (YAML reads `true` as a bool, and Python counts bools as ints)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """A whole number >= 1."""
    return is_whole(value) and value >= 1


def _type_mismatch(default: Any, value: Any) -> str | None:
    """What `value` should be when it does not have the kind of its setting's default: a flag where
    the default is true/false, a number (not true/false, not text) where it is a number; else None.
    YAML reads `true` as a boolean and `abc` as text, so `momentum=true` would otherwise train as 1.0."""
    if value is None or default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(value, str) and value.startswith("${"):  # an unresolved interpolation: judged once resolved
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, (int, float)) and not is_number(value):
        return "a number"
    if isinstance(default, (list, tuple)) and (isinstance(value, str) or not isinstance(value, Sequence)):
        return f"a list such as {list(default)}"
    return None


def unknown_name_message(kind: str, config_key: str, name: str, names: Iterable[str]) -> str:
    names = sorted(names)
    return f"Unknown {kind} '{name}' ({config_key}).{did_you_mean(str(name), names)} Available: {', '.join(names)}"


@dataclass(frozen=True)
class Component:
    """A registry entry and config settings already checked against its signature: ready to build."""

    name: str
    builder: Callable[..., Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def build(self, **extra: Any) -> Any:
        """Call the entry with the checked settings and `extra` (what code passes: a model's classes, ...)."""
        return self.builder(**self.settings, **extra)


class Registry:
    """Maps names to builder callables for one kind of component."""

    def __init__(self, kind: str, config_key: str, code_arguments: tuple[str, ...] = ()):
        self.kind = kind  # e.g. "model", used in messages
        self.config_key = config_key  # e.g. "model.name", tells the user where to fix it
        # Arguments cnntrain passes itself (e.g. a scheduler's optimizer): not config settings.
        self.code_arguments = code_arguments
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable], Callable]:
        """Decorator: `@MODELS.register("lenet")` (the function's name when omitted)."""

        def add(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = fn
            return fn

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ConfigError(unknown_name_message(self.kind, self.config_key, name, self._entries))
        return self._entries[name]

    def checked(self, name: str, settings: dict[str, Any] | None = None, section: str | None = None) -> Component:
        """The entry `name` with its config `settings`, after checking both (ConfigError otherwise).
        `section`: where the settings live, for messages (default: the config key's section)."""
        settings = dict(settings or {})
        self.check_settings(name, settings, section)
        return Component(name, self.get(name), settings)

    def build(self, name: str, settings: dict[str, Any] | None = None, **extra: Any) -> Any:
        """Call the entry `name` with `settings` (from the config) and `extra` (from code)."""
        return self.checked(name, settings).build(**extra)

    def check_settings(self, name: str, settings: dict[str, Any], section: str | None = None) -> None:
        """Reject config keys the entry does not accept, naming the valid ones (`section`: where they live,
        e.g. logger.tensorboard, when not the config key's section: model.name's settings are model.*)."""
        params = inspect.signature(self.get(name)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        valid = [
            p
            for p, spec in params.items()
            if spec.kind is not inspect.Parameter.VAR_POSITIONAL and p not in self.code_arguments
        ]
        section = section or self.config_key.rsplit(".", 1)[0]
        for key, value in settings.items():
            if key not in valid:
                raise ConfigError(
                    f"{self.kind} '{name}' has no setting '{key}' ({section}.{key}).{did_you_mean(key, valid)} "
                    + (f"Valid settings: {', '.join(valid)}" if valid else "It takes no settings.")
                )
            expected = _type_mismatch(params[key].default, value)
            if expected:
                raise ConfigError(f"{section}.{key} must be {expected}, got {value!r}.")
