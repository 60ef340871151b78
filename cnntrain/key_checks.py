"""An override's key checked against the config it would change, without torch and before Hydra runs.

`check_override_keys` composes the overrides' group choices (each choice of a swept group in
turn) and answers the first key the config does not have (`trainer.epoch=3`, `lr=0.1`,
`+trainer.epoch=3` that Hydra would add silently), a section replaced by a value, a whole
section removed, with the closest existing key; `unknown_key_message` and `dotted_keys` say the
same for the run folder's config (opened_run.py).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnntrain.config import BUILDER_SECTIONS, GROUPS, compose, extra_config_dirs
from cnntrain.errors import ConfigError
from cnntrain.registry import did_you_mean


def old_logger_spelling(name: str) -> str:
    """What `logger.name=<name>` (one logger, the spelling from before the registry) is answered with:
    on the command line here, and by loggers.catalog for a config that holds it with other loggers."""
    return (
        f"logger.name={name} is the old spelling: choose loggers with logger={name} (several at once: "
        f"logger=[csv,{name}]), and set theirs with logger.{name}.<key>=..."
    )


def check_override_keys(args: list[str]) -> str | None:
    """A message for the first override whose key the config does not have, else None.

    `trainer.epoch=3`, `lr=0.1` or `+trainer.epoch=3`: Hydra says "Key 'epoch' is not in
    struct" for the first two and silently adds the third. Here the answer names the key and
    the closest existing one. `+` may add settings to BUILDER_SECTIONS only. Configs that
    Hydra finds elsewhere (--config-dir, search paths) are left to Hydra.
    """
    if extra_config_dirs(args) or any("hydra.searchpath" in arg for arg in args):
        return None
    choices, settings = {}, []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+~")
        if key.startswith("~") and "." not in bare and not arg.startswith("-"):
            return (
                f"{arg} would remove the whole '{bare}' section, which every run needs. "
                f"Choose another with {bare}=<choice>, or remove single keys ({bare}.<key>)."
            )
        if arg.startswith("-") or not sep or key.startswith("~") or bare.split(".")[0] == "hydra" or "/" in bare:
            continue
        if bare == "logger.name" and sep:  # the spelling from before several loggers at once
            return old_logger_spelling(value)
        if bare in GROUPS:  # a sweep's choices: each is checked; a list of choices (logger=[a,b]) is one
            choices[key] = [value] if value.startswith("[") else value.split(",")
        else:
            settings.append((key, bare, arg))
    if not settings:
        return None
    first = {key: values[0] for key, values in choices.items()}
    # The first choice of every group, then each other choice of a swept group in its place.
    combinations = [first] + [{**first, key: value} for key, values in choices.items() for value in values[1:]]
    for combination in combinations:
        try:
            cfg = compose([f"{key}={value}" for key, value in combination.items()])
        except ConfigError:
            return None  # a bad choice gets its own message
        problem = _unknown_setting(cfg, settings)
        if problem:
            swept = [f"{key}={value}" for key, value in combination.items() if len(choices[key]) > 1]
            return problem + (f" (in the jobs with {', '.join(swept)})" if swept else "")
    return None


def _unknown_setting(cfg: DictConfig, settings: list[tuple[str, str, str]]) -> str | None:
    """The message for the first of `settings` ((key as typed, bare key, argument)) `cfg` cannot take."""
    known = dotted_keys(cfg)
    for key, bare, arg in settings:
        if bare in known and isinstance(OmegaConf.select(cfg, bare, throw_on_resolution_failure=False), DictConfig):
            value = arg.partition("=")[2].strip()
            if not value.startswith("{"):
                keys = ", ".join(
                    k[len(bare) + 1 :] for k in known if k.startswith(bare + ".") and "." not in k[len(bare) + 1 :]
                )
                return (
                    f"{bare} is a section ({keys}); {arg} would replace it with a single value. "
                    f"Set one of its keys, e.g. {bare}.<key>=..."
                )
        if bare in known or (key.startswith("+") and bare.split(".")[0] in BUILDER_SECTIONS and "." in bare):
            continue
        return unknown_key_message(bare, arg, known)
    return None


def unknown_key_message(key: str, arg: str, known: list[str]) -> str:
    section, parent, leaf = key.split(".")[0], key.rpartition(".")[0], key.rpartition(".")[2]
    siblings = [k[len(parent) + 1 :] for k in known if k.startswith(parent + ".") and "." not in k[len(parent) + 1 :]]
    # `lr=0.1`: the key with that name nearest the top (optimizer.lr, not model.recipe.sgd.lr).
    same_leaf = sorted((k for k in known if k.rpartition(".")[2] == leaf), key=lambda k: k.count("."))
    if same_leaf and (len(same_leaf) == 1 or same_leaf[0].count(".") < same_leaf[1].count(".")):
        hint = f" Did you mean '{same_leaf[0]}'?"
    elif parent in known:  # a typo among the section's own keys, not any key with a similar prefix
        close = did_you_mean(leaf, siblings)
        hint = close.replace(" Did you mean '", f" Did you mean '{parent}.") if close else ""
    else:
        hint = did_you_mean(key, known)
    message = f"Unknown setting '{key}' ({arg}).{hint}"
    if section in BUILDER_SECTIONS and parent and not arg.startswith("+"):
        message += (
            f" Settings that configs/{section}/<file> does not list are added with +: "
            f"+{key}=... (the {section} builder then checks them)."
        )
    elif parent in known:
        message += f" {parent} has: {', '.join(sorted(siblings))}."
    return message


def dotted_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every key of `node` as a dotted path, sections included (trainer, trainer.early_stopping, ...)."""
    keys = []
    for key in node.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            keys += dotted_keys(child, path + ".")
    return keys
