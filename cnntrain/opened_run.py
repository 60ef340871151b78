"""One way to reopen a finished run: `open_run(folder, checkpoint, imports)`.

`cnntrain resume=`, cnntrain-eval, cnntrain-export, cnntrain-predict, `load_run` and the
API open a run folder here, so each check has one message: a folder that is missing or is
a file (`check_run_folder`), a folder that holds no run (`not_a_run_message`:
the runs in it, with the command for the newest), an unknown checkpoint name or a lost
checkpoint file (the other one offered), and the modules the run was trained with
(`user_code.confirmed_imports`: imported only when the user names them again).

A run folder is data, never code: `rebuildable_config` is the one place its saved config
is made safe to build from again (none of its callbacks, only the confirmed imports, and
what the caller asks to leave out: its loggers, model.weights, data.download), and
`apply_override` the one place a `key=value` is put on it (a resume's and an evaluation's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cnntrain.checkpoint import RunCheckpoint
from cnntrain.config import BUILDER_SECTIONS, REGISTRY_GROUPS, choice_names, group_file
from cnntrain.errors import ConfigError, first_few
from cnntrain.key_checks import dotted_keys, unknown_key_message
from cnntrain.registry import did_you_mean
from cnntrain.run_folder import RunFolder, display_path
from cnntrain.user_code import confirmed_imports, import_user_modules

CHECKPOINTS = ("best", "last")
RUN_FOLDER_EXAMPLE = "outputs/<date>/<time>_<model>_<data>"


@dataclass(frozen=True)
class RunArgument:
    """How a command names the run it opens, for its messages."""

    key: str = ""  # "run=", "resume=": the argument; "" for a Python call (load_run)
    use: str = "load_run('{}')"  # the command for a run found inside the folder, {} standing for it
    also: str = ""  # what else the argument may name (cnntrain-predict: an .onnx file)
    choose: bool = True  # the command takes checkpoint= (a resume always continues last.pt)


@dataclass
class OpenedRun:
    """A run folder opened at one of its checkpoints, with the modules the user confirmed."""

    folder: RunFolder
    name: str  # best or last
    checkpoint: RunCheckpoint
    imports: list[str]

    def config(self, keep_loggers: bool = True, keep_weights: bool = True, download: bool = True) -> DictConfig:
        """The run's saved config, safe to rebuild from (`rebuildable_config`)."""
        return rebuildable_config(self.checkpoint.config, self.imports, keep_loggers, keep_weights, download)


def open_run(
    run_dir: Path | str,
    checkpoint: str = "best",
    imports: Any = None,
    argument: RunArgument = RunArgument(),
    import_modules: bool = True,
) -> OpenedRun:
    """checkpoints/<checkpoint>.pt of the run in `run_dir`, read and checked (`RunCheckpoint.read`), and its
    `imports` confirmed against those the user gives (`imports`; imported when `import_modules`)."""
    folder = RunFolder(run_dir)
    state = RunCheckpoint.read(find_checkpoint(folder, checkpoint, argument))
    modules = confirmed_imports(state.config.get("imports"), imports, folder.path)
    if import_modules:
        import_user_modules(modules)
    return OpenedRun(folder, checkpoint, state, modules)


def find_checkpoint(folder: RunFolder, checkpoint: str, argument: RunArgument = RunArgument()) -> Path:
    """checkpoints/<checkpoint>.pt of a run folder, checked to be there (not read): what a command checks
    before its other arguments, so that the first problem named is the run's."""
    check_checkpoint_name(checkpoint)
    check_run_folder(folder.path, argument)
    path = folder.checkpoint(checkpoint)
    if not path.is_file():
        raise ConfigError(missing_checkpoint_message(folder, checkpoint, argument))
    return path


def check_checkpoint_name(checkpoint: str) -> None:
    """best or last, else a message naming the two."""
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(
            f"Unknown checkpoint '{checkpoint}' (checkpoint=).{did_you_mean(checkpoint, CHECKPOINTS)} "
            f"Use checkpoint=best (the run's best epoch by its trainer.checkpoint.monitor, val_acc unless set) or "
            f"checkpoint=last (the last epoch)."
        )


def check_run_folder(path: Path, argument: RunArgument = RunArgument()) -> None:
    """`path` is a folder that holds a run, else what it is instead: missing, a file, or a folder of runs
    (`not_a_run_message` names them)."""
    what = "a file" if path.is_file() else None if path.is_dir() else "not a folder"
    if what:
        raise ConfigError(f"{argument.key}{path} is {what}. Give a run folder ({RUN_FOLDER_EXAMPLE}){argument.also}.")
    if not RunFolder(path).holds_run():
        raise ConfigError(not_a_run_message(path, argument.use))


def missing_checkpoint_message(folder: RunFolder, checkpoint: str, argument: RunArgument) -> str:
    """A run folder without checkpoints/<checkpoint>.pt: no epoch finished, or the file was lost (and the other
    one is there to use)."""
    saved = [which for which in CHECKPOINTS if folder.checkpoint(which).is_file()]
    if not saved:
        return (
            f"{folder.path} has no checkpoints/{checkpoint}.pt, so no epoch of it finished (it has no "
            f"checkpoint at all). Start the run again, or give the folder of a run that finished an epoch."
        )
    other = f" It has checkpoints/{saved[0]}.pt: use checkpoint={saved[0]}." if argument.choose else ""
    return f"{folder.path} has no checkpoints/{checkpoint}.pt (it was deleted or lost).{other}"


