"""launcher=slurm and launcher=submitit_local (Hydra's submitit launcher): their configs, the message
when the plugin is missing, and real sweeps: on this machine with submitit's local executor, and through
submitit's Slurm executor with stand-ins for sbatch/srun/sacct that run the array's jobs here."""

import csv
import importlib.util
import io
import json
import os
import shutil
import sys

import pytest
import yaml
from rich.console import Console

from cnntrain.config import config_dir
from cnntrain.sweep import FAIL_FAST_WITH_SUBMITIT, missing_plugin
from cnntrain.sweep import main as report_main
from cnntrain.sweep_report import report_sweep
from tests.conftest import make_job
from tests.helpers import run_cli

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'cnntrain[submitit]'")

SMOKE = ["experiment=smoke", "data.train_size=160", "data.test_size=32", "trainer.epochs=1"]


def cnntrain(*args, cwd, env=None):
    return run_cli("cnntrain", "-m", *args, cwd=cwd, env=env, timeout=180)


def launcher_settings(overrides):
    """hydra.launcher as `cnntrain -m <overrides>` composes it (interpolations left as written), and trainer."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher), cfg.trainer


def sweep_rows(sweep_dir):
    with open(sweep_dir / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_slurm_composes_with_the_settings_its_file_documents():
    launcher, trainer = launcher_settings(["launcher=slurm"])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert {
        key: launcher[key]
        for key in (
            "partition",
            "gpus_per_node",
            "tasks_per_node",
            "cpus_per_task",
            "mem_gb",
            "timeout_min",
            "array_parallelism",
            "name",
            "submitit_folder",
        )
    } == {
        "partition": None,
        "gpus_per_node": 1,
        "tasks_per_node": 1,
        "cpus_per_task": 8,
        "mem_gb": 32,
        "timeout_min": 720,
        "array_parallelism": 8,
        "name": "cnntrain",
        "submitit_folder": "${hydra.sweep.dir}/.submitit/%j",
    }
    assert trainer.progress == "plain"
    launcher, _ = launcher_settings(["launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60"])
    assert (launcher["partition"], launcher["timeout_min"]) == ("gpu", 60)


def test_submitit_local_composes_with_one_gpu_and_no_hour_limit():
    launcher, trainer = launcher_settings(["launcher=submitit_local"])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    # Without gpus_per_node submitit hides every GPU from the jobs (CUDA_VISIBLE_DEVICES=""); the
    # plugin's 60-minute timeout would stop a long run.
    assert (launcher["gpus_per_node"], launcher["timeout_min"], trainer.progress) == (1, 4320, "plain")


def test_a_missing_submitit_plugin_names_the_extra_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    for choice in ("launcher=slurm", "launcher=submitit_local", "hydra/launcher=submitit_slurm"):
        assert missing_plugin(["-m", choice, "optimizer.lr=0.1,0.5"]) == (
            f"'{choice}' needs Hydra's submitit plugin (hydra-submitit-launcher), which is not installed. "
            "Install it with: pip install 'cnntrain[submitit]'"
        )
    assert missing_plugin(["-m", "launcher=joblib"]).endswith("pip install 'cnntrain[joblib]'")


def test_launcher_slurm_on_a_machine_without_slurm_says_where_to_run_it(monkeypatch):
    """Instead of submitit's traceback ("Could not detect srun") after Hydra made the sweep folder."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert missing_plugin(["-m", "launcher=slurm", "optimizer.lr=0.1,0.5"]) == (
        "'launcher=slurm' submits the sweep's jobs with Slurm's sbatch and srun, which this machine does not have "
        "(not on PATH). Run the command on the cluster's login node, or try the sweep here with "
        "launcher=submitit_local."
    )
    assert missing_plugin(["--cfg", "hydra", "launcher=slurm"]) is None  # shows the config: nothing is submitted
    assert missing_plugin(["-m", "launcher=submitit_local", "optimizer.lr=0.1,0.5"]) is None
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert missing_plugin(["-m", "launcher=slurm", "optimizer.lr=0.1,0.5"]) is None


