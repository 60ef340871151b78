"""Each model's training recipe, and the line that tells a run where its settings came from.

Every configs/model/<name>.yaml has a `recipe:` section: `source` (shown to users),
`batch_size`, `epochs` and, per optimizer family (`sgd`, `adam`, `adamw`, `rmsprop`),
the settings that differ from configs/optimizer/<family>.yaml (`RECIPE_KEYS`). The
recipe is not applied by code: the optimizer, data and trainer files read it through
OmegaConf interpolations with a fallback, e.g. `lr: ${oc.select:model.recipe.sgd.lr,0.1}`.
A value set on the command line or in an experiment replaces the interpolation, so it
wins, and the recipe never changes a value that was set explicitly. (Leave a setting out
of a recipe rather than writing `null`: `oc.select` hands a null on as it is instead of
taking the fallback.)

That is also how `recipe_summary` tells the three origins apart: in the config Hydra
hands the app (interpolations unresolved), a value that is still the
`${oc.select:model.recipe...}` interpolation came from the recipe, or from the file's
fallback when the recipe has no such key; any other value was set explicitly. A resolved
config (a resumed run's, from its checkpoint) has lost that information, so then the
values are only stated.

omegaconf only, no torch: this sits beside config.py in the config layer, so the line can
be written before torch is imported, and anything that reads configs can use it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Optimizer settings a recipe may set per family; each optimizer file reads those of them
# it has from model.recipe.<family>.<key> (tests/test_recipes.py keeps the files so).
RECIPE_KEYS = ("lr", "momentum", "weight_decay")
# The other settings a recipe sets, and the config keys that read them.
RUN_KEYS = {"batch_size": "data.batch_size", "epochs": "trainer.epochs"}

RECIPE = "recipe"
DEFAULT = "default"
SET = "set"

# ${oc.select:model.recipe.<path>,<fallback>}, as the config files write it.
_FROM_RECIPE = re.compile(r"\$\{oc\.select:\s*model\.recipe\.([\w.]+)\s*,\s*(.*?)\s*\}")


def recipe_path(raw: Any) -> str | None:
    """`<path>` when `raw` (an unresolved config value) is `${oc.select:model.recipe.<path>,...}`, else None."""
    match = _FROM_RECIPE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    return match.group(1) if match else None


def _raw(cfg: DictConfig, key: str) -> Any:
    """The value at dotted `key` as written (interpolations unresolved); None when there is none."""
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, section) if section else cfg
    if not isinstance(node, DictConfig) or leaf not in node:
        return None
    return OmegaConf.to_container(node, resolve=False)[leaf]


def tracked_keys(cfg: DictConfig) -> list[str]:
    """The config keys a recipe can set for this config: optimizer's RECIPE_KEYS it has, batch size, epochs."""
    optimizer = cfg.get("optimizer") or {}
    return [f"optimizer.{key}" for key in RECIPE_KEYS if key in optimizer] + list(RUN_KEYS.values())


def origins(cfg: DictConfig) -> dict[str, tuple[str, Any]]:
    """{config key: (origin, value)} for `tracked_keys`; origin is RECIPE, DEFAULT (the file's fallback)
    or SET (command line or experiment). Only meaningful for an unresolved config."""
    found = {}
    for key in tracked_keys(cfg):
        raw = _raw(cfg, key)
        path = recipe_path(raw)
        value = OmegaConf.select(cfg, key)
        if path is None:
            found[key] = (SET, value)
        elif OmegaConf.select(cfg, f"model.recipe.{path}") is not None:
            found[key] = (RECIPE, value)
        else:
            found[key] = (DEFAULT, value)
    return found


def is_resolved(cfg: DictConfig) -> bool:
    """True when none of the keys a recipe sets is still its interpolation: a resolved config
    (or one where every such key was set explicitly, which reads the same)."""
    return not any(recipe_path(_raw(cfg, key)) for key in tracked_keys(cfg))


