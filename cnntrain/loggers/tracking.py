"""What an experiment tracker (logger=mlflow, logger=wandb) records of a run: the same for every tracker.

- `config_params(config)`: the resolved config as flat dotted keys (`optimizer.lr`), values as text;
- `run_tags(config)`: model, data, git commit, cnntrain version, host;
- `epoch_values(metrics)`: an epoch's figures under metrics.csv's names (`val_acc`, `lr`, ...); `last_epoch(trainer)`:
  the step the test's figures go at;
- `end_status(exception)`: how a run that raised ended: "KILLED" for a stop (Ctrl-C, SIGTERM), else "FAILED";
- `run_files(folder)`: the files of a finished run a user looks at (curves.png, summary.json, metrics.csv);
- `TrackerIds`: trackers.json in the run folder, the tracker runs it logs to, so a resume logs to the same run;
- `sweep_job()`: the sweep folder and job number of this process's job (None outside a sweep), and
  `once_per_sweep`: a value made once for the whole sweep (a parent run's id), whichever process asks first.
"""

from __future__ import annotations

import fcntl
import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnntrain.metrics import EpochMetrics
from cnntrain.run_folder import RunFolder, git_commit, write_atomically


def config_params(config: DictConfig | Mapping[str, Any] | None) -> dict[str, str]:
    """The resolved config flattened to dotted keys, every value as text (lists as YAML's flow style)."""
    values = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config or {})
    flat: dict[str, str] = {}
    _flatten(values, "", flat)
    return flat


def _flatten(value: Any, prefix: str, into: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    elif prefix:
        into[prefix] = json.dumps(value) if isinstance(value, (list, tuple, Mapping)) else str(value)


def run_tags(config: DictConfig | Mapping[str, Any] | None) -> dict[str, str]:
    """What a tracker's run list is filtered by: the model, the data, the code it ran and where."""
    from cnntrain import __version__

    config = config or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    tags = {
        "model": model.get("name"),
        "data": data.get("name"),
        "git_commit": git_commit(),
        "cnntrain_version": __version__,
        "host": platform.node(),
    }
    return {key: str(value) for key, value in tags.items() if value is not None}


def epoch_values(metrics: EpochMetrics) -> dict[str, float]:
    """One epoch's figures as metrics.csv names them (the optional ones only when the run has them)."""
    return {key: float(value) for key, value in metrics.as_dict().items() if key != "epoch" and value is not None}


def last_epoch(trainer) -> int:
    """The step a run's end-of-run figures (the test's) go at: its last finished epoch (0 when none)."""
    return trainer.history[-1].epoch if trainer.history else 0


def end_status(exception: BaseException) -> str:
    """A stopped run (Ctrl-C, SIGTERM, SIGHUP: a KeyboardInterrupt) is KILLED; any other error FAILED."""
    return "KILLED" if isinstance(exception, KeyboardInterrupt) else "FAILED"


def run_files(folder: RunFolder) -> list[Path]:
    """The files of a finished run a tracker keeps, those that exist."""
    return [path for path in (folder.curves_png, folder.summary_json, folder.metrics_csv) if path.is_file()]


class TrackerIds:
    """trackers.json: {tracker: {what it needs to log to the same run again}}, e.g. {"mlflow": {"run_id": ...}}."""

    def __init__(self, folder: RunFolder):
        self.path = folder.trackers_json

    def get(self, tracker: str, *keys: str) -> dict[str, Any] | None:
        """The tracker's entry, when it is one and holds text under each of `keys` (an entry someone edited into
        something else is none: the tracker starts a new run)."""
        entry = self._read().get(tracker)
        if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) for key in keys):
            return None
        return entry

    def put(self, tracker: str, ids: dict[str, Any]) -> None:
        entries = {**self._read(), tracker: ids}
        write_atomically(self.path, lambda f: f.write(json.dumps(entries, indent=2) + "\n"), binary=False)

    def _read(self) -> dict[str, Any]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: a new tracker run
            return {}
        return entries if isinstance(entries, dict) else {}


@dataclass(frozen=True)
class SweepJob:
    """The job of a sweep (`cnntrain -m`) this process runs."""

    sweep_dir: Path  # the sweep's folder (absolute): one per sweep, shared by all its jobs
    number: int  # Hydra's job number, 0-based
    overrides: tuple[str, ...]  # the job's own overrides (what the sweep varies, and the rest of the command)


def sweep_job() -> SweepJob | None:
    """The sweep job this process runs, from Hydra's config; None for a single run or outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    return SweepJob(Path(hydra.sweep.dir).resolve(), int(hydra.job.num), tuple(hydra.overrides.task))


def once_per_sweep(sweep_dir: Path, name: str, make: Callable[[], str]) -> str:
    """The value `make()` gave the first job of the sweep that asked for `name` (kept in <sweep_dir>/.<name>):
    jobs in parallel processes (launcher=joblib) share one parent run. The others wait on a lock file until the
    first has written it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    kept = sweep_dir / f".{name}"
    with open(sweep_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if kept.is_file() and kept.read_text().strip():
            return kept.read_text().strip()
        value = make()
        kept.write_text(value + "\n")
        return value