def runs_in(folder: Path | str, depth: int = 2) -> list[Path]:
    """The run folders inside `folder` (outputs/ holds <date>/<run>, a date folder <run>, a sweep <job>),
    up to `depth` levels down, newest first (by their newest file)."""
    found = []
    level = [Path(folder)]
    for _ in range(depth):
        children = sorted(child for parent in level for child in parent.iterdir() if child.is_dir())
        runs = {child for child in children if RunFolder(child).holds_run()}  # once each: it reads the disk
        found += [child for child in children if child in runs]
        level = [child for child in children if child not in runs]
    return sorted(found, key=_newest_file_time, reverse=True)


def _newest_file_time(run: Path) -> float:
    files = (RunFolder(run).summary_json, RunFolder(run).metrics_csv, RunFolder(run).last_checkpoint)
    return max((f.stat().st_mtime for f in files if f.is_file()), default=run.stat().st_mtime)


def not_a_run_message(folder: Path | str, use: str, shown: int = 3) -> str:
    """What cnntrain resume=, cnntrain-eval/-export/-predict run= say for a folder that holds no run: the runs
    inside it when it holds some (outputs/, a date folder, a sweep), newest first, with the command for the
    newest; `use`: that command, {} standing for the folder (e.g. "cnntrain resume={}")."""
    folder = Path(folder)
    try:
        runs = runs_in(folder)
    except OSError:
        runs = []
    if not runs:
        return (
            f"{display_path(folder)} is not a run folder (it has no checkpoints/, summary.json or metrics.csv) "
            f"and holds none. Give a run folder (outputs/<date>/<time>_<model>_<data>)."
        )
    names = first_few([display_path(run) for run in runs], shown)
    return (
        f"{display_path(folder)} is not a run folder; the runs in it are, newest first: {names}. "
        f"The newest: {use.format(display_path(runs[0]))}"
    )


def rebuildable_config(
    saved: dict[str, Any],
    imports: list[str],
    keep_loggers: bool = True,
    keep_weights: bool = True,
    download: bool = True,
) -> DictConfig:
    """A run's saved config (a copy), safe to build from again. Never the callbacks it was started with nor
    modules it names that the user did not (`imports`: those confirmed). What a caller that only reads the
    run's data may leave out: its loggers (`keep_loggers=False`: csv, nothing to install), model.weights
    (`keep_weights=False`: the checkpoint holds the weights, starting weights are never loaded) and
    data.download (`download=False`: nothing is fetched)."""
    cfg = OmegaConf.create(saved)
    cfg.callbacks = []
    cfg.imports = list(imports)
    if not keep_loggers:
        cfg.logger = OmegaConf.create({"csv": {}})
    if not keep_weights and "weights" in cfg.model:
        cfg.model.weights = None
    if not download and "download" in cfg.data:
        cfg.data.download = False
    return cfg


# Group choices (model=alexnet) name a config file; on resume they are compared with the run's `name`.
GROUP_KEYS = {**{group: f"{group}.name" for group in REGISTRY_GROUPS}, "device": "device.type"}
# Group choices that, where they may change, take their group's whole file (logger=tensorboard; logger=[a,b]: both).
WHOLE_FILE_GROUPS = ("logger", "data")
# Two spellings of one setting (data.path is image_folder's old name of data.root): the one given now
# replaces the other saved in the run, else the run's old spelling and the new one would name two folders.
SAME_SETTING = {"data.root": "data.path", "data.path": "data.root"}


def apply_override(cfg: DictConfig, override: str, run_dir: Path, may_change: tuple[str, ...]) -> None:
    """Apply `key=value` to a reopened run's config if it may change; one that keeps the value is fine.

    `may_change`: the dotted prefixes that may change (a resume's; cnntrain-eval's are data and device).
    """
    key, sep, raw = override.lstrip("+").partition("=")
    if not sep:
        raise ConfigError(f"Unexpected argument '{override}' with resume=: give key=value overrides.")
    if key in WHOLE_FILE_GROUPS and key in may_change:  # a choice that may change: its whole file, as Hydra does
        cfg[key] = OmegaConf.merge({}, *(OmegaConf.load(group_file(key, name)) for name in choice_names(key, raw)))
        return
    if key == "experiment":
        raise ConfigError(
            f"experiment={raw} cannot be applied on resume: {run_dir} keeps the settings it was started with."
        )
    key = GROUP_KEYS.get(key, key)
    value = yaml.safe_load(raw) if raw else None
    missing = object()
    current = OmegaConf.select(cfg, key, default=missing)
    if current is not missing and current == value:
        return
    added = override.startswith("+") and "." in key and key.split(".")[0] in BUILDER_SECTIONS  # its builder checks it
    if current is missing and key not in may_change and not added:  # a typo: force_add below would add it silently
        raise ConfigError(unknown_key_message(key, override, dotted_keys(cfg)))
    if not any(key == prefix or key.startswith(prefix + ".") for prefix in may_change):
        shown = "null" if current is None else current  # as the config spells it, not Python's None
        was = f" (the run has {key}={shown})" if current is not missing else ""
        raise ConfigError(
            f"Cannot resume with {key}={raw}{was}: a resumed run keeps its model, data, optimizer and "
            f"schedule, so that it ends as the uninterrupted run would. Start a new run to train something "
            f"different. A resume may change: {', '.join(may_change)}."
        )
    other = SAME_SETTING.get(key)
    if other and OmegaConf.select(cfg, other, default=None) is not None:
        OmegaConf.update(cfg, other, None)
    OmegaConf.update(cfg, key, value, force_add=True)
