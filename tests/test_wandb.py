"""logger=wandb: offline runs read back from the files W&B itself wrote (`run-<id>.wandb`), with no network.

wandb 0.31 no longer ships a Python reader of its transaction log (wandb.sdk.internal.datastore went with the
Go core), so `wandb_records` reads the documented format: LevelDB's log layout (a 7-byte file header ":W&B",
magic, version; 32 KiB blocks of chunks, each a 7-byte header: checksum, length, type FULL/FIRST/MIDDLE/LAST)
holding serialized `wandb.proto.wandb_internal_pb2.Record`s.
"""

import csv
import json
import socket
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from cnntrain.api import resume
from cnntrain.errors import CnnTrainError, ConfigError, RunInterrupted
from cnntrain.loggers import check_logger
from cnntrain.loggers.wandb import WandbLogger, check_wandb, chosen_mode
from cnntrain.metrics import EpochMetrics
from cnntrain.run import train
from tests.conftest import StopAt, compose_config
from tests.helpers import run_cli

pytest.importorskip("wandb", reason="wandb is not installed (pip install 'cnntrain[wandb]')")
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = [
    "data=synthetic",
    "data.train_size=128",
    "data.test_size=64",
    "data.batch_size=32",
    "model=mlp",
    "trainer.progress=none",
    "device=cpu",
    "logger=[csv,wandb]",
]
BLOCK, HEADER = 32768, 7


def wandb_records(path: Path):
    """The Records of one run-<id>.wandb file, in the order they were written."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    index, pending = HEADER, b""
    while index + HEADER <= len(data):
        if BLOCK - index % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            index += BLOCK - index % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[index : index + HEADER])
        chunk, index = data[index + HEADER : index + HEADER + length], index + HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL / FIRST start a record
        if kind in (1, 4) and pending:  # FULL / LAST end it
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def offline_run(folder: Path) -> SimpleNamespace:
    """What an offline run folder (<run folder>/wandb/offline-run-*) holds: the run record, history rows,
    the summary as it ended, the files saved, artifacts and the exit code."""
    [path] = folder.glob("run-*.wandb")
    run = SimpleNamespace(record=None, history=[], summary={}, files=[], artifacts=[], exit_code=None)
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.record = record.run
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "artifact":
            run.artifacts.append((record.artifact.name, record.artifact.type, record.artifact.manifest))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.history.sort(key=lambda row: row["_step"])  # wandb writes a step's row when the next one starts
    return run


def offline_runs(run_dir: Path) -> list[SimpleNamespace]:
    return [offline_run(folder) for folder in sorted((run_dir / "wandb").glob("offline-run-*"))]


@pytest.fixture(scope="module")
def no_network():
    """WANDB_MODE unset (logger.wandb.mode=null must mean offline) and W&B's server address pointing at a local
    socket that counts connections: an offline run must make none."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    connections = []

    def count():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the tests are over
                return
            connections.append(connection)

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("WANDB_MODE", raising=False)
            patch.delenv("WANDB_API_KEY", raising=False)
            patch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
            yield connections
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        server.close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def wandb_run(no_network, tmp_path_factory):
    """One completed 2-epoch run with logger=wandb, its checkpoint uploaded too."""
    run_dir = tmp_path_factory.mktemp("wandb") / "run"
    overrides = ["trainer.epochs=2", "logger.wandb.log_checkpoint=true", "logger.wandb.tags=[baseline]"]
    summary = train(compose_config(TINY + overrides), run_dir=run_dir)
    return run_dir, summary, offline_runs(run_dir)


def test_config_tags_and_the_run_id_kept_for_a_resume(wandb_run):
    run_dir, _, [run] = wandb_run
    config = {item.key: json.loads(item.value_json) for item in run.record.config.update}
    assert config["model"]["name"] == "mlp" and config["data"]["name"] == "synthetic"
    assert config["optimizer"]["lr"] == 0.1 and config["trainer"]["epochs"] == 2  # numbers stay numbers
    assert config["logger"]["wandb"]["log_checkpoint"] is True
    assert {"model:mlp", "data:synthetic", "baseline"} <= set(run.record.tags)
    assert any(tag.startswith("cnntrain_version:") for tag in run.record.tags)
    assert (run.record.display_name, run.record.job_type, run.record.run_group) == ("run", "train", "")
    trackers = json.loads((run_dir / "trackers.json").read_text())
    assert trackers["wandb"]["run_id"] == run.record.run_id and trackers["wandb"]["project"] == "cnntrain"