def test_a_local_sweep_runs_each_job_in_its_own_process_and_reports(tmp_path):
    sweep_dir = tmp_path / "sw"
    result = cnntrain(
        "launcher=submitit_local", *SMOKE, "optimizer.lr=0.05,0.1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sweep result" in result.stdout and "best job: " in result.stdout
    for job, lr in ((0, 0.05), (1, 0.1)):
        assert json.loads((sweep_dir / str(job) / "summary.json").read_text())["status"] == "completed"
        assert yaml.safe_load((sweep_dir / str(job) / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] == lr
    rows = sweep_rows(sweep_dir)
    assert [(row["job"], row["optimizer.lr"], row["status"]) for row in rows] == [
        ("0", "0.05", "completed"),
        ("1", "0.1", "completed"),
    ]
    # Each job was a process of submitit's, with its log under .submitit/<process id>/.
    logs = sorted(sweep_dir.glob(".submitit/*/*_0_log.out"))
    assert len(logs) == 2 and all("cnntrain: lenet_classic" in log.read_text() for log in logs)


def test_a_failed_job_is_a_failed_row_and_exit_status_1_and_fail_fast_cannot_stop_the_others(tmp_path):
    sweep_dir = tmp_path / "sw"
    result = cnntrain(
        "launcher=submitit_local",
        *SMOKE,
        "optimizer.lr=-0.1,0.1",
        "sweep.fail_fast=true",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.startswith(FAIL_FAST_WITH_SUBMITIT)
    assert "1 of 2 jobs failed." in result.stdout
    rows = sweep_rows(sweep_dir)
    assert [(row["optimizer.lr"], row["status"]) for row in rows] == [("-0.1", "failed"), ("0.1", "completed")]
    assert "Invalid learning rate: -0.1" in rows[0]["error"]


@pytest.mark.slow  # over 5 s: run with -m slow
def test_one_gpu_per_job_on_one_machine_through_hydras_env_set(tmp_path):
    """What the README's "one GPU per job" says, checked where the job runs: submitit gives every job
    CUDA_VISIBLE_DEVICES=0..gpus_per_node-1, and hydra.job.env_set overrides it with the job's number."""
    (tmp_path / "gpu_probe.py").write_text(
        "import os\nfrom pathlib import Path\nfrom hydra.core.hydra_config import HydraConfig\n"
        "Path(os.environ['PROBE_OUT'], f'job{HydraConfig.get().job.num}').write_text("
        "os.environ['CUDA_VISIBLE_DEVICES'])\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PROBE_OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": "5"}
    result = cnntrain(
        "launcher=submitit_local",
        *SMOKE,
        "imports=[gpu_probe]",
        "optimizer.lr=0.05,0.1",
        "+hydra.job.env_set.CUDA_VISIBLE_DEVICES=${hydra.job.num}",
        f"hydra.sweep.dir={tmp_path / 'a'}",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(tmp_path / f"job{n}").read_text() for n in (0, 1)] == ["0", "1"]
    # Without env_set, every job gets the same device(s), whatever the caller's CUDA_VISIBLE_DEVICES was.
    result = cnntrain(
        "launcher=submitit_local",
        *SMOKE,
        "imports=[gpu_probe]",
        "optimizer.lr=0.05,0.1",
        "hydra.launcher.gpus_per_node=2",
        f"hydra.sweep.dir={tmp_path / 'b'}",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(tmp_path / f"job{n}").read_text() for n in (0, 1)] == ["0,1", "0,1"]


FAKE_SBATCH = '''#!{python}
"""sbatch: starts each task of the array script here, in the background, with Slurm's variables."""
import os, re, subprocess, sys
path = sys.argv[-1]
script = open(path).read()
open(os.path.join(os.path.dirname(sys.argv[0]), "submitted.sh"), "w").write(script)
array = re.search(r"--array=0-(\\d+)", script)
for i in range(int(array.group(1)) + 1 if array else 1):
    env = dict(os.environ, SLURM_JOB_ID=str(5000 + i), SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0",
               SLURM_NODEID="0", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost")
    if array:
        env.update(SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID=str(i))
    subprocess.Popen(["bash", path], env=env, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("Submitted batch job", 4242 if array else 5000)
'''
FAKE_SRUN = '''#!{python}
"""srun: --output/--error with %A %a %j %t filled in as Slurm does, then the command."""
import os, sys
args, files = sys.argv[1:], {{}}
while args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        value = args.pop(0)
        for key, name in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID")):
            value = value.replace(key, os.environ.get(name, ""))
        files[flag] = value.replace("%t", "0")
for fd, flag in ((1, "--output"), (2, "--error")):
    os.makedirs(os.path.dirname(files[flag]), exist_ok=True)
    os.dup2(os.open(files[flag], os.O_WRONLY | os.O_CREAT | os.O_APPEND), fd)
os.execvp(args[0], args)
'''


@pytest.mark.slow  # over 5 s: run with -m slow
def test_a_slurm_sweep_through_submitits_slurm_executor(tmp_path):
    """The real launcher=slurm path (sbatch script, job array, Slurm's job environment, results), with
    stand-ins for Slurm's commands; sacct answers nothing, so submitit waits for each job's result file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("sbatch", FAKE_SBATCH),
        ("srun", FAKE_SRUN),
        ("sacct", "#!/bin/sh\necho 'JobID|State|NodeList'\n"),
        ("scancel", "#!/bin/sh\n"),
    ):
        (bin_dir / name).write_text(text.format(python=sys.executable) if name in ("sbatch", "srun") else text)
        (bin_dir / name).chmod(0o755)
    sweep_dir = tmp_path / "sw"
    result = cnntrain(
        "launcher=slurm",
        "hydra.launcher.partition=gpu",
        *SMOKE,
        "optimizer.lr=-0.1,0.1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 of 2 jobs failed." in result.stdout and "Traceback" not in result.stderr
    assert [(row["optimizer.lr"], row["status"]) for row in sweep_rows(sweep_dir)] == [
        ("-0.1", "failed"),
        ("0.1", "completed"),
    ]
    script = (bin_dir / "submitted.sh").read_text().splitlines()
    for line in (
        "#SBATCH --array=0-1%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=720",
        "#SBATCH --job-name=cnntrain",
        f"#SBATCH --output={sweep_dir}/.submitit/%A_%a/%A_%a_0_log.out",
    ):
        assert line in script
    # Where the README says each job's output goes: .submitit/<array id>_<n>/<array id>_<n>_0_log.out.
    assert "Invalid learning rate" in (sweep_dir / ".submitit" / "4242_0" / "4242_0_0_log.err").read_text()
    assert "run folder: " in (sweep_dir / ".submitit" / "4242_1" / "4242_1_0_log.out").read_text()


def test_a_job_stopped_at_its_time_limit_says_so_and_how_to_continue(tmp_path, monkeypatch):
    # What submitit raises in the job (hydra.launcher.timeout_min reached), recorded by the run as its error.
    error = "Job not requeued because: timed-out too many times."
    make_job(tmp_path, "0", ["optimizer.lr=0.1"], {"status": "failed", "error": error})
    (make_job(tmp_path, "1", ["optimizer.lr=0.5"], {"status": "failed", "error": error}) / "checkpoints").mkdir()
    (tmp_path / "1" / "checkpoints" / "last.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    rows = report_sweep(tmp_path, Console(file=io.StringIO()))
    assert [row["error"] for row in rows] == [
        "stopped at its time limit (hydra.launcher.timeout_min) before its first epoch ended",
        "stopped at its time limit (hydra.launcher.timeout_min); checkpoints/last.pt holds its finished epochs: "
        "cnntrain resume=1",
    ]


def test_the_report_can_be_written_again_from_the_job_folders(tmp_path, capsys):
    """`python -m cnntrain.sweep <sweep dir>`: after the process that ran a Slurm sweep was stopped."""
    make_job(
        tmp_path,
        "0",
        ["optimizer.lr=0.1"],
        {"status": "completed", "best_val_acc": 0.5, "test_acc": 0.5, "best_epoch": 1, "wall_seconds": 1.0},
    )
    assert report_main([str(tmp_path)]) == 2  # no multirun.yaml nor .submitit/: not written into
    assert "usage: python -m cnntrain.sweep" in capsys.readouterr().err
    assert not (tmp_path / "sweep.csv").exists()
    (tmp_path / ".submitit").mkdir()
    assert report_main([str(tmp_path)]) == 0
    make_job(tmp_path, "1", ["optimizer.lr=0.5"])  # killed: no summary.json
    assert report_main([str(tmp_path)]) == 1
    assert [row["status"] for row in sweep_rows(tmp_path)] == ["completed", "failed"]
    assert "1 of 2 jobs failed." in capsys.readouterr().out
