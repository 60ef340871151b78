"""What a checkpoint keeps of a `Trainer` and how it is put back: `TrainerState`, the trainer's base.

The key names are those of the checkpoint format (checkpoint.py's docstring): the weights
("state_dict", and with EMA "raw_state_dict" / "ema_updates"), optimizer, schedule, loss
scaler, history, stop reason, stage, the unfinished epoch ("in_epoch": step, running sums,
the loader's generator state at the epoch's start, so a mid-epoch checkpoint continues
exactly) and the callbacks' own state ("callbacks", `hooks.callback_states`).
"""

from __future__ import annotations

import time

from cnntrain.hooks import callback_states, load_callback_states
from cnntrain.metrics import EpochMetrics


class TrainerState:
    """The checkpoint side of `trainer.Trainer` (which sets every attribute these methods read)."""

    def state_dict(self) -> dict:
        """Everything of the training that a checkpoint keeps to resume it exactly (see checkpoint.py).

        The key names are those of the checkpoint format (`state_dict` is the model's weights: with
        EMA the averaged ones, the trained ones then under `raw_state_dict`).
        """
        weights = (
            {"state_dict": self.model.state_dict()}
            if self.ema is None
            else {
                "state_dict": self.ema.state_dict(),
                "raw_state_dict": self.model.state_dict(),
                "ema_updates": self.ema.updates,
            }
        )
        return {
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict() if self.schedule is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler else None,
            "history": [m.as_dict() for m in self.history],
            "stop_reason": self.stop_reason,
            "stage": self.stage,
            "in_epoch": self._position(),
            # The callbacks' own state (Callback.state_dict), only when one has some: older readers see no change.
            **({"callbacks": states} if (states := callback_states(self.callbacks)) else {}),
        }

    def _position(self) -> dict | None:
        """Where in an epoch training is, when asked between two of its steps; None at an epoch's end."""
        current = self._epoch
        if current is None or current.step == current.steps:
            return None
        generator = self.train_loader.generator
        return {
            "epoch": current.epoch,
            "step": current.step,
            "lr": current.lr,
            "stats": current.stats.state_dict(),
            "train_seconds": time.perf_counter() - current.started,
            "augment_rng": generator.get_state() if generator is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Put back what `state_dict` gave: weights, optimizer, schedule, loss scaler, history, stop reason,
        the callbacks' state."""
        self.load_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None and state.get("scheduler") is not None:
            self.schedule.load_state_dict(state["scheduler"])
        if self.scaler and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.history = [EpochMetrics(**row) for row in state["history"]]
        self.stop_reason = state.get("stop_reason")
        self.stage = state.get("stage")
        self._resume_position = state.get("in_epoch")
        load_callback_states(self.callbacks, state.get("callbacks"))

    def load_weights(self, state: dict) -> None:
        """A checkpoint's weights: the trained ones into the model ("raw_state_dict" in a checkpoint of a
        run with EMA, else "state_dict") and, with EMA, the average into it ("state_dict" and its
        "ema_updates"; a checkpoint without an average starts it again from the model's weights)."""
        raw = state.get("raw_state_dict")
        self.model.load_state_dict(state["state_dict"] if raw is None else raw)
        if self.ema is not None:
            if raw is None:
                self.ema.restart(self.model)
            else:
                self.ema.load_state_dict(state["state_dict"], state.get("ema_updates", 0))

    def use_weights(self, state_dict: dict) -> None:
        """Training over: the model takes `state_dict` (a checkpoint's "state_dict", the average with EMA)
        and `evaluate` measures the model itself from now on, through `forward`, as cnntrain-eval does."""
        self.model.load_state_dict(state_dict)
        self.ema = None