def test_history_is_metrics_csv_at_step_epoch_and_the_summary_has_the_test(wandb_run):
    run_dir, summary, [run] = wandb_run
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["_step"] for row in run.history] == [row["epoch"] for row in run.history] == [1, 2]
    assert [row["val_acc"] for row in run.history] == pytest.approx([float(r["val_acc"]) for r in rows])
    assert [row["train_loss"] for row in run.history] == pytest.approx([float(r["train_loss"]) for r in rows])
    assert run.summary["test_acc"] == pytest.approx(summary["test_acc"])
    assert run.summary["test_loss"] == pytest.approx(summary["test_loss"])
    assert run.summary["best_val_acc"] == pytest.approx(summary["best_val_acc"])
    assert run.summary["status"] == "completed" and run.exit_code == 0


def test_files_and_the_checkpoint_artifact_are_saved_without_network(wandb_run, no_network):
    run_dir, _, [run] = wandb_run
    assert {"curves.png", "summary.json", "metrics.csv"} <= set(run.files)
    [folder] = (run_dir / "wandb").glob("offline-run-*")
    assert (folder / "files" / "summary.json").read_bytes() == (run_dir / "summary.json").read_bytes()
    [(name, kind, manifest)] = run.artifacts
    assert (name, kind) == (f"model-{run.record.run_id}", "model")
    assert "best.pt" in manifest.SerializeToString().decode("latin-1")
    log = (run_dir / "train.log").read_text()
    assert f"wandb: offline run {run.record.run_id}; upload it with: wandb sync {run_dir}/wandb/offline-run-*" in log
    assert no_network == []  # nothing tried W&B's server


def test_an_interrupted_run_resumed_is_one_wandb_run_with_each_epoch_once(no_network, tmp_path):
    config = compose_config(TINY + ["trainer.epochs=3"])
    with pytest.raises(RunInterrupted):
        train(config, run_dir=tmp_path / "run", callbacks=[StopAt(epoch=2, step=2)])
    resume(tmp_path / "run")
    first, second = offline_runs(tmp_path / "run")
    assert first.record.run_id == second.record.run_id
    assert (first.exit_code, first.summary["status"]) == (255, "interrupted")
    assert (second.exit_code, second.summary["status"]) == (0, "completed")
    # Epoch 1 before the stop; epoch 2 (stopped mid-way) and 3 after it: each once.
    assert [row["epoch"] for row in first.history] == [1] and [row["epoch"] for row in second.history] == [2, 3]
    assert "metrics.csv" in first.files and no_network == []


def test_a_failed_run_ends_with_exit_code_1(no_network, tmp_path):
    logger = WandbLogger(tmp_path, notify=lambda line: None)
    trainer = SimpleNamespace(config=OmegaConf.create({"model": {"name": "mlp"}}), history=[])
    logger.on_fit_start(trainer)
    logger.on_epoch_end(trainer, EpochMetrics(1, 2.0, 0.1, 2.1, 0.2, 0.1, 1.0, 100.0))
    logger.on_exception(trainer, RuntimeError("boom"))
    [run] = offline_runs(tmp_path)
    assert (run.exit_code, run.summary["status"], [row["val_acc"] for row in run.history]) == (1, "failed", [0.2])


def test_a_wandb_run_that_cannot_start_is_one_message(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings: no API key
    logger = WandbLogger(tmp_path / "run", mode="online", notify=lambda line: None)
    trainer = SimpleNamespace(config=OmegaConf.create({"model": {"name": "mlp"}}), history=[])
    with pytest.raises(CnnTrainError) as raised:
        logger.on_fit_start(trainer)
    assert str(raised.value) == (
        "logger=wandb could not start its run (No API key configured. Use `wandb login` to log in). "
        "Log offline with logger.wandb.mode=offline and upload it later with wandb sync."
    )
    logger.on_exception(trainer, raised.value)  # no run to finish: nothing happens


def test_mode_is_offline_unless_set_or_configured(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert chosen_mode(None) == "offline" and chosen_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert chosen_mode(None) is None and chosen_mode("disabled") == "disabled"  # None: wandb reads WANDB_MODE


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match=r"logger.wandb.mode must be online, offline or disabled .* got 'cloud'"):
        check_logger({"wandb": {"mode": "cloud"}})
    with pytest.raises(ConfigError, match=r"logger.wandb.tags must be a list of words"):
        check_logger({"wandb": {"tags": [""]}})
    with pytest.raises(ConfigError, match=r"logger.wandb.project must be a name, got ''"):
        check_logger({"wandb": {"project": ""}})


def test_a_bad_mode_on_the_command_line_exits_2_with_one_line(tmp_path):
    done = run_cli("cnntrain", "experiment=smoke", "logger=wandb", "logger.wandb.mode=cloud", cwd=tmp_path)
    assert done.returncode == 2
    assert "logger.wandb.mode must be online, offline or disabled" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_missing_wandb_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"logger=wandb needs the wandb package.*pip install 'cnntrain\[wandb\]'"):
        check_wandb()
    with pytest.raises(ConfigError, match=r"cnntrain\[wandb\]"):
        check_logger({"wandb": {}})
