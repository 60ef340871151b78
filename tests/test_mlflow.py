"""logger=mlflow against the real thing: a `mlflow server` on a free localhost port (started once for the
session) and the default SQLite file store, every run read back with MlflowClient."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cnntrain.errors import ConfigError, RunInterrupted
from cnntrain.loggers import check_logger
from cnntrain.loggers.mlflow_store import TRUNCATED, check_mlflow, param_batches
from cnntrain.loggers.tracking import config_params
from cnntrain.resuming import resume
from cnntrain.run import train
from cnntrain.trainer import Callback
from tests.conftest import StopAt, compose_config
from tests.helpers import run_cli

pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'cnntrain[mlflow]')")
from mlflow import MlflowClient  # noqa: E402

TINY = [
    "experiment=smoke",
    "trainer.epochs=2",
    "trainer.progress=none",
    "data.train_size=160",
    "data.test_size=32",
    "logger=mlflow",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`mlflow server` with a SQLite backend and proxied artifacts on a free port: its URI. Stopped at the end
    of the session, also when a test failed."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri"]
    command += [f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(folder / "server.log", "w")
    # Without its job runners (huey consumers, for GenAI jobs these tests never use): ready in half the time.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for_health(uri, process, folder / "server.log")
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and the workers it started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def wait_for_health(uri: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer /health in {seconds} s:\n{log.read_text()[-3000:]}")


def one_run(uri: str, experiment: str):
    """The only run (no parent) of `experiment` in the store at `uri`."""
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [run.info.run_name for run in runs]
    return client, runs[0]


def steps(client, run_id: str, key: str = "val_acc") -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def csv_column(path: Path, key: str) -> list[tuple[int, float]]:
    with open(path) as f:
        return [(int(row["epoch"]), float(row[key])) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def server_run(server, tmp_path_factory):
    """A 2-epoch smoke run logged to the server: (client, its MLflow run, the run folder)."""
    run_dir = tmp_path_factory.mktemp("mlflow-run") / "run"
    train(compose_config([*TINY, f"logger.mlflow.tracking_uri={server}", "logger.mlflow.experiment=smoke"]), run_dir)
    client, run = one_run(server, "smoke")
    return client, run, run_dir


def test_a_run_logs_its_config_metrics_tags_files_and_status_to_a_server(server, server_run):
    client, run, run_dir = server_run
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    params = config_params(config)
    assert len(run.data.params) == len(params) > 40
    assert run.data.params["optimizer.lr"] == "0.1" and run.data.params["model.name"] == "lenet_classic"
    assert steps(client, run.info.run_id) == csv_column(run_dir / "metrics.csv", "val_acc")
    assert [step for step, _ in steps(client, run.info.run_id, "train_loss")] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.data.metrics["test_acc"] == pytest.approx(summary["test_acc"])
    assert run.data.tags["model"] == "lenet_classic" and run.data.tags["data"] == "synthetic"
    assert run.data.tags["run_folder"] == str(run_dir) and run.data.tags["host"]
    assert run.info.run_name == "lenet_classic-synthetic-run"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"curves.png", "summary.json", "metrics.csv"}
    assert run.info.status == "FINISHED"
    kept = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert kept == {"tracking_uri": server, "run_id": run.info.run_id}
    # One line says where the run is (MLflow's own emoji lines to stdout are turned off).
    page = f"mlflow: run FINISHED: {server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    log = (run_dir / "train.log").read_text()
    assert page in log.splitlines() and "View run" not in log


def test_cnntrain_eval_adds_its_files_to_the_same_mlflow_run(server_run):
    from cnntrain.evaluation import evaluate_run

    client, run, run_dir = server_run
    result = evaluate_run(run_dir)
    assert not [n for n in result.notices if "MLflow" in n]
    name = result.folder.path.name
    files = {a.path for a in client.list_artifacts(run.info.run_id, f"eval/{name}")}
    assert {f"eval/{name}/confusion_matrix.png", f"eval/{name}/eval.json", f"eval/{name}/per_class.csv"} <= files
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_an_evaluation_whose_mlflow_store_is_away_is_a_notice(tmp_path):
    from cnntrain.loggers.mlflow_store import log_evaluation
    from cnntrain.loggers.tracking import TrackerIds
    from cnntrain.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    assert log_evaluation(folder, tmp_path / "eval" / "test_best") == []  # a run that did not log to MLflow
    TrackerIds(folder).put("mlflow", {"tracking_uri": f"http://127.0.0.1:{free_port()}", "run_id": "abc"})
    (notice,) = log_evaluation(folder, tmp_path / "eval" / "test_best")
    assert notice.startswith("notice: the evaluation was not added to the run's MLflow run (")


def test_the_default_store_is_outputs_mlflow_db_of_the_folder_cnntrain_started_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train(compose_config(TINY), tmp_path / "run")
    assert (tmp_path / "outputs" / "mlflow.db").is_file()
    client, run = one_run(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "cnntrain")
    assert run.info.status == "FINISHED"
    assert [step for step, _ in steps(client, run.info.run_id)] == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"curves.png", "summary.json", "metrics.csv"}
    assert run.info.artifact_uri.startswith((tmp_path / "outputs" / "mlflow-artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
    # The run deleted from the store, then the run resumed: a notice and a new MLflow run with every epoch.
    client.delete_run(run.info.run_id)
    resume(tmp_path / "run", ["trainer.epochs=3"])
    client, new = one_run(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "cnntrain")
    assert new.info.run_id != run.info.run_id and [step for step, _ in steps(client, new.info.run_id)] == [1, 2, 3]
    assert (
        f"notice: mlflow: the run {run.info.run_id} this run logged to is not in "
        in (tmp_path / "run" / "train.log").read_text()
    )


def test_a_deleted_experiment_is_one_message_saying_how_to_restore_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(ConfigError, match=r"The MLflow experiment 'gone' is deleted \(in the store at sqlite:"):
        train(compose_config([*TINY, f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.experiment=gone"]), "run")


def test_a_stopped_sweep_job_ends_its_sweeps_parent_run_as_killed(tmp_path, monkeypatch):
    """Ctrl-C in a sweep's job stops the sweep, whose end (SweepReport) then never comes: the parent is KILLED."""
    import cnntrain.loggers.mlflow as mlflow_logger
    from cnntrain.loggers.tracking import SweepJob

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mlflow_logger, "sweep_job", lambda: SweepJob(tmp_path / "sweep", 0, ()))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(RunInterrupted):
        train(
            compose_config([*TINY, f"logger.mlflow.tracking_uri={uri}"]),
            tmp_path / "sweep" / "0",
            callbacks=[StopAt(1, 2)],
        )
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cnntrain").experiment_id])
    [parent] = [run for run in runs if run.info.run_name == "sweep"]
    [child] = [run for run in runs if run.info.run_name != "sweep"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == "KILLED" and child.info.status == "KILLED"


def test_a_stopped_run_is_killed_and_its_resume_continues_the_same_run_without_repeated_epochs(server, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer.epochs=3", f"logger.mlflow.tracking_uri={server}", "logger.mlflow.experiment=resume"]
    with pytest.raises(RunInterrupted):
        train(compose_config(overrides), run_dir, callbacks=[StopAt(2, 2)])
    client, run = one_run(server, "resume")
    assert run.info.status == "KILLED"
    assert [step for step, _ in steps(client, run.info.run_id)] == [1]
    # An epoch logged but not in the checkpoint (a crash between the two) must not come twice.
    client.log_metric(run.info.run_id, "val_acc", 0.5, step=2)
    resume(run_dir, ["trainer.epochs=4"])
    client, resumed = one_run(server, "resume")
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    history = steps(client, run.info.run_id)
    assert [step for step, _ in history] == [1, 2, 3, 4]
    assert history[1][1] == 0.5  # the step already held was left alone
    assert csv_column(run_dir / "metrics.csv", "val_acc")[2:] == history[2:]
    # MLflow refuses to change a param: the first value stays, the resume's is a tag.
    assert resumed.data.params["trainer.epochs"] == "3" and resumed.data.tags["resumed.trainer.epochs"] == "4"


class FailAt(Callback):
    def on_epoch_end(self, trainer, metrics):
        raise RuntimeError("a callback broke")


def test_a_failed_run_is_failed(server, tmp_path):
    overrides = [*TINY, f"logger.mlflow.tracking_uri={server}", "logger.mlflow.experiment=failed"]
    with pytest.raises(RuntimeError, match="a callback broke"):
        train(compose_config(overrides), tmp_path / "run", callbacks=[FailAt()])
    client, run = one_run(server, "failed")
    assert run.info.status == "FAILED"
    assert "metrics.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_an_unreachable_server_stops_the_run_before_any_epoch_with_one_message(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli(
        "cnntrain", *TINY, f"logger.mlflow.tracking_uri={closed}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(f"logger=mlflow cannot reach the MLflow tracking store at {closed}") == 1
    assert "on_unreachable=warn" in result.stderr and "Traceback" not in result.stderr
    assert "epoch 1/" not in result.stdout and not (tmp_path / "run" / "metrics.csv").exists()
    assert time.monotonic() - started < 60


def test_on_unreachable_warn_trains_on_without_mlflow(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    train(compose_config([*TINY, f"logger.mlflow.tracking_uri={closed}", "logger.mlflow.on_unreachable=warn"]), run_dir)
    log = (run_dir / "train.log").read_text()
    assert log.count("notice: logger=mlflow cannot reach the MLflow tracking store") == 1
    assert "trains on without MLflow" in log
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert not (run_dir / "trackers.json").exists()


@pytest.mark.slow  # a cnntrain -m process of two jobs: 13-26 s on a busy 2-core machine
def test_a_sweep_is_a_parent_run_with_a_child_per_job(server, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "cnntrain",
        "-m",
        *TINY,
        "trainer.epochs=1",
        "optimizer.lr=0.1,0.05",
        f"logger.mlflow.tracking_uri={server}",
        "logger.mlflow.experiment=sweep",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=server)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert sorted(run.data.params["optimizer.lr"] for run in children) == ["0.05", "0.1"]
    assert all(run.info.status == "FINISHED" for run in children)
    assert parent.data.metrics["best_val_acc"] == max(run.data.metrics["val_acc"] for run in children)
    assert sorted(run.info.run_name for run in children) == ["lenet_classic-synthetic-0", "lenet_classic-synthetic-1"]


@pytest.mark.slow  # two processes under torchrun: about 30 s
def test_under_torchrun_only_rank_0_logs(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MLFLOW_TRACKING_URI")}
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    result = run_cli(
        "python -m cnntrain",
        *TINY,
        "hydra.run.dir=run",
        cwd=tmp_path,
        env=environment,
        python=launcher,
        inherit_env=False,
    )
    assert result.returncode == 0, result.stderr
    client, run = one_run(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "cnntrain")
    assert run.info.status == "FINISHED" and [step for step, _ in steps(client, run.info.run_id)] == [1, 2]
    assert steps(client, run.info.run_id) == csv_column(tmp_path / "run" / "metrics.csv", "val_acc")


def test_bad_settings_and_a_missing_package_are_answered_before_any_data_loads(monkeypatch):
    with pytest.raises(ConfigError, match="on_unreachable must be fail .* or warn"):
        check_logger(compose_config(["logger=mlflow", "logger.mlflow.on_unreachable=maybe"]).logger)
    with pytest.raises(ConfigError, match="logger.mlflow.experiment must be"):
        check_logger(compose_config(["logger=mlflow", "logger.mlflow.experiment=''"]).logger)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"pip install 'cnntrain\[mlflow\]'"):
        check_mlflow()


def test_a_param_longer_than_mlflows_limit_is_cut_with_a_marker():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    (batch,) = param_batches({"data.classes": "x" * 7000, "a b[c]": "1"})
    assert len(batch[0].value) == MAX_PARAM_VAL_LENGTH and batch[0].value.endswith(TRUNCATED)
    assert (batch[1].key, batch[1].value) == ("a b_c_", "1")