def _short(key: str) -> str:
    return {"data.batch_size": "batch", "trainer.epochs": "epochs"}.get(key, key.split(".")[-1])


def _values(pairs: list[tuple[str, Any]], family: str) -> list[str]:
    """("optimizer.lr", 0.01), ("data.batch_size", 128) ... as "sgd lr 0.01", "batch 128", "10 epochs"."""
    words, named_family = [], False
    for key, value in pairs:
        if key == "trainer.epochs":
            words.append(f"{value} epochs")
        elif key.startswith("optimizer."):
            words.append(f"{'' if named_family else family + ' '}{_short(key)} {value}")
            named_family = True
        else:
            words.append(f"{_short(key)} {value}")
    return words


def recipe_summary(cfg: DictConfig, command_line: Sequence[str] | None = None) -> str:
    """One line for the start of a run: the model's recipe and which settings came from it, e.g.

    recipe: alexnet's (the book, ch. 8.1): sgd lr 0.01, batch 128, 10 epochs, init xavier_uniform;
    defaults: optimizer.momentum=0.0, optimizer.weight_decay=0.0; set by you: optimizer.lr=0.02

    The first part is the recipe's own values for the chosen optimizer family (the model's
    `init` with them); `defaults:` names the settings the recipe does not give, which take
    the optimizer/data/trainer file's fallback; then the values set explicitly, which win:
    with `command_line` (the overrides the config was composed from) those typed there are
    `set by you:`, the others `set by experiment=<name>:` (or `set in the config files:`
    when no experiment was chosen); without it all of them are `set by you:`. Optimizer
    settings not named (nesterov, betas, ...) are the optimizer file's. On a resolved config
    the values used are stated instead.
    """
    model = cfg.get("model") or {}
    name = model.get("name", "?")
    recipe = model.get(RECIPE)
    family = OmegaConf.select(cfg, "optimizer.name", default="?")
    init = f"init {model.get('init', 'default')}"
    if recipe is None:
        head = f"model {name} has none"
    else:
        source = recipe.get("source")
        head = f"{name}'s ({source})" if source else f"{name}'s"
    keys = tracked_keys(cfg)

    if is_resolved(cfg):
        used = [(key, OmegaConf.select(cfg, key)) for key in keys]
        return f"recipe: {head}; resolved config: {', '.join(_values(used, family) + [init])}"

    family_recipe = (recipe or {}).get(family) or {}
    own = [
        (f"optimizer.{key}", family_recipe[key])
        for key in RECIPE_KEYS
        if f"optimizer.{key}" in keys and family_recipe.get(key) is not None
    ]
    own += [
        (key, recipe[setting])
        for setting, key in RUN_KEYS.items()
        if recipe is not None and recipe.get(setting) is not None
    ]
    line = f"recipe: {head}: {', '.join(_values(own, family) + [init])}"
    found = origins(cfg)
    explicit = [key for key, (where, _) in found.items() if where == SET]
    groups = [("defaults", [key for key, (where, _) in found.items() if where == DEFAULT])]
    groups += _explicit_groups(explicit, command_line)
    for label, keys in groups:
        if keys:
            line += f"; {label}: {', '.join(f'{key}={found[key][1]}' for key in keys)}"
    return line


def _explicit_groups(keys: list[str], command_line: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    """The explicitly set `keys` under the label saying who set them (see `recipe_summary`)."""
    if command_line is None:
        return [("set by you", keys)]
    overrides = [arg.partition("=") for arg in command_line]
    typed = {key.lstrip("+~") for key, _, _ in overrides}
    experiments = [value for key, _, value in overrides if key.lstrip("+") == "experiment"]  # not ~experiment
    others = f"set by experiment={experiments[-1]}" if experiments else "set in the config files"
    return [("set by you", [key for key in keys if key in typed]), (others, [key for key in keys if key not in typed])]
