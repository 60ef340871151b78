"""`logger=mlflow` (configs/logger/mlflow.yaml): the run in an MLflow tracking store.

What one cnntrain run becomes in MLflow (one MLflow run, found again through trackers.json):
- params: the resolved config, flattened to dotted keys (`optimizer.lr`); tags: model, data, git commit,
  cnntrain version, host and the run folder (tracking.py);
- metrics: every epoch's figures under metrics.csv's names with step=epoch, the test's at the end;
- artifacts: curves.png, summary.json, metrics.csv (best.pt with log_checkpoint=true), and later what
  cnntrain-eval writes (eval/<name>/, mlflow_store.log_evaluation);
- status: RUNNING while it trains, FINISHED, FAILED, or KILLED for a stopped run (Ctrl-C, SIGTERM).

A resume logs to the same MLflow run (status back to RUNNING) and skips the epochs it already holds; a job of
a sweep is a child of the sweep's parent run (sweep.py ends that one). The store is opened when the logger is
built, before any epoch: one that cannot be reached stops the run with one message (on_unreachable=fail) or
is left out with a notice (warn). Where the store is and how it is reached: mlflow_store.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cnntrain.errors import ConfigError
from cnntrain.loggers import mlflow_store as store
from cnntrain.loggers.catalog import LOGGERS
from cnntrain.loggers.tracking import (
    TrackerIds,
    config_params,
    end_status,
    epoch_values,
    last_epoch,
    run_files,
    run_tags,
    sweep_job,
)
from cnntrain.run_folder import RunFolder
from cnntrain.trainer import Callback, EpochMetrics, Trainer

ON_UNREACHABLE = ("fail", "warn")
KEPT = ("tracking_uri", "run_id")  # what trackers.json keeps of the MLflow run, for a resume


@LOGGERS.register("mlflow")
class MlflowLogger(Callback):
    """Logs one run to MLflow through an `MlflowClient` and the run's id. Settings (logger.mlflow.*):
    tracking_uri, experiment, run_name, log_checkpoint, on_unreachable (see configs/logger/mlflow.yaml)."""

    def __init__(
        self,
        run_folder: Path,
        tracking_uri: str | None = None,
        experiment: str = "cnntrain",
        run_name: str | None = None,
        log_checkpoint: bool = False,
        on_unreachable: str = "fail",
        notify: Callable[[str], None] = print,
    ):
        store.check_mlflow()
        self.folder = RunFolder(run_folder)
        self.ids = TrackerIds(self.folder)
        self.run_name = run_name
        self.log_checkpoint = log_checkpoint
        self.notify = notify
        self.run_id: str | None = None
        self.logged_epochs: set[int] = set()  # the steps the MLflow run already holds (a resume skips them)
        kept = self.ids.get("mlflow", *KEPT)  # a resume: the store and run the run logged to before
        uri, artifacts = (kept["tracking_uri"], None) if kept else _chosen_store(tracking_uri)
        self.uri = uri
        try:
            self.client, self.experiment_id = store.open_experiment(uri, experiment, artifacts)
        except ConfigError:  # reached, but the experiment cannot take runs (deleted)
            raise
        except Exception as err:
            if on_unreachable == "fail":
                raise ConfigError(store.unreachable_message(uri, store.short_reason(err))) from None
            self.client = None  # warn: the run trains on without MLflow
            notify(f"notice: {store.unreachable_notice(uri, store.short_reason(err))}")

    @staticmethod
    def check_settings(
        tracking_uri: str | None = None,
        experiment: str = "cnntrain",
        run_name: str | None = None,
        log_checkpoint: bool = False,
        on_unreachable: str = "fail",
    ) -> None:
        """Bad values and a missing mlflow package, answered before any data is loaded."""
        if on_unreachable not in ON_UNREACHABLE:
            raise ConfigError(
                f"logger.mlflow.on_unreachable must be fail (stop the run at its start) or warn (train on without "
                f"MLflow), got {on_unreachable!r}."
            )
        if not isinstance(experiment, str) or not experiment.strip():
            raise ConfigError(f"logger.mlflow.experiment must be an experiment's name, got {experiment!r}.")
        for key, value in (("tracking_uri", tracking_uri), ("run_name", run_name)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"logger.mlflow.{key} must be text or null, got {value!r}.")
        if not isinstance(log_checkpoint, bool):
            raise ConfigError(f"logger.mlflow.log_checkpoint must be true or false, got {log_checkpoint!r}.")
        store.check_mlflow()

    # --- hooks --------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.client is None:
            return
        params = config_params(trainer.config)
        kept = self.ids.get("mlflow", *KEPT)
        if kept and self._still_there(kept["run_id"]):
            self.run_id = kept["run_id"]
            self._continue_run(params)
            return
        self.run_id = self._new_run(trainer).info.run_id
        self.ids.put("mlflow", {"tracking_uri": self.uri, "run_id": self.run_id})
        for batch in store.param_batches(params):
            self.client.log_batch(self.run_id, params=batch)
        for metrics in trainer.history:  # a resume whose MLflow run was deleted: the new one gets every epoch
            self.on_epoch_end(trainer, metrics)

    def _still_there(self, run_id: str) -> bool:
        """Whether the MLflow run a resume goes on logging to still exists (not deleted from the store)."""
        try:
            there = self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # MLflow's "run not found"
            there = False
        if not there:
            self.notify(
                f"notice: mlflow: the run {run_id} this run logged to is not in {self.uri} any more "
                "(deleted?): its epochs go to a new MLflow run."
            )
        return there

    def on_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        if self.run_id is None or metrics.epoch in self.logged_epochs:
            return
        self._log_metrics(epoch_values(metrics), metrics.epoch, f"epoch {metrics.epoch}'s figures")
        self.logged_epochs.add(metrics.epoch)

    def on_test_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.run_id is not None:
            self._log_metrics(metrics, last_epoch(trainer), "the test's figures")

    def on_run_end(self, trainer: Trainer, summary: dict) -> None:
        if self.run_id is None:
            return
        try:
            self._upload(run_files(self.folder))
            if self.log_checkpoint and self.folder.best_checkpoint.is_file():
                self.client.log_artifact(self.run_id, str(self.folder.best_checkpoint), artifact_path="checkpoints")
        finally:  # the run completed: a file that failed to upload (a notice) does not leave it RUNNING
            self._end("FINISHED")

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        if self.run_id is None:
            return
        try:
            self._upload([self.folder.metrics_csv, self.folder.curves_png])  # what the finished epochs left
        finally:
            self._end(end_status(exception))
        job = sweep_job()
        if job is not None and end_status(exception) == "KILLED":  # a stopped job stops its sweep: no sweep end
            store.end_sweep(job.sweep_dir, [], "KILLED", self.notify)

    # --- pieces -------------------------------------------------------------------------------

    def _new_run(self, trainer: Trainer):
        """A new MLflow run, named and tagged; a child of the sweep's parent run in a sweep."""
        config = trainer.config
        tags = {**run_tags(config), "run_folder": str(self.folder.path)}
        job = sweep_job()
        if job is not None:
            parent = store.sweep_parent(job.sweep_dir, self.uri, lambda: self._parent_run(job.sweep_dir))
            if parent:
                tags |= {"mlflow.parentRunId": parent, "sweep_job": str(job.number)}
        return self.client.create_run(self.experiment_id, run_name=self._name(config), tags=tags)

    def _parent_run(self, sweep_dir: Path) -> str:
        """The sweep's parent run, named after the sweep folder."""
        tags = {"sweep_dir": str(sweep_dir)}
        return self.client.create_run(self.experiment_id, run_name=sweep_dir.name, tags=tags).info.run_id

    def _name(self, config) -> str:
        """logger.mlflow.run_name, else the run folder's name (with the model and data in it when it lacks them):
        what a user recognises in the UI."""
        if self.run_name:
            return self.run_name
        tags, folder_name = run_tags(config), self.folder.path.name
        if tags.get("model", "") in folder_name:  # outputs/<date>/<time>_<model>_<data>: already says both
            return folder_name
        return "-".join(part for part in (tags.get("model"), tags.get("data"), folder_name) if part)

    def _continue_run(self, params: dict[str, str]) -> None:
        """A resume: the run RUNNING again, the epochs it holds left out, only params it lacks added (MLflow
        refuses to change one; a value the resume changed, such as trainer.epochs, is kept as a tag)."""
        self.client.update_run(self.run_id, status="RUNNING")
        history = self.client.get_metric_history(self.run_id, "val_acc")
        self.logged_epochs = {int(metric.step) for metric in history}
        held = self.client.get_run(self.run_id).data.params
        new = {key: value for key, value in params.items() if store.safe_key(key) not in held}
        for batch in store.param_batches(new):
            self.client.log_batch(self.run_id, params=batch)
        for key, value in params.items():
            if held.get(store.safe_key(key), store.param_value(value)) != store.param_value(value):
                self.client.set_tag(self.run_id, f"resumed.{store.safe_key(key)}", store.param_value(value))

    def _end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
        self.notify(store.where_to_look(self.uri, self.experiment_id, self.run_id, status))

    def _log_metrics(self, values: dict[str, float], step: int, what: str) -> None:
        """Figures at `step`; a store that fails mid-run is a notice, not a failed training."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
        except Exception as err:  # after MLflow's own retries (minutes): not again at every epoch
            self.notify(
                f"notice: mlflow: {what} were not logged ({store.short_reason(err)}); the run goes on without "
                f"MLflow (its files and epochs stay in the run folder)."
            )
            self.run_id = None

    def _upload(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))


def _chosen_store(tracking_uri: str | None) -> tuple[str, str | None]:
    """(URI, artifact location for a new experiment): the setting, else the default (mlflow_store.default_store)."""
    return (store.absolute_sqlite(tracking_uri), None) if tracking_uri else store.default_store()
