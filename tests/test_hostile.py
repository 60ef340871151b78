"""Hostile and careless input (issue 24): each class of input that used to pass unchecked.

Non-finite settings, the Python API's override checks, data files that disagree with
themselves, a new spelling replacing an old one, links out of a run folder, sidecar files
and checkpoints that do not fit their model, tensors of the wrong kind, read-only and full
file systems. docs/errors.md lists the messages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnntrain.checks import check_config
from cnntrain.errors import CnnTrainError, ConfigError
from tests.conftest import compose_config

SMOKE = ["experiment=smoke", "trainer.epochs=1"]


def script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run_command(*command, cwd, timeout=300):
    return subprocess.run([script(command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- settings that mean nothing

@pytest.mark.parametrize("overrides, key, shown", [
    (["trainer.mixup.alpha=inf"], "trainer.mixup.alpha", "inf"),
    (["trainer.mixup.cutmix_alpha=nan"], "trainer.mixup.cutmix_alpha", "nan"),
    (["optimizer.lr=inf"], "optimizer.lr", "inf"),
    (["optimizer.lr=nan"], "optimizer.lr", "nan"),
    (["optimizer.weight_decay=-inf"], "optimizer.weight_decay", "-inf"),
    (["trainer.label_smoothing=nan"], "trainer.label_smoothing", "nan"),
    (["trainer.ema=nan"], "trainer.ema", "nan"),
    (["trainer.grad_clip_norm=inf"], "trainer.grad_clip_norm", "inf"),
    (["trainer.checkpoint_every_minutes=inf"], "trainer.checkpoint_every_minutes", "inf"),
    (["trainer.early_stopping.min_delta=nan"], "trainer.early_stopping.min_delta", "nan"),
    (["data.val_fraction=nan"], "data.val_fraction", "nan"),
    (["data.noise=inf"], "data.noise", "inf"),
    (["scheduler=step", "scheduler.gamma=inf"], "scheduler.gamma", "inf"),
    (["scheduler=onecycle", "scheduler.max_lr=inf"], "scheduler.max_lr", "inf"),
    (["scheduler=cosine", "scheduler.warmup_epochs=nan"], "scheduler.warmup_epochs", "nan"),
    (["data.augment=[{name: random_rotation, degrees: inf}]"], "data.augment[0].degrees", "inf"),
    (["model=mlp", "model.dropout=nan"], "model.dropout", "nan"),
])
def test_non_finite_numbers_are_refused_in_every_setting(overrides, key, shown):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config(SMOKE + overrides))
    assert str(caught.value) == f"{key} must be a finite number, got {shown}: no setting takes inf or nan."


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.momentum=2"], "optimizer.momentum must be a number from 0 up to (not) 1 (0.9 is usual), got 2."),
    (["optimizer.momentum=1.0"], "optimizer.momentum must be a number from 0 up to (not) 1 (0.9 is usual), got 1.0."),
    (["optimizer=rmsprop", "optimizer.alpha=1.5"],
     "optimizer.alpha must be a number from 0 up to (not) 1 (0.99 is usual), got 1.5."),
])
def test_out_of_range_optimizer_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as caught:
        check_config(compose_config(SMOKE + overrides))
    assert str(caught.value) == message


def test_mixup_alpha_inf_on_the_command_line_is_one_line_with_exit_2(tmp_path):
    result = run_command("cnntrain", *SMOKE, "trainer.mixup.alpha=inf", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: trainer.mixup.alpha must be a finite number, got inf: no setting takes "
                                     "inf or nan.")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- the Python API checks what the CLI checks

@pytest.mark.parametrize("override, message", [
    ("+trainer.epochz=3", "Unknown setting 'trainer.epochz' (+trainer.epochz=3). Did you mean 'trainer.epochs'?"),
    ("trainer.epochz=3", "Unknown setting 'trainer.epochz' (trainer.epochz=3). Did you mean 'trainer.epochs'?"),
    ("lr=0.1", "Unknown setting 'lr' (lr=0.1). Did you mean 'optimizer.lr'?"),
    ("~trainer", "~trainer would remove the whole 'trainer' section"),
    ("model=lenett", "Unknown model 'lenett' (model=lenett). Did you mean 'lenet'?"),
])
def test_the_python_api_refuses_overrides_the_command_line_refuses(tmp_path, override, message):
    from cnntrain import compose, train

    with pytest.raises(ConfigError) as caught:
        train(*SMOKE, override, "trainer.progress=none", run_dir=tmp_path / "run")
    assert str(caught.value).startswith(message)
    assert not (tmp_path / "run").exists()  # refused before a folder was made
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
                       .replace(".", r"\.").replace("?", r"\?")):
        compose([*SMOKE, override])
