"""torchrun / DistributedDataParallel on the CPU (gloo, 2 processes), against a single-process run.

Tolerance: the 2-process run sees the same global batches in the same order, so only the
order of float32 additions differs (each rank sums its half, then the halves are added;
gradients are averaged by an all-reduce). That moves per-epoch losses by about 1e-7
relative and weights by about 5e-7 absolute here; the bounds below (1e-5) are far under
what a real difference (a batch counted twice, a shard missing, an unscaled gradient)
would move: percents.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnntrain.checkpoint import load_checkpoint
from cnntrain.distributed import group_for
from cnntrain.errors import ConfigError
from cnntrain.interruptions import StopOnSignals
from tests.helpers import run_cli

HOOKS = '''
import os, signal
from torch import nn
from cnntrain.models import MODELS
from cnntrain.models.lenet import lenet_classic


class SignalAtStep(nn.Module):
    """Sends TEST_SIGNAL to its own process at training step TEST_SIGNAL_AT_STEP, on rank TEST_SIGNAL_RANK."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if (self.calls == int(os.environ.get("TEST_SIGNAL_AT_STEP", 0))
                    and os.environ.get("RANK", "0") == os.environ.get("TEST_SIGNAL_RANK", "0")):
                os.kill(os.getpid(), getattr(signal, os.environ["TEST_SIGNAL"]))
        return self.inner(x)


@MODELS.register("signal_lenet")
def signal_lenet(num_classes=10, in_channels=1, input_size=32):
    return SignalAtStep(lenet_classic(num_classes=num_classes, in_channels=in_channels, input_size=input_size))
