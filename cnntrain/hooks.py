"""`Callback`, the public extension point of a run, and how callbacks' own state is keyed in checkpoints.

The built-in display, metrics.csv, checkpoints and loggers are callbacks too; the hook
order for a run is listed in docs/architecture.md ("Callback hooks, in the order they fire").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnntrain.metrics import EpochMetrics, StepProgress

# A cnntrain.trainer.Trainer: not imported, since trainer.py imports this module (tests/test_architecture.py).
_Trainer = Any


class Callback:
    """The public extension point: subclass it and override the hooks you need.

    Pass instances to `cnntrain.train(..., callbacks=[...])`, or list them in the config
    (`callbacks: [{_target_: my_module.MyCallback, some_arg: 1}]`). The trainer calls
    each hook on every callback, in order, with itself as the first argument; the
    built-in display, metrics.csv, checkpoints and loggers are callbacks too and run
    before the user's. These names and arguments are stable:

    - `on_fit_start(trainer)`: before the first epoch (of a resumed run too, with
      `trainer.history` holding the finished epochs).
    - `on_epoch_start(trainer, epoch, steps)`: before an epoch's first training step.
    - `on_train_step(trainer, step, steps)`: after every training step (1-based), with
      no device sync: cheap enough for a step counter.
    - `on_train_progress(trainer, progress)`: every `trainer.log_every` steps, at an
      epoch's last step and at its steps 1, 2, 4, 8, ... below `log_every` (so the first
      figures come at once), with a `StepProgress` (running loss, accuracy, examples/s).
    - `on_epoch_end(trainer, metrics)`: after the epoch's validation, with its
      `EpochMetrics` (also the last item of `trainer.history`).
    - `after_train_step(trainer, step, steps)` / `after_epoch_end(trainer, metrics)`: after every
      callback's hooks of that step (on_train_step, and on_train_progress when it came) / epoch end
      ran: where the run's checkpoints are written, so they hold every callback's state of that
      moment (what a callback changes here is kept by the next checkpoint only).
    - `on_fit_end(trainer)`: after the last epoch.
    - `on_test_end(trainer, metrics)`: after best.pt was tested, with the test's figures
      ({"test_loss", "test_acc", "test_balanced_acc", "test_macro_f1"} and "test_top5" for more than 5
      classes), before summary.json.
    - `on_run_end(trainer, summary)`: after summary.json of a completed run was written, with its
      contents (where a tracker uploads the run's files and marks it finished). An error raised here
      is reported as a notice: the run has completed.
    - `on_exception(trainer, exception)`: when fit or the test raises, before the run ends as
      failed; a stop by Ctrl-C, SIGTERM or SIGHUP arrives as `cnntrain.errors.RunInterrupted` (a
      KeyboardInterrupt). Not called for errors before the trainer exists (config, data). An error
      raised here is reported as a notice; the run still ends with the first exception.

    State: `state_dict()` returns what the callback wants kept in training checkpoints (any value
    `torch.load(weights_only=True)` reads: numbers, text, lists, dicts, tensors; None, the default:
    nothing), stored under `state_key` (the class's name; a second instance of a class gets "#2",
    and so on, in the callbacks' order). On resume, `load_state_dict(state)` gets it back before
    `on_fit_start`; a callback the checkpoint has no state for starts fresh.

    The trainer shows the run: `trainer.run_folder` (a Path; None outside a run) and
    `trainer.config` (the run's resolved config, read-only; None outside a run).

    To end training after the current epoch (early stopping, a pruned trial), set
    `trainer.stop_reason` to a sentence saying why; it is printed and saved in the
    summary. An exception raised in a hook ends the run as failed. `trainer.request_stop()`
    interrupts the run after the current step instead (what Ctrl-C and SIGTERM do).
    """

    def on_fit_start(self, trainer: _Trainer) -> None: ...
    def on_epoch_start(self, trainer: _Trainer, epoch: int, steps: int) -> None: ...
    def on_train_step(self, trainer: _Trainer, step: int, steps: int) -> None: ...
    def on_train_progress(self, trainer: _Trainer, progress: StepProgress) -> None: ...
    def on_epoch_end(self, trainer: _Trainer, metrics: EpochMetrics) -> None: ...
    def after_train_step(self, trainer: _Trainer, step: int, steps: int) -> None: ...
    def after_epoch_end(self, trainer: _Trainer, metrics: EpochMetrics) -> None: ...
    def on_fit_end(self, trainer: _Trainer) -> None: ...
    def on_test_end(self, trainer: _Trainer, metrics: dict[str, float]) -> None: ...
    def on_run_end(self, trainer: _Trainer, summary: dict[str, Any]) -> None: ...
    def on_exception(self, trainer: _Trainer, exception: BaseException) -> None: ...

    @property
    def state_key(self) -> str:
        """The name its state is saved under in checkpoints (numbered when several callbacks share it)."""
        return type(self).__name__

    def state_dict(self) -> Any:
        """What to keep in training checkpoints; None: nothing (the built-in callbacks rebuild theirs from
        `trainer.history`)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Take back what `state_dict` returned, from the checkpoint a resume continues."""


def keyed_callbacks(callbacks: Sequence[Callback]) -> dict[str, Callback]:
    """The callbacks by the key their state is saved under: `state_key`, and `state_key#2`, ... for
    a second, third ... callback with the same key, so two instances of one class never collide."""
    keyed: dict[str, Callback] = {}
    for callback in callbacks:
        key, number = callback.state_key, 1
        while key in keyed:
            number += 1
            key = f"{callback.state_key}#{number}"
        keyed[key] = callback
    return keyed


def callback_states(callbacks: Sequence[Callback]) -> dict[str, Any]:
    """{key: state} of the callbacks that have state to keep."""
    states = {key: callback.state_dict() for key, callback in keyed_callbacks(callbacks).items()}
    return {key: state for key, state in states.items() if state is not None}


def load_callback_states(callbacks: Sequence[Callback], states: dict[str, Any] | None) -> None:
    """Give each callback its saved state; a key without a callback now (not passed again) is left unused."""
    for key, callback in keyed_callbacks(callbacks).items():
        if states and key in states:
            callback.load_state_dict(states[key])


def read_only_config(config: Any) -> DictConfig | None:
    """What `trainer.config` shows callbacks: a resolved, read-only copy of the run's config (None stays None)."""
    if config is None:
        return None
    values = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    copy = OmegaConf.create(values)
    OmegaConf.set_readonly(copy, True)
    return copy


@contextlib.contextmanager
def exceptions_told(trainer: _Trainer, say: Callable[[str], None]) -> Iterator[None]:
    """Every callback's on_exception for an exception raised inside (fit and the test, in run.py), before it
    goes on; a hook that fails itself is said (`say`) and does not hide the run's own exception."""
    try:
        yield
    except BaseException as err:
        for problem in trainer.failed(err):
            say(problem)
        raise
