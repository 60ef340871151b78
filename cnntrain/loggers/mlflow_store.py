"""Where `logger=mlflow` logs and how it gets there: the tracking URI, the connection check, the experiment,
params MLflow accepts, a sweep's parent run, and cnntrain-eval's files added to a run afterwards.

The logger itself (its hooks) is mlflow.py; what every tracker records is tracking.py. Everything here
talks to MLflow through an `MlflowClient` and explicit run ids, never the fluent `mlflow.start_run`
state, so runs of a sweep in one process and a user's own MLflow code do not step on each other.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cnntrain.errors import ConfigError
from cnntrain.loggers.catalog import require_logger_package
from cnntrain.loggers.tracking import TrackerIds, once_per_sweep
from cnntrain.run_folder import RunFolder

PARENT = "mlflow_parent_run"  # once_per_sweep's name: <sweep folder>/.mlflow_parent_run holds the parent's ids
TRUNCATED = "...[truncated]"  # ends a param value cut to MLflow's length limit
CONNECT_SECONDS = 5  # a server that does not answer a TCP connection in this time is unreachable


def check_mlflow() -> None:
    """A ConfigError saying how to install mlflow when it is missing."""
    require_logger_package("mlflow")


def started_from() -> Path:
    """The folder cnntrain was started from (Hydra's runtime.cwd in a Hydra job, else the current folder)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd).resolve()
    return Path.cwd().resolve()


def default_store() -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment) when logger.mlflow.tracking_uri is null:
    MLFLOW_TRACKING_URI when set (the server decides where artifacts go), else outputs/mlflow.db of the
    folder cnntrain was started from, its artifacts beside it in outputs/mlflow-artifacts/ (not ./mlruns)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    outputs = started_from() / "outputs"
    return f"sqlite:///{outputs / 'mlflow.db'}", (outputs / "mlflow-artifacts").as_uri()


def absolute_sqlite(uri: str) -> str:
    """sqlite:///relative/path.db made absolute against the folder cnntrain was started from (kept in trackers.json:
    a resume from another folder finds the same database); any other URI as it is."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return f"{prefix}{started_from() / uri[len(prefix) :]}"
    return uri


def unreachable_message(uri: str, reason: str) -> str:
    """The one message of a tracker that cannot be reached at the start of a run."""
    server = urlparse(uri).scheme in ("http", "https")
    fix = "Start the server (e.g. mlflow server --host 127.0.0.1 --port 5000)" if server else "Check the path"
    return (
        f"logger=mlflow cannot reach the MLflow tracking store at {uri} ({reason}). {fix}, correct "
        f"logger.mlflow.tracking_uri (null: outputs/mlflow.db), or train without it: "
        f"logger.mlflow.on_unreachable=warn trains on and logs nothing to MLflow."
    )


def unreachable_notice(uri: str, reason: str) -> str:
    """What on_unreachable=warn says instead: the run goes on without MLflow."""
    return (
        f"logger=mlflow cannot reach the MLflow tracking store at {uri} ({reason}); "
        f"logger.mlflow.on_unreachable=warn: the run trains on without MLflow."
    )


def check_reachable(uri: str) -> None:
    """A quick TCP connection to an http(s) server: MLflow's client would retry a refused connection for
    minutes before it gives up. Raises OSError when nothing answers."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_SECONDS):
        pass


def open_experiment(uri: str, name: str, artifact_location: str | None):
    """(client, experiment id) of experiment `name` in the store at `uri`, created when missing; any failure
    is raised (the caller turns it into the unreachable message)."""
    from mlflow import MlflowClient

    check_reachable(uri)
    # MLflow prints two emoji lines of links to stdout when a run on a server ends, outside train.log and in the
    # middle of cnntrain's lines: where_to_look's one line says where the run is instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not uri.startswith("sqlite:///"):
        return _experiment(MlflowClient(tracking_uri=uri), name, artifact_location)
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    for noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables...": noise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # One process at a time creates the database's tables (jobs of a launcher=joblib sweep start together:
    # two creating them at once fail with "duplicate column name").
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _experiment(MlflowClient(tracking_uri=uri), name, artifact_location)


