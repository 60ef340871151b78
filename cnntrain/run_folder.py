"""The run folder: its file names, summary.json and the provenance recorded in it.

    <run folder>/
      .hydra/config.yaml   the composed config (Hydra writes it; calls from Python get one too)
      metrics.csv          one row per finished epoch
      curves.png           loss/accuracy curves (plots.CurvesPlot)
      summary.json         status, best epoch, test metrics, provenance
      train.log            what the console showed
      checkpoints/last.pt best.pt
      tensorboard/         with logger=tensorboard
      predictions.csv      written by cnntrain-predict

Every other module gets these paths from a `RunFolder`, so a name is spelled once.
"""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


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
        self.predictions_csv = self.path / "predictions.csv"

    @classmethod
    def for_run(cls, cfg: DictConfig, path: Path | str | None = None) -> "RunFolder":
        """`path` if given, else the folder Hydra made for this job, else a new timestamped one; created."""
        path = Path(path) if path else (_hydra_run_dir() or _new_run_dir(cfg))
        path.mkdir(parents=True, exist_ok=True)
        return cls(path.resolve())

    def checkpoint(self, which: str) -> Path:
        """checkpoints/<which>.pt (which: best or last)."""
        return self.checkpoints / f"{which}.pt"

    def save_config_if_missing(self, cfg: DictConfig) -> None:
        """Hydra writes .hydra/config.yaml for CLI runs; calls from Python get the same file."""
        if not self.config_yaml.exists():
            self.config_yaml.parent.mkdir(parents=True, exist_ok=True)
            self.config_yaml.write_text(OmegaConf.to_yaml(cfg))

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary_json.write_text(json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        """summary.json, or {} when the run has none yet."""
        return json.loads(self.summary_json.read_text()) if self.summary_json.is_file() else {}

    def remove_stale_temp_files(self) -> None:
        """Temporary checkpoint files left by a kill in the middle of a save."""
        for stale in self.checkpoints.glob("*.tmp"):
            stale.unlink()

    def __str__(self) -> str:
        return str(self.path)


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


def display_path(path: Path | str) -> str:
    """`path` relative to the current folder when it is inside it (shorter on screen)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def provenance(device) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: the device, library versions, the git commit."""
    return {"device": describe_device(device), "versions": versions(), "git_commit": git_commit()}


def describe_device(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device.type


def versions() -> dict[str, str]:
    import hydra
    import torch
    import torchvision

    from cnntrain import __version__

    return {"cnntrain": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__}


def git_commit() -> str | None:
    """The commit of the current folder's git checkout, if there is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return result.stdout.strip() if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
