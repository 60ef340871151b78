"""The Python API: what the `cnntrain` command does, as functions.

    from cnntrain import train, load_run
    result = train("model=lenet", "trainer.epochs=2", callbacks=[MyCallback()])
    result.test_acc, result.run_dir, result.model
    run = load_run(result.run_dir)
    run.predict(["shoe.png", pil_image, tensor])

Arguments are the command line's overrides (or a composed config), errors are
`cnntrain.errors.CnnTrainError`s with the same messages the CLI prints, and runs land
in the same folders.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cnntrain import config, key_checks, override_text
from cnntrain.command_line import override_problem
from cnntrain.errors import ConfigError
from cnntrain.predict import LoadedRun, load_run
from cnntrain.resuming import resume_run
from cnntrain.run import RunResult, run
from cnntrain.trainer import Callback

__all__ = ["train", "resume", "load_run", "compose", "RunResult", "LoadedRun", "Callback"]


def train(*overrides: str | DictConfig, callbacks: list[Callback] = (), run_dir: Path | str | None = None) -> RunResult:
    """Train one run: `train("model=alexnet", "data=fashion_mnist")`, or `train(cfg)` with a composed config.

    `callbacks` are called after the built-in ones (see `cnntrain.Callback`); `run_dir`
    defaults to a new timestamped folder under outputs/ in the current folder.
    """
    if len(overrides) == 1 and isinstance(overrides[0], DictConfig):
        return run(overrides[0], run_dir=run_dir, callbacks=callbacks)
    if not all(isinstance(item, str) for item in overrides):
        raise TypeError("train() takes override strings such as 'model=alexnet', or one composed config.")
    return run(compose(overrides), run_dir=run_dir, callbacks=callbacks, command_line=list(overrides))


def compose(overrides=()) -> DictConfig:
    """The config `cnntrain <overrides>` runs with, after the command line's own checks of the overrides (a slip
    in Hydra's grammar, an unknown choice or key, `+trainer.epochz=3` that Hydra would add silently): the same
    ConfigError messages."""
    raw = override_text.expand_home(list(overrides))
    overrides = override_text.quote_for_hydra(raw)
    problem = (
        override_problem(raw, overrides, sweeps="")
        or config.check_group_choices(overrides)
        or key_checks.check_override_keys(overrides)
    )
    if problem:
        raise ConfigError(problem)
    return config.compose(overrides)


def resume(run_dir: Path | str, *overrides: str, callbacks: list[Callback] = ()) -> RunResult:
    """Continue the run in `run_dir` (e.g. `resume(folder, "trainer.epochs=20")`), as `cnntrain resume=...`."""
    return resume_run(run_dir, list(overrides), callbacks)