def where_to_look(uri: str, experiment_id: str, run_id: str, status: str) -> str:
    """The line a run ends with: its status and where to see it (the run's page on a server, else the command
    that opens the UI on its store)."""
    if uri.startswith(("http://", "https://")):
        return f"mlflow: run {status}: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow: run {run_id} {status}; see it with: mlflow ui --backend-store-uri {shlex.quote(uri)}"


def _experiment(client, name: str, artifact_location: str | None):
    """(client, id) of experiment `name`, created when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"The MLflow experiment '{name}' is deleted (in the store at {client.tracking_uri}): restore it with "
            f"mlflow experiments restore --experiment-id {experiment.experiment_id}, or log to another one with "
            f"logger.mlflow.experiment=<name>."
        )
    if experiment is not None:
        return client, experiment.experiment_id
    try:
        return client, client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another job of the sweep created it in the meantime
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return client, experiment.experiment_id


def short_reason(err: BaseException) -> str:
    """An exception as a short phrase for a message (MLflow's can run to many lines)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def param_batches(params: Mapping[str, str], size: int = 100) -> list[list]:
    """Params as MLflow `Param`s in batches of its per-call limit: keys in the characters it allows, values cut
    to its length limit with a marker (a long list in the config must not fail the run)."""
    from mlflow.entities import Param

    items = [Param(safe_key(key), param_value(value)) for key, value in params.items()]
    return [items[i : i + size] for i in range(0, len(items), size)]


def param_value(value: str) -> str:
    """`value` cut to MLflow's length limit for a param, with a marker that says so."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    if len(value) <= MAX_PARAM_VAL_LENGTH:
        return value
    return value[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED


def safe_key(key: str) -> str:
    """A key in the characters MLflow accepts (letters, digits, _ - . space : /): others become _."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def sweep_parent(sweep_dir: Path, uri: str, make: Callable[[], str]) -> str | None:
    """The parent run id of the sweep in `sweep_dir` (made once per sweep by `make`), or None when the parent
    lives in another store than `uri` (a child cannot point to it there)."""
    kept = json.loads(once_per_sweep(sweep_dir, PARENT, lambda: json.dumps({"tracking_uri": uri, "run_id": make()})))
    return kept["run_id"] if kept.get("tracking_uri") == uri else None


def end_sweep(sweep_dir: Path, rows: list[dict[str, Any]], status: str, say: Callable[[str], None] = print) -> None:
    """A sweep's parent run ended with `status`: FINISHED or FAILED (a job failed; a pruned job did not) at the
    sweep's end (sweep.SweepReport), FAILED at a fail-fast stop, KILLED when a job was stopped (Ctrl-C stops the
    sweep), with the best job's best_val_acc of `rows`. Nothing when no job logged to MLflow; a failure is a notice."""
    kept_file = Path(sweep_dir) / f".{PARENT}"
    if not kept_file.is_file():
        return
    try:
        kept = json.loads(kept_file.read_text())
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=kept["tracking_uri"])
        scores = [row["best_val_acc"] for row in rows if isinstance(row.get("best_val_acc"), (int, float))]
        if scores:
            client.log_metric(kept["run_id"], "best_val_acc", max(scores))
        client.set_terminated(kept["run_id"], status=status)
    except Exception as err:  # the sweep's table matters more than the tracker's parent run
        say(f"notice: mlflow: could not end the sweep's parent run ({short_reason(err)}).")


def log_evaluation(run: RunFolder, eval_folder: Path) -> list[str]:
    """cnntrain-eval's files (eval/<name>/...) added to the MLflow run the training logged to (trackers.json);
    nothing for a run that did not log to MLflow. Returns notices: a tracker away never fails an evaluation."""
    kept = TrackerIds(run).get("mlflow", "tracking_uri", "run_id")
    if not kept:
        return []
    try:
        check_mlflow()
        check_reachable(kept["tracking_uri"])
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=kept["tracking_uri"])
        folder = Path(eval_folder)
        client.log_artifacts(kept["run_id"], str(folder), artifact_path=folder.relative_to(run.path).as_posix())
    except Exception as err:
        return [f"notice: the evaluation was not added to the run's MLflow run ({short_reason(err)})."]
    return []
