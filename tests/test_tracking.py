"""loggers/tracking.py: what every experiment tracker records of a run (params, tags, figures, status, ids)."""

from __future__ import annotations

import json
import multiprocessing
import platform

from omegaconf import OmegaConf

from cnntrain import __version__
from cnntrain.errors import RunInterrupted
from cnntrain.loggers.tracking import (
    TrackerIds,
    config_params,
    end_status,
    epoch_values,
    once_per_sweep,
    run_tags,
    sweep_job,
)
from cnntrain.metrics import EpochMetrics
from cnntrain.run_folder import RunFolder


def test_the_config_is_flattened_to_dotted_keys_with_values_as_text():
    config = OmegaConf.create(
        {"optimizer": {"lr": 0.1, "name": "sgd"}, "data": {"mean": [0.5], "root": None}, "seed": "${extra}", "extra": 7}
    )
    assert config_params(config) == {
        "optimizer.lr": "0.1",
        "optimizer.name": "sgd",
        "data.mean": "[0.5]",
        "data.root": "None",
        "seed": "7",  # resolved
        "extra": "7",
    }
    assert config_params({"empty": {}, "callbacks": []}) == {"empty": "{}", "callbacks": "[]"}


def test_tags_name_the_model_data_version_and_host():
    tags = run_tags(OmegaConf.create({"model": {"name": "lenet"}, "data": {"name": "fashion_mnist"}}))
    assert tags["model"] == "lenet" and tags["data"] == "fashion_mnist"
    assert tags["cnntrain_version"] == __version__ and tags["host"] == platform.node()


def test_epoch_values_use_metrics_csv_names_and_leave_out_what_the_run_lacks():
    metrics = EpochMetrics(3, 0.5, 0.8, 0.6, 0.75, 0.01, 2.0, 1000.0)
    assert epoch_values(metrics) == {
        "train_loss": 0.5,
        "train_acc": 0.8,
        "val_loss": 0.6,
        "val_acc": 0.75,
        "lr": 0.01,
        "epoch_seconds": 2.0,
        "train_examples_per_s": 1000.0,
    }
    imbalance = EpochMetrics(3, 0.5, 0.8, 0.6, 0.75, 0.01, 2.0, 1000.0, val_balanced_acc=0.7, val_macro_f1=0.65)
    assert {"val_balanced_acc": 0.7, "val_macro_f1": 0.65}.items() <= epoch_values(imbalance).items()  # MLflow, W&B


def test_a_stopped_run_is_killed_and_an_error_failed():
    assert end_status(RunInterrupted("stopped", 130)) == "KILLED" and end_status(KeyboardInterrupt()) == "KILLED"
    assert end_status(ValueError("bad")) == "FAILED"


def test_tracker_ids_are_kept_per_tracker_in_trackers_json(tmp_path):
    folder = RunFolder(tmp_path)
    ids = TrackerIds(folder)
    assert ids.get("mlflow") is None
    ids.put("mlflow", {"run_id": "abc"})
    ids.put("wandb", {"id": "xyz"})
    assert TrackerIds(folder).get("mlflow") == {"run_id": "abc"}
    assert json.loads(folder.trackers_json.read_text()) == {"mlflow": {"run_id": "abc"}, "wandb": {"id": "xyz"}}
    folder.trackers_json.write_text("{not json")
    assert TrackerIds(folder).get("mlflow") is None  # unreadable: a new tracker run, not a crash
    # Edited into something else: no entry (a new tracker run), not an AttributeError or KeyError later.
    for edited in (
        "[]",
        '{"mlflow": "abc"}',
        '{"mlflow": {"run_id": "abc"}}',
        '{"mlflow": {"run_id": 5, "tracking_uri": "x"}}',
    ):
        folder.trackers_json.write_text(edited)
        assert TrackerIds(folder).get("mlflow", "tracking_uri", "run_id") is None, edited
    folder.trackers_json.write_text('{"mlflow": {"run_id": "abc", "tracking_uri": "x"}}')
    assert TrackerIds(folder).get("mlflow", "tracking_uri", "run_id") == {"run_id": "abc", "tracking_uri": "x"}


def test_no_sweep_job_outside_a_multirun():
    assert sweep_job() is None


def _ask_for_the_parent(sweep_dir, counter_file, results):
    def make():
        with open(counter_file, "a") as f:
            f.write("made\n")
        return f"parent-{multiprocessing.current_process().name}"

    results.put(once_per_sweep(sweep_dir, "mlflow_parent", make))


def test_a_per_sweep_value_is_made_once_across_processes(tmp_path):
    counter, results = tmp_path / "made.txt", multiprocessing.get_context("fork").Queue()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_ask_for_the_parent, args=(tmp_path, counter, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    values = {results.get(timeout=5) for _ in workers}
    assert len(values) == 1 and counter.read_text() == "made\n"
    assert (tmp_path / ".mlflow_parent").read_text().strip() == values.pop()
