"""The Checkpointer: checkpoints/last.pt, best.pt and the other epochs trainer.checkpoint keeps.

best.pt holds the epoch best by trainer.checkpoint.monitor (checkpoint_policy.py decides what is better);
save_top_k other than 1 also keeps the k best epochs as checkpoints/epoch=007-val_acc=0.9123.pt (-1: every
epoch), every_n_epochs every N-th epoch as checkpoints/epoch=010.pt. Every file is written atomically, and
in an order that a Ctrl-C or a kill at any moment leaves consistent: the epoch's new files, best.pt, last.pt
(whose Checkpointer state lists the files kept), and only then the deletion of a file that fell out of the
top k. A resume takes that state back and deletes what a killed run wrote or left behind after its last.pt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cnntrain.checkpoint import save_checkpoint
from cnntrain.checkpoint_policy import (
    EVERY_N_FILE,
    TOP_K_FILE,
    every_n_file_name,
    is_better,
    keeps_top_k_files,
    monitored,
    top_k,
    top_k_file_name,
)
from cnntrain.process import interrupts_held
from cnntrain.run_folder import RunFolder
from cnntrain.settings import CheckpointSettings
from cnntrain.trainer import Callback, EpochMetrics, Trainer


class Checkpointer(Callback):
    """Saves checkpoints/last.pt every epoch, best.pt when the monitored metric improves, and the top-k and
    every-N-epochs files trainer.checkpoint asks for.

    Inside an epoch, last.pt is also saved every `every_minutes` (None: never) and when
    the trainer is asked to stop (Ctrl-C, SIGTERM), between two optimizer steps, so a
    long epoch interrupted loses at most those minutes. Whether a step is saved is decided
    in `on_train_step` (every rank of a distributed run at the same point); the checkpoints
    are written in `after_train_step` / `after_epoch_end`, once every callback's hooks of that
    step or epoch end ran: their state (`state_dict()`) and a stop reason set then (early
    stopping) are in it.
    """

    def __init__(
        self,
        folder: RunFolder,
        make_state: Callable[[Trainer], dict],
        every_minutes: float | None = None,
        policy: CheckpointSettings | None = None,
    ):
        self.folder = folder
        self.make_state = make_state
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.policy = policy or CheckpointSettings()
        self.best: EpochMetrics | None = None
        self.kept: list[tuple[int, float]] = []  # the top-k files on disk: (epoch, monitored value), best first
        self._restored: dict | None = None  # the state a resume's checkpoint held, used at on_fit_start
        self.saved = (0, 0)  # what last.pt holds: (finished epochs, steps done of the next epoch)
        self._last_save = time.monotonic()
        self._save_step: int | None = None  # the step on_train_step decided to save, written in after_train_step

    def state_dict(self) -> dict:
        policy = self.policy
        return {
            "monitor": policy.monitor,
            "mode": policy.mode,
            "best_epoch": self.best.epoch if self.best else None,
            "kept": [[epoch, value] for epoch, value in self.kept],
        }

    def load_state_dict(self, state: dict) -> None:
        self._restored = state

    def on_fit_start(self, trainer: Trainer) -> None:
        self.best, self.kept = self._best_and_kept(trainer.history)
        self.saved = (trainer.history[-1].epoch if trainer.history else 0, 0)
        if trainer.history and trainer.group.writes:
            self._delete_strays(self.saved[0])
        self._last_save = time.monotonic()

    def _best_and_kept(self, history: list[EpochMetrics]) -> tuple[EpochMetrics | None, list[tuple[int, float]]]:
        """best.pt's epoch and the top-k files, from the resumed checkpoint's state; rebuilt from the history
        for a checkpoint without it (an older cnntrain's: best.pt followed val_acc, no other files were kept)."""
        state, policy = self._restored, self.policy
        by_epoch = {m.epoch: m for m in history}
        if state and (state.get("monitor"), state.get("mode")) == (policy.monitor, policy.mode):
            kept = [(int(epoch), float(value)) for epoch, value in state.get("kept", [])]
            return by_epoch.get(state.get("best_epoch")), kept
        best = None
        for metrics in history:
            if best is None or is_better(
                monitored(metrics, policy.monitor), monitored(best, policy.monitor), policy.mode
            ):
                best = metrics
        return best, []

    def _delete_strays(self, resumed_epoch: int) -> None:
        """Files the state does not list: a top-k file written (or not yet deleted) after the last.pt a resume
        continues, an every-N-epochs file of an epoch that will be trained again."""
        kept = {self._top_k_path(epoch, value).name for epoch, value in self.kept}
        for path in self.folder.checkpoints.glob("epoch=*.pt"):
            every_n = EVERY_N_FILE.fullmatch(path.name)
            stray_top_k = TOP_K_FILE.fullmatch(path.name) and path.name not in kept
            if stray_top_k or (every_n and int(every_n.group(1)) > resumed_epoch):
                path.unlink(missing_ok=True)

    def on_train_step(self, trainer: Trainer, step: int, steps: int) -> None:
        self._save_step = None
        if step == steps or not trainer.between_optimizer_steps:
            return  # the epoch's end is saved with its metrics; mid-group gradients cannot be saved
        # Every rank of a distributed run decides together (and takes the state together: it sums their counters).
        due = self.every_seconds is not None and trainer.group.any(
            time.monotonic() - self._last_save >= self.every_seconds, trainer.device
        )
        if due or trainer.stop_requested:
            self._save_step = step

    def after_train_step(self, trainer: Trainer, step: int, steps: int) -> None:
        if self._save_step != step:
            return
        self._save_step = None
        state = self.make_state(trainer)  # rank 0 saves it
        with interrupts_held():  # a second Ctrl-C now waits for last.pt and `saved` to agree
            if trainer.group.writes:
                save_checkpoint(state, self.folder.last_checkpoint)
            self.saved = (self.saved[0], step)
        self._last_save = time.monotonic()

    def save_last(self, trainer: Trainer) -> None:
        """Rewrite last.pt with the trainer as it is now (e.g. after fine-tuning's switch to stage two)."""
        if trainer.group.writes:
            save_checkpoint(self.make_state(trainer), self.folder.last_checkpoint)

    def after_epoch_end(self, trainer: Trainer, metrics: EpochMetrics) -> None:
        policy = self.policy
        value = monitored(metrics, policy.monitor)
        improved = self.best is None or is_better(value, monitored(self.best, policy.monitor), policy.mode)
        if improved:
            self.best = metrics
        before = self.kept
        if keeps_top_k_files(policy):  # the state saved below lists the files as they will be
            self.kept = top_k([*before, (metrics.epoch, value)], policy)
        with interrupts_held():  # a second Ctrl-C now waits for the files, last.pt and `saved` to agree
            if trainer.group.writes:
                self._write_epoch(trainer, metrics, value, improved, dropped=set(before) - set(self.kept))
            self.saved = (metrics.epoch, 0)
        self._last_save = time.monotonic()

    def _write_epoch(
        self, trainer: Trainer, metrics: EpochMetrics, value: float, improved: bool, dropped: set[tuple[int, float]]
    ) -> None:
        """The epoch's files, in the order that leaves them consistent wherever a kill falls (module docstring)."""
        state = self.make_state(trainer)
        if (metrics.epoch, value) in self.kept:
            save_checkpoint(state, self._top_k_path(metrics.epoch, value))
        every = self.policy.every_n_epochs
        if every and metrics.epoch % every == 0:
            save_checkpoint(state, self.folder.checkpoints / every_n_file_name(metrics.epoch))
        if improved:
            save_checkpoint(state, self.folder.best_checkpoint)
        # last.pt after best.pt: a run killed in between resumes from the epoch before and redoes this one.
        save_checkpoint(state, self.folder.last_checkpoint)
        for epoch, old_value in dropped:  # after last.pt, whose state no longer lists them
            self._top_k_path(epoch, old_value).unlink(missing_ok=True)

    def _top_k_path(self, epoch: int, value: float) -> Path:
        return self.folder.checkpoints / top_k_file_name(epoch, self.policy.monitor, value)

    def chosen_on_validation(self, last: EpochMetrics) -> bool:
        """Whether best.pt was chosen over the last epoch by a validation figure (not, e.g., by train_loss)."""
        policy = self.policy
        return policy.monitor.startswith("val_") and is_better(
            monitored(self.best, policy.monitor), monitored(last, policy.monitor), policy.mode
        )

    def summary(self) -> dict:
        """summary.json's "best" (the metric, mode and value that chose best.pt, and its epoch) and, when files
        besides best.pt are kept, "top_k" (their names, best first)."""
        policy, best = self.policy, self.best
        chosen = {
            "monitor": policy.monitor,
            "mode": policy.mode,
            "value": monitored(best, policy.monitor),
            "epoch": best.epoch,
        }
        top = [self._top_k_path(epoch, value).name for epoch, value in self.kept]
        return {"best": chosen, **({"top_k": top} if keeps_top_k_files(policy) else {})}
