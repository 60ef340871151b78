"""The folders a `cnntrain` command line gives Hydra, checked before Hydra writes its .hydra/ files into them:
`run_folder_problem(args)` answers a hydra.run.dir that holds a run (RunFolder.refuse_if_it_holds_a_run), a
hydra.sweep.dir (with -m) that holds a sweep, a folder that cannot be made, and a hydra.sweep.subdir that every
job of a sweep would share. cli.py asks it before handing the arguments to Hydra.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from cnntrain.errors import CnnTrainError
from cnntrain.run_folder import RunFolder


def run_folder_problem(args: list[str]) -> str | None:
    """A hydra.run.dir (hydra.sweep.dir with -m) that holds a run (a sweep), or cannot be made, and a
    sweep subdir that all jobs would share: refused before Hydra writes its .hydra/ files there."""
    sweep = any(arg in ("-m", "--multirun") for arg in args)
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if sep and key == "hydra.sweep.subdir" and sweep and "hydra.job.num" not in value:
            return (
                f"hydra.sweep.subdir={value} would put every job of the sweep in one folder, each "
                f"overwriting the last; keep ${{hydra.job.num}} in it."
            )
        if key != ("hydra.sweep.dir" if sweep else "hydra.run.dir"):
            continue
        if value.strip().strip("'\"") in ("", "null"):
            return f"{key}={value} needs a folder; leave it out for a new timestamped one under outputs/."
        path = _folder_value(value)
        if path is None:
            continue
        try:
            if sweep:
                _refuse_a_used_sweep_folder(path)
            else:
                RunFolder(path).refuse_if_it_holds_a_run()
            path.mkdir(parents=True, exist_ok=True)
        except CnnTrainError as err:
            return str(err)
        except OSError as err:
            return f"Cannot create the folder {path} ({key}): {err.strerror or err}. Give a folder you can write to."
    return None


def _folder_value(value: str) -> Path | None:
    """The folder an override's value names (quotes dropped, ${oc.env:...} and ~ resolved); None
    when it cannot be told before Hydra runs (e.g. ${now:...}, which makes a new folder anyway)."""
    value = value.strip().strip("'\"")
    if "${" in value:
        try:
            value = str(OmegaConf.create({"value": value}).value)
        except Exception:  # an interpolation only Hydra can resolve
            return None
    return Path(value).expanduser()


def _refuse_a_used_sweep_folder(path: Path) -> None:
    used = (path / "sweep.csv").exists() or any(path.glob("*/.hydra"))
    if used:
        raise CnnTrainError(
            f"{path} already holds a sweep; a new sweep there would overwrite its jobs and "
            f"report their old results as its own. Give a new hydra.sweep.dir, or leave it out "
            f"for a timestamped one under outputs/multirun/."
        )
