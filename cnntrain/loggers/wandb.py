"""`logger=wandb` (configs/logger/wandb.yaml): the run recorded in Weights & Biases, offline by default.

What a W&B run holds (the same as logger=mlflow, through tracking.py):
- config: the run's resolved config, nested as it is (W&B shows it as dotted columns, `optimizer.lr`, and
  keeps numbers as numbers, so the runs table sorts them and the parallel-coordinates chart plots them:
  MLflow's flat text params could not);
- tags: `model:<name>`, `data:<name>`, `git_commit:...`, `cnntrain_version:...`, `host:...` (W&B tags
  are labels, not key/value pairs) and logger.wandb.tags;
- history: every epoch's figures under metrics.csv's names, at step = epoch (and `epoch` as the charts' x axis);
- summary: the test's figures (test_loss, test_acc, test_top5, test_balanced_acc, test_macro_f1), best_val_acc,
  best_epoch, status;
- files: curves.png, summary.json, metrics.csv (a failed run's too); best.pt as a "model" artifact with
  logger.wandb.log_checkpoint=true;
- exit code: 0 finished, 1 failed, 255 interrupted (Ctrl-C, SIGTERM: the code W&B itself gives a Ctrl-C).

Where: `<run folder>/wandb/offline-run-*`, uploaded later with `wandb sync` (the command is printed at the
end). logger.wandb.mode=online (or WANDB_MODE in the environment when the setting is null) logs live.
A resume logs to the same W&B run (its id in trackers.json), each epoch once; a sweep's jobs share a group
(the sweep folder's name), each named `<sweep folder>/<job number>`.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cnntrain.errors import CnnTrainError, ConfigError
from cnntrain.loggers import tracking
from cnntrain.loggers.catalog import LOGGERS, require_logger_package
from cnntrain.run_folder import RunFolder
from cnntrain.trainer import Callback, EpochMetrics, Trainer

MODES = ("online", "offline", "disabled")
EXIT_CODES = {"FAILED": 1, "KILLED": 255}  # 255: what wandb records for a run it saw end by Ctrl-C


def check_wandb() -> None:
    """Raise a ConfigError that says how to install wandb when it is missing."""
    require_logger_package("wandb")


def chosen_mode(mode: str | None) -> str | None:
    """The mode passed to wandb.init: the setting; when null, offline unless the user set WANDB_MODE (None:
    wandb reads it)."""
    if mode is not None:
        return mode
    return None if os.environ.get("WANDB_MODE") else "offline"


def wandb_tags(config: Any, extra: Sequence[str]) -> list[str]:
    """tracking.run_tags as W&B labels `key:value` (at most 64 characters each, W&B's limit), then the user's."""
    tags = [f"{key}:{value}" for key, value in tracking.run_tags(config).items()] + [str(t) for t in extra]
    return [tag[:64] for tag in tags]


@LOGGERS.register("wandb")
class WandbLogger(Callback):
    """Logs one run to W&B; its settings (logger.wandb.*): project, entity, mode, log_checkpoint, tags."""

    def __init__(
        self,
        run_folder: Path,
        notify: Callable[[str], None] = print,
        project: str = "cnntrain",
        entity: str | None = None,
        mode: str | None = None,
        log_checkpoint: bool = False,
        tags: Sequence[str] = (),
    ):
        check_wandb()
        self.folder = RunFolder(run_folder)
        self.notify = notify
        self.project, self.entity, self.mode = project, entity, chosen_mode(mode)
        self.log_checkpoint = log_checkpoint
        self.tags = list(tags or ())
        self.run = None
        self.logged_until = 0  # the last epoch the W&B run has (a resume's earlier epochs are logged already)

    @staticmethod
    def check_settings(
        project: str = "cnntrain",
        entity: str | None = None,
        mode: str | None = None,
        log_checkpoint: bool = False,
        tags: Sequence[str] = (),
    ) -> None:
        """Bad values and a missing wandb package, answered before any data is loaded."""
        if mode is not None and mode not in MODES:
            raise ConfigError(
                f"logger.wandb.mode must be online, offline or disabled (null: offline unless WANDB_MODE is set), "
                f"got {mode!r}."
            )
        for key, value in (("project", project), ("entity", entity)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"logger.wandb.{key} must be a name, got {value!r}.")
        if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) and t.strip() for t in tags)):
            raise ConfigError(f"logger.wandb.tags must be a list of words, e.g. [baseline], got {tags!r}.")
        check_wandb()

    # --- hooks --------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        self.run = self._start(trainer.config)
        self.logged_until = max((m.epoch for m in trainer.history), default=0)

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        if self.run is not None and metrics.epoch > self.logged_until:
            self.run.log({"epoch": metrics.epoch, **tracking.epoch_values(metrics)}, step=metrics.epoch)
            self.logged_until = metrics.epoch

    def on_test_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.summary.update({key: float(value) for key, value in metrics.items()})

    def on_run_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        best = {key: summary.get(key) for key in ("best_val_acc", "best_val_loss", "best_epoch")}
        self.run.summary.update({**{k: v for k, v in best.items() if v is not None}, "status": "completed"})
        try:
            self._save_files()
            if self.log_checkpoint:
                tested = summary.get("tested_checkpoint") or self.folder.best_checkpoint.name  # best.pt, or last.pt
                self._log_checkpoint(self.folder.best_checkpoint.with_name(tested))
        finally:  # the run completed: a file that failed (a notice) does not leave the W&B run open
            self._finish(0)

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        if self.run is None:
            return
        status = tracking.end_status(exception)
        self.run.summary["status"] = "interrupted" if status == "KILLED" else "failed"
        try:
            self._save_files()
        finally:
            self._finish(EXIT_CODES[status])

    # --- pieces -------------------------------------------------------------------------------

    def _start(self, config: Any):
        """wandb.init: the run of trackers.json (a resume), or a new one whose id goes there."""
        import wandb

        ids = tracking.TrackerIds(self.folder)
        known = ids.get("wandb", "run_id") or {}
        job = tracking.sweep_job()
        try:
            run = wandb.init(
                project=self.project,
                entity=self.entity,
                mode=self.mode,
                dir=str(self.folder.path),  # <run folder>/wandb/
                id=known.get("run_id"),
                resume="allow",
                reinit="finish_previous",  # a sweep's next job in this process: its own run, not the last one's
                config=OmegaConf.to_container(config, resolve=True) if config is not None else None,
                tags=wandb_tags(config, self.tags),
                group=job.sweep_dir.name if job else None,
                job_type="train",
                name=f"{job.sweep_dir.name}/{job.number}" if job else self.folder.path.name,
                notes=" ".join(job.overrides) if job else None,
                settings=wandb.Settings(silent=True, console="off"),  # cnntrain's display stays as it is
            )
        except Exception as err:  # no API key, no network in online mode, a bad entity: one line, not wandb's trace
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
            raise CnnTrainError(
                f"logger=wandb could not start its run ({first_line}). Log offline with logger.wandb.mode=offline "
                f"and upload it later with wandb sync."
            ) from err
        run.define_metric("*", step_metric="epoch")  # charts against epochs, also across a resume
        ids.put("wandb", {"run_id": run.id, "project": self.project, "entity": self.entity})
        return run

    def _save_files(self) -> None:
        """The run's files, copied into the W&B run's files/ (a link would follow summary.json's later rewrites)."""
        files_dir = Path(self.run.dir)
        for path in tracking.run_files(self.folder):
            shutil.copy2(path, files_dir / path.name)
            self.run.save(str(files_dir / path.name), base_path=str(files_dir), policy="now")

    def _log_checkpoint(self, checkpoint: Path) -> None:
        import wandb

        if checkpoint.is_file():
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"file": checkpoint.name})
            artifact.add_file(str(checkpoint), name=checkpoint.name)
            self.run.log_artifact(artifact)

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        offline = run.settings.mode in ("offline", "dryrun")
        url = None if offline else run.url
        run.finish(exit_code=exit_code)
        if offline:
            folder = shlex.quote(str(self.folder.path / "wandb"))
            self.notify(f"wandb: offline run {run.id}; upload it with: wandb sync {folder}/offline-run-*")
        elif url:
            self.notify(f"wandb: {url}")
