"""The run folder: its file names, summary.json, new folders.

    <run folder>/
      .hydra/config.yaml   the composed config (Hydra writes it; calls from Python get one too)
      metrics.csv          one row per finished epoch
      curves.png           loss/accuracy curves (plots.CurvesPlot)
      summary.json         status, best epoch, test metrics, provenance
      train.log            what the console showed
      checkpoints/last.pt best.pt
      tensorboard/         with logger=tensorboard
      trackers.json        the tracker runs this run logs to (logger=mlflow, logger=wandb), for a resume
      wandb/               with logger=wandb: the offline run that `wandb sync` uploads
      predictions-<inputs>.csv  written by cnntrain-predict (-2, -3, ... when it exists)
      eval/<name>/         written by cnntrain-eval (EvalFolder): eval.json, per_class.csv,
                           confusion_matrix.csv/.png, misclassified.csv/.png
      export/model.onnx    written by cnntrain-export (or model.torchscript.pt, model.pt2)
      export/model.onnx.json   beside each: classes, preprocessing, verification (<model file>.json)
      .cnntrain.lock       held by the process training in the folder (so that no second one can)

Every other module gets these paths from a `RunFolder`, so a name is spelled once. The folders a command
line gives Hydra (hydra.run.dir, hydra.sweep.dir) are checked by hydra_folders.py.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from cnntrain.companion_files import EXPORT_FILE_NAMES, EvalFolder, export_info_path, export_predictions_csv
from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.provenance import describe_device, git_commit, installed_version, provenance, versions
from cnntrain.safe_writes import (
    cannot_write_message,
    check_writable,
    display_path,
    links_out_problem,
    write_atomically,
    write_failure,
)

# Importable from here as before they got modules of their own: every command takes a run folder's
# paths, its atomic writes and its provenance from run_folder.
__all__ = [
    "RunFolder",
    "refuse_links_out_of_run",
    "EXPORT_FILE_NAMES",
    "EvalFolder",
    "export_info_path",
    "export_predictions_csv",
    "cannot_write_message",
    "check_writable",
    "display_path",
    "write_atomically",
    "write_failure",
    "describe_device",
    "git_commit",
    "installed_version",
    "provenance",
    "versions",
]


class RunFolder:
    """The files of one run, under `path`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.last_checkpoint = self.checkpoints / "last.pt"
        self.best_checkpoint = self.checkpoints / "best.pt"
        self.metrics_csv = self.path / "metrics.csv"
        self.curves_png = self.path / "curves.png"
        self.summary_json = self.path / "summary.json"
        self.train_log = self.path / "train.log"
        self.config_yaml = self.path / ".hydra" / "config.yaml"
        self.tensorboard = self.path / "tensorboard"
        self.trackers_json = self.path / "trackers.json"
        self.predictions_csv = self.path / "predictions.csv"
        self.evaluations = self.path / "eval"
        self.export = self.path / "export"
        self.lock_file = self.path / ".cnntrain.lock"
        self._lock: IO | None = None
        # False in the ranks > 0 of a distributed run: rank 0 alone locks the folder and writes its files.
        self.writes = True

    @classmethod
    def for_run(cls, cfg: DictConfig, path: Path | str | None = None) -> RunFolder:
        """`path` if given, else the folder Hydra made for this job, else a new timestamped one; created."""
        path = Path(path) if path else (_hydra_run_dir() or _new_run_dir(cfg))
        path.mkdir(parents=True, exist_ok=True)
        return cls(path.resolve())

    def checkpoint(self, which: str) -> Path:
        """checkpoints/<which>.pt (which: best or last)."""
        return self.checkpoints / f"{which}.pt"

    def export_file(self, format: str) -> Path:
        """export/model.onnx, model.torchscript.pt or model.pt2: where cnntrain-export writes `format`."""
        return self.export / EXPORT_FILE_NAMES[format]

    def evaluation(self, split: str, checkpoint: str, data: str | None = None, tta: str | None = None) -> EvalFolder:
        """eval/<split>_<checkpoint>/ for an evaluation on the run's own data; eval/<data>_<split>_<checkpoint>/
        on other data (`data`: a name for it, e.g. image_folder-new_scans-1a2b3c4d), so results on
        different data do not overwrite each other; `tta` (a test-time augmentation other than the
        run's, "none" or "hflip") adds _tta-<tta>."""
        parts = (data, split, checkpoint, f"tta-{tta}" if tta else None)
        return EvalFolder(self.evaluations / "_".join(part for part in parts if part))

    def save_config_if_missing(self, cfg: DictConfig) -> None:
        """Hydra writes .hydra/config.yaml for CLI runs; calls from Python get the same file."""
        if self.writes and not self.config_yaml.exists():
            self.config_yaml.parent.mkdir(parents=True, exist_ok=True)
            self.config_yaml.write_text(OmegaConf.to_yaml(cfg))

    def write_summary(self, summary: dict[str, Any]) -> None:
        if not self.writes:
            return
        write_atomically(self.summary_json, lambda f: f.write(json.dumps(summary, indent=2) + "\n"), binary=False)

    def holds_run(self) -> str | None:
        """What shows that a run was trained here (its files), or None for a new or empty folder."""
        found = [
            p.name
            for p in (self.summary_json, self.metrics_csv, self.last_checkpoint, self.best_checkpoint, self.train_log)
            if p.is_file()
        ]
        return ", ".join(found) if found else None

    def refuse_if_it_holds_a_run(self) -> None:
        """A new run must not write over another run's files: say how to continue that one instead."""
        if not self.writes:
            return
        found = self.holds_run()
        if found:
            raise ConfigError(
                f"{self.path} already holds a run ({found}); a new run there would overwrite it. Continue that "
                f"run with: cnntrain resume={display_path(self.path)}, or train in a new folder (leave out "
                f"hydra.run.dir for a timestamped one under outputs/)."
            )

    def lock(self) -> None:
        """Hold the folder for this process until `unlock` or its end (a crash releases it too): a second
        process training in the same folder is refused instead of mixing its files with this one's."""
        if not self.writes:
            return
        try:
            import fcntl
        except ImportError:  # not on Windows: no lock there
            return
        handle = open(self.lock_file, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise ConfigError(
                f"{self.path} is in use by another cnntrain process{f' (pid {owner})' if owner else ''}. "
                f"Wait for it to end, or train in another folder."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def read_summary(self) -> dict[str, Any]:
        """summary.json, or {} when the run has none yet; a damaged one is a ConfigError saying what to do."""
        if not self.summary_json.is_file():
            return {}
        try:
            summary = json.loads(self.summary_json.read_text(encoding="utf-8"))
            problem = None if isinstance(summary, dict) else "not a JSON object"
        except (ValueError, OSError) as err:
            problem = str(err)
        if problem:
            raise ConfigError(
                f"{self.summary_json} is damaged ({problem}). It is only the run's report: delete it "
                f"and try again; the checkpoints hold the run."
            )
        return summary

    def written_files(self) -> list[Path]:
        """What training (and a resume) writes in the folder, folders first."""
        return [
            self.checkpoints,
            self.last_checkpoint,
            self.best_checkpoint,
            self.metrics_csv,
            self.curves_png,
            self.summary_json,
            self.train_log,
            self.config_yaml.parent,
            self.config_yaml,
            self.tensorboard,
            self.lock_file,
        ]

    def refuse_links_out(self, paths: list[Path] | None = None, fix: str = "") -> None:
        """Refuse to write `paths` (default: `written_files`) when one of them, or a folder on the way to it, is a
        link that leads out of the run folder: a run folder from elsewhere (or a careless `ln -s`) must not make
        a command replace files outside it. Links that stay inside the folder, and the run folder itself being
        a link, are fine."""
        problem = links_out_problem(self.path, self.written_files() if paths is None else paths)
        if problem:
            raise CnnTrainError(
                f"{problem}; cnntrain writes only inside a run folder (through a link it would replace files "
                f"elsewhere). {fix or 'Replace the link with a folder or file of the run folder itself.'}"
            )

    def remove_stale_temp_files(self) -> None:
        """Temporary checkpoint files left by a kill in the middle of a save."""
        for stale in self.checkpoints.glob("*.tmp"):
            stale.unlink()

    def __str__(self) -> str:
        return str(self.path)


def refuse_links_out_of_run(path: Path | str, fix: str) -> None:
    """`path` is about to be written: when it lies in a run folder (the nearest folder above it that holds a
    run), it must not leave that folder through a link (`RunFolder.refuse_links_out`)."""
    path = Path(os.path.abspath(path))  # not resolved: the links on the way are what is checked
    for folder in path.parents:
        if RunFolder(folder).holds_run():
            RunFolder(folder).refuse_links_out([path], fix)
            return


def _new_run_dir(cfg: DictConfig) -> Path:
    """outputs/<date>/<time with microseconds>_<model>_<data>: two runs never share one."""
    now = datetime.now()
    while True:
        path = Path("outputs") / now.strftime("%Y-%m-%d") / f"{now:%H-%M-%S-%f}_{cfg.model.name}_{cfg.data.name}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            now = datetime.now()


def _hydra_run_dir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    except ImportError:
        return None