'''
# 400 train images in global batches of 32 (13 steps, the last of 16), momentum: the state a
# resume must restore. ReLU LeNet, no dropout or BatchNorm: nothing that differs per rank by design.
RUN = [
    "experiment=smoke",
    "model.name=signal_lenet",
    "imports=[ddp_hooks]",
    "data.train_size=500",
    "optimizer.lr=0.03",
    "optimizer.momentum=0.9",
    "trainer.epochs=4",
    "trainer.progress=plain",
]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    (folder / "ddp_hooks.py").write_text(HOOKS)
    return folder


def cnntrain(*args, cwd, processes=0, env=None):
    """cnntrain in one process, or under torchrun with `processes` processes (each with torchrun's own
    OMP_NUM_THREADS=1, as a user's are: conftest.py's fixed count is for the single-process runs)."""
    launcher = ("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}") if processes else ()
    environment = {key: value for key, value in os.environ.items() if not (processes and key == "OMP_NUM_THREADS")}
    return run_cli(
        "python -m cnntrain", *args, cwd=cwd, env={**environment, **(env or {})}, python=launcher, inherit_env=False
    )


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / name)["state_dict"]


def largest_difference(a: dict, b: dict) -> float:
    assert list(a) == list(b)
    return max((a[key].float() - b[key].float()).abs().max().item() for key in a)


def assert_same_training(a: Path, b: Path) -> None:
    rows_a, rows_b = metrics(a), metrics(b)
    assert len(rows_a) == len(rows_b) == 4
    for row_a, row_b in zip(rows_a, rows_b):
        for key in ("train_loss", "val_loss"):
            # abs: a loss near zero (5e-5 at the end of this easy run) differs by a few float32 eps in a relative
            # figure above TOLERANCE when the two runs sum in another order (another CPU's kernels).
            assert float(row_a[key]) == pytest.approx(float(row_b[key]), rel=TOLERANCE, abs=1e-8), (key, row_a["epoch"])
        for key in ("train_acc", "val_acc", "val_balanced_acc", "val_macro_f1"):  # the last two: confusion summed
            assert float(row_a[key]) == float(row_b[key]), (key, row_a["epoch"])
    assert largest_difference(weights(a), weights(b)) < TOLERANCE


@pytest.fixture(scope="module")
def single(workdir):
    result = cnntrain(*RUN, f"hydra.run.dir={workdir / 'single'}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "single"


@pytest.fixture(scope="module")
def two_processes(workdir):
    """A 2-process run that leaves the run folder to Hydra's default (timestamped) name."""
    folder = workdir / "two"
    folder.mkdir()
    (folder / "ddp_hooks.py").write_text(HOOKS)
    result = cnntrain(*RUN, cwd=folder, processes=2)
    assert result.returncode == 0, result.stderr
    runs = list((folder / "outputs").glob("*/*"))
    assert len(runs) == 1, runs  # every rank wrote to rank 0's folder
    return runs[0], result


def test_two_processes_train_as_one_with_the_same_global_batch(single, two_processes):
    run_dir, result = two_processes
    assert "device cpu x 2 processes (DistributedDataParallel; global batch 32)" in result.stdout
    assert result.stdout.count("cnntrain result") == 1  # rank 0 alone prints
    assert_same_training(single, run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert not (run_dir / ".hydra" / "hydra.yaml").read_text().count("output_subdir: null")  # rank 0's


def test_distributed_test_metrics_equal_one_process_evaluating_best_pt(two_processes):
    run_dir, _ = two_processes
    summary = json.loads((run_dir / "summary.json").read_text())
    script = str(Path(sys.executable).with_name("cnntrain-eval"))  # in its own process: ddp_hooks registers a model
    result = subprocess.run(
        [script, f"run={run_dir}", "imports=[ddp_hooks]"],
        cwd=run_dir.parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads((run_dir / "eval" / "test_best" / "eval.json").read_text())
    assert figures["size"] == summary["test_size"] == 128
    assert figures["acc"] == summary["test_acc"]
    assert figures["loss"] == pytest.approx(summary["test_loss"], rel=TOLERANCE)
    assert (figures["balanced_acc"], figures["macro_f1"]) == (summary["test_balanced_acc"], summary["test_macro_f1"])


def test_a_killed_rank_ends_the_job_with_a_message(workdir):
    run_dir = workdir / "killed"
    result = cnntrain(
        *RUN,
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
        processes=2,
        env={"TEST_SIGNAL": "SIGKILL", "TEST_SIGNAL_AT_STEP": "20", "TEST_SIGNAL_RANK": "1"},
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Another process of this distributed run stopped, so this one cannot go on" in output
    assert "rank      : 1" in output and "SIGKILL" in output  # torchrun's report: the rank that died first
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "resume with" in summary["error"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_stopped_distributed_run_resumes_exactly_with_any_number_of_processes(workdir, single, two_processes):
    uninterrupted, _ = two_processes
    stopped = workdir / "stopped2"
    result = cnntrain(
        *RUN,
        f"hydra.run.dir={stopped}",
        cwd=workdir,
        processes=2,
        env={"TEST_SIGNAL": "SIGTERM", "TEST_SIGNAL_AT_STEP": "20", "TEST_SIGNAL_RANK": "1"},
    )
    assert result.returncode != 0
    assert "checkpoints/last.pt holds epoch 1 and steps 1-7 of epoch 2" in result.stdout
    assert "--nproc_per_node=2 -m cnntrain resume=" in result.stdout
    shutil.copytree(stopped, workdir / "stopped1")
    again = cnntrain(f"resume={stopped}", "imports=[ddp_hooks]", cwd=workdir, processes=2)
    assert again.returncode == 0, again.stderr
    assert largest_difference(weights(uninterrupted), weights(stopped)) == 0.0
    assert_same_training(uninterrupted, stopped)
    # In one process: the same global batches, so the same training up to float32 rounding.
    alone = cnntrain(f"resume={workdir / 'stopped1'}", "imports=[ddp_hooks]", cwd=workdir)
    assert alone.returncode == 0, alone.stderr
    assert_same_training(single, workdir / "stopped1")


def test_strategy_single_refuses_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="trainer.strategy=single, but torchrun started 2 processes"):
        group_for("single")
    with pytest.raises(ConfigError, match="trainer.strategy must be one of auto, ddp, single"):
        group_for("dp")


@pytest.mark.slow  # over 5 s: run with -m slow
def test_distributed_settings_are_checked(workdir):
    sweep = cnntrain("-m", *RUN, cwd=workdir, processes=2)
    assert sweep.returncode != 0 and "a sweep (-m) cannot run inside it" in sweep.stderr
    sync = cnntrain(
        *RUN, "trainer.strategy=ddp", "trainer.sync_batchnorm=true", f"hydra.run.dir={workdir / 'sync'}", cwd=workdir
    )
    assert sync.returncode == 2 and "trainer.sync_batchnorm=true needs CUDA GPUs" in sync.stderr
    forced = cnntrain(*RUN, "trainer.strategy=ddp", f"hydra.run.dir={workdir / 'forced'}", cwd=workdir)
    assert forced.returncode == 0, forced.stderr
    assert "device cpu x 1 process (DistributedDataParallel" in forced.stdout


@pytest.mark.slow  # over 5 s: run with -m slow
def test_the_python_api_under_torchrun_writes_one_run_folder(workdir):
    script = workdir / "train_script.py"
    script.write_text(
        "from cnntrain import train\n"
        "result = train('experiment=smoke', 'trainer.epochs=1', 'trainer.progress=none')\n"
        "print('test acc', result.test_acc, 'run', result.run_dir)\n"
    )
    folder = workdir / "api"
    folder.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    runs = list((folder / "outputs").glob("*/*"))
    assert len(runs) == 1 and result.stdout.count(f"run {runs[0]}") == 2  # both ranks got rank 0's folder
    assert json.loads((runs[0] / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    "torchrun, error, ignored",
    [
        (True, RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234"), True),
        (True, ValueError("a bug of ours"), False),
        (False, RuntimeError("Connection closed by peer"), False),
    ],
)
def test_a_rank_whose_peer_died_ignores_torchruns_sigterm_so_it_can_say_why(monkeypatch, torchrun, error, ignored):
    # torchrun SIGTERMs the ranks left as soon as one dies; a rank already leaving for that reason must get to
    # print its message (where to resume), not be cut off by the default SIGTERM action.
    if torchrun:
        monkeypatch.setenv("LOCAL_RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "2")
    else:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(type(error)):
            with StopOnSignals():
                raise error
        assert (signal.getsignal(signal.SIGTERM) is signal.SIG_IGN) is ignored
        if not ignored:
            assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, before)
